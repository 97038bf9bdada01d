"""``attention``: one entry point over global arrays, whatever the implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ringrl.ops.blockwise import blockwise_attention
from ringrl.ops.kernels import KERNELS, Kernel, get_kernel
from ringrl.ops.reference import check_shapes, reference_attention, segments_or_zeros
from ringrl.ops.ring import ring_attention, ring_block_counts

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


def _zigzag_moves(R: int, parity: int) -> list[tuple[int, int]]:
    """Where each device's natural chunk ``2r + parity`` goes under the zigzag layout."""
    dest = lambda j: j if j < R else 2 * R - 1 - j  # noqa: E731
    return [(r, dest(2 * r + parity)) for r in range(R)]


def to_zigzag(x: Array, axis_name: str) -> Array:
    """Inside ``shard_map``: natural contiguous shards -> zigzag shards (two ``ppermute``s).

    Device r holds natural chunks ``2r, 2r+1`` (of ``2R``) and must end with chunks ``r`` and
    ``2R-1-r``. Exactly one of those is even, so every device receives one even and one odd
    chunk: no gather of the whole sequence ever happens.
    """
    R = jax.lax.axis_size(axis_name)
    if R == 1:
        return x
    even, odd = jnp.split(x, 2, axis=1)
    even = jax.lax.ppermute(even, axis_name, _zigzag_moves(R, 0))
    odd = jax.lax.ppermute(odd, axis_name, _zigzag_moves(R, 1))
    d_is_even = jax.lax.axis_index(axis_name) % 2 == 0
    first = jnp.where(d_is_even, even, odd)
    second = jnp.where(d_is_even, odd, even)
    return jnp.concatenate([first, second], axis=1)


def from_zigzag(x: Array, axis_name: str) -> Array:
    """Inverse of :func:`to_zigzag`."""
    R = jax.lax.axis_size(axis_name)
    if R == 1:
        return x
    first, second = jnp.split(x, 2, axis=1)
    d_is_even = jax.lax.axis_index(axis_name) % 2 == 0
    even = jnp.where(d_is_even, first, second)
    odd = jnp.where(d_is_even, second, first)
    back = lambda moves: [(dst, src) for src, dst in moves]  # noqa: E731
    even = jax.lax.ppermute(even, axis_name, back(_zigzag_moves(R, 0)))
    odd = jax.lax.ppermute(odd, axis_name, back(_zigzag_moves(R, 1)))
    return jnp.concatenate([even, odd], axis=1)


def _check_ring_length(L: int, R: int, layout: str) -> None:
    if layout not in ("contiguous", "zigzag"):
        raise ValueError(f"attention() lays sequences out contiguous or zigzag, not {layout!r}")
    chunks = 2 * R if layout == "zigzag" else R
    if L % chunks:
        raise ValueError(
            f"ring attention over {R} devices with the {layout} layout needs seq ({L}) to be a "
            f"multiple of {chunks}; pad with negative segment ids"
        )


def _sharded_ring(
    fn,
    q,
    k,
    v,
    segment_ids,
    mesh,
    causal,
    block_size,
    kernel,
    out_specs=None,
    layout=None,
    relayout=True,
):
    """Run ``fn`` (ring attention or its counters) in ``shard_map``.

    ``relayout``: the inputs are in natural order and are laid out (and the output put back)
    here; otherwise they are already in ``layout`` order (:func:`to_ring_layout`).
    """
    layout = layout or ring_layout(causal)
    kernel = get_kernel(kernel)  # resolved once, outside shard_map
    _check_ring_length(q.shape[1], mesh.shape["seq"], layout)
    segment_ids = segments_or_zeros(q, segment_ids)
    spec4, spec2 = _specs(mesh, q.shape[0])
    zig = relayout and layout == "zigzag"

    def body(q, k, v, seg):
        if zig:
            q, k, v, seg = (to_zigzag(x, "seq") for x in (q, k, v, seg))
        out = fn(
            q,
            k,
            v,
            axis_name="seq",
            causal=causal,
            segment_ids=seg,
            block_size=block_size,
            layout=layout,
            kernel=kernel,
        )
        return from_zigzag(out, "seq") if zig and out_specs is None else out

    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(spec4, spec4, spec4, spec2),
        out_specs=out_specs or spec4,
        check_vma=False,
    )(q, k, v, segment_ids)


