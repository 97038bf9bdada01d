"""``attention``: one entry point over global arrays, whatever the implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ringrl.ops.blockwise import blockwise_attention
from ringrl.ops.reference import check_shapes, reference_attention
from ringrl.ops.ring import layout_permutation, ring_attention, ring_block_counts

IMPLS = ("vanilla", "blockwise", "ring")


def _default_mesh() -> Mesh:
    from ringrl.parallel import make_mesh

    return make_mesh(data=1, seq=-1)


def ring_layout(causal: bool) -> str:
    """Causal attention is load-balanced with the zigzag layout; otherwise order is irrelevant."""
    return "zigzag" if causal else "contiguous"


def _specs(mesh: Mesh, batch: int) -> tuple[P, P]:
    data = "data" if "data" in mesh.axis_names and batch % mesh.shape["data"] == 0 else None
    return P(data, "seq", None, None), P(data, "seq")


def _sharded_ring(fn, q, k, v, segment_ids, mesh, causal, block_size, out_specs=None):
    R = mesh.shape["seq"]
    L = q.shape[1]
    layout = ring_layout(causal)
    chunks = 2 * R if layout == "zigzag" else R
    if L % chunks:
        raise ValueError(
            f"ring attention over {R} devices with the {layout} layout needs seq ({L}) to be a "
            f"multiple of {chunks}; pad with negative segment ids"
        )
    if segment_ids is None:
        segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
    perm = layout_permutation(layout, R, L)
    q, k, v, seg = (x[:, perm] for x in (q, k, v, segment_ids.astype(jnp.int32)))
    spec4, spec2 = _specs(mesh, q.shape[0])

    def body(q, k, v, seg):
        return fn(
            q,
            k,
            v,
            axis_name="seq",
            causal=causal,
            segment_ids=seg,
            block_size=block_size,
            layout=layout,
        )

    out = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(spec4, spec4, spec4, spec2),
        out_specs=out_specs or spec4,
        check_vma=False,
    )(q, k, v, seg)
    return out, perm


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    impl: str = "ring",
    mesh: Mesh | None = None,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
) -> Array:
    """Exact attention over global arrays in natural order.

    Args:
      q: ``[batch, seq, heads, head_dim]``; k, v: ``[batch, seq, kv_heads, head_dim]``.
      impl: ``"vanilla"`` (materialises all scores), ``"blockwise"`` (one device, memory grows
        with the block) or ``"ring"`` (``seq`` sharded over the mesh axis ``"seq"``, ``batch``
        over ``"data"`` when present; causal attention uses the load-balanced zigzag layout).
      mesh: the device mesh for ``"ring"``; None means all local devices on ``"seq"``.
      causal, segment_ids: see :func:`ringrl.ops.reference_attention`.
      block_size: the attention block (``"blockwise"`` and ``"ring"``).

    Returns:
      ``[batch, seq, heads, head_dim]`` in q's dtype, natural order.
    """
    check_shapes(q, k, v, segment_ids)
    if impl == "vanilla":
        return reference_attention(q, k, v, causal=causal, segment_ids=segment_ids)
    if impl == "blockwise":
        return blockwise_attention(
            q, k, v, causal=causal, segment_ids=segment_ids, block_size=block_size
        )
    if impl != "ring":
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
    mesh = mesh or _default_mesh()
    out, perm = _sharded_ring(ring_attention, q, k, v, segment_ids, mesh, causal, block_size)
    return out[:, jnp.argsort(perm)]


def ring_step_counts(
    q: Array,
    k: Array,
    v: Array,
    *,
    mesh: Mesh | None = None,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
) -> Array:
    """Block pairs computed by each device at each ring step, ``[devices, steps]``.

    Runs the forward kernel of ``attention(impl="ring")`` with the same layout choice and
    returns its counters: a balanced layout shows equal numbers down every column.
    """
    mesh = mesh or _default_mesh()
    counts, _ = _sharded_ring(
        lambda *a, **kw: ring_block_counts(*a, **kw)[None],
        q,
        k,
        v,
        segment_ids,
        mesh,
        causal,
        block_size,
        out_specs=P("seq"),
    )
    return counts