def _relayout(x: Array, mesh: Mesh, layout: str, fn) -> Array:
    if layout == "contiguous" or mesh.shape["seq"] == 1:
        return x
    _check_ring_length(x.shape[1], mesh.shape["seq"], layout)
    spec = P(*_specs(mesh, x.shape[0])[0][:2], *([None] * (x.ndim - 2)))
    return jax.shard_map(
        lambda x: fn(x, "seq"), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
    )(x)


def to_ring_layout(x: Array, mesh: Mesh, layout: str) -> Array:
    """Global ``[batch, seq, ...]`` in natural order -> the same array with ``seq`` reordered so
    that device r's shard holds the positions ``layout`` gives it (see :mod:`ringrl.ops.ring`).

    A model whose layers are all position-wise except attention lays its sequence out once,
    runs every layer's :func:`ring_attention_laid_out` without relayout, and puts the result
    back with :func:`from_ring_layout`.
    """
    return _relayout(x, mesh, layout, to_zigzag)


def from_ring_layout(x: Array, mesh: Mesh, layout: str) -> Array:
    """Inverse of :func:`to_ring_layout`."""
    return _relayout(x, mesh, layout, from_zigzag)


def ring_attention_laid_out(
    q: Array,
    k: Array,
    v: Array,
    *,
    mesh: Mesh,
    layout: str,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
    kernel: str | Kernel = "auto",
) -> Array:
    """Ring attention over global arrays already in ``layout`` order (:func:`to_ring_layout`,
    applied to q, k, v and segment ids alike); the output is in the same order: it equals
    ``to_ring_layout(attention(q, k, v, impl="ring", ...), mesh, layout)`` of the natural-order
    inputs, without reordering the sequence at every call."""
    check_shapes(q, k, v, segment_ids)
    return _sharded_ring(
        ring_attention,
        q,
        k,
        v,
        segment_ids,
        mesh,
        causal,
        block_size,
        kernel,
        layout=layout,
        relayout=False,
    )


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
    kernel: str | Kernel = "auto",
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
      kernel: the per-chunk kernel of ``"blockwise"`` and ``"ring"``: ``"auto"`` (``"pallas"``
        on GPU, ``"xla"`` elsewhere), ``"xla"``, ``"pallas"`` or a kernel object
        (:mod:`ringrl.ops.kernels`); ``"vanilla"`` ignores it.

    Returns:
      ``[batch, seq, heads, head_dim]`` in q's dtype, natural order.
    """
    check_shapes(q, k, v, segment_ids)
    if isinstance(kernel, str) and kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {KERNELS}")
    if impl == "vanilla":
        return reference_attention(q, k, v, causal=causal, segment_ids=segment_ids)
    if impl == "blockwise":
        return blockwise_attention(
            q, k, v, causal=causal, segment_ids=segment_ids, block_size=block_size, kernel=kernel
        )
    if impl != "ring":
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
    mesh = mesh or _default_mesh()
    return _sharded_ring(ring_attention, q, k, v, segment_ids, mesh, causal, block_size, kernel)


def ring_step_counts(
    q: Array,
    k: Array,
    v: Array,
    *,
    mesh: Mesh | None = None,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
    layout: str | None = None,
    kernel: str | Kernel = "auto",
) -> Array:
    """Tile pairs computed by each device at each ring step, ``[devices, steps]``.

    With the xla kernel a tile pair is (query tile, key tile): see
    :func:`ringrl.ops.kernels.xla.query_tile` and :func:`~ringrl.ops.kernels.xla.key_tile`
    (with ``block_size`` no larger than those tiles, a tile pair is a block pair); the pallas
    kernel counts its (query block, key block) pairs per batch row.

    Runs the forward kernel of ``attention(impl="ring")`` with the same layout choice (or
    ``layout``) and returns its counters: a balanced layout shows equal numbers down every
    column.
    """
    mesh = mesh or _default_mesh()
    return _sharded_ring(
        lambda *a, **kw: ring_block_counts(*a, **kw)[None],
        q,
        k,
        v,
        segment_ids,
        mesh,
        causal,
        block_size,
        kernel,
        out_specs=P("seq"),
        layout=layout,
    )
