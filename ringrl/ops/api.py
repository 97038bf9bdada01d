"""``attention``: one entry point over global arrays, whatever the implementation."""

from __future__ import annotations

import jax
from jax import Array
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ringrl.ops.blockwise import blockwise_attention
from ringrl.ops.kernels import KERNELS, Kernel, get_kernel
from ringrl.ops.layouts import check_ring_length, from_zigzag, ring_layout, to_zigzag
from ringrl.ops.reference import check_shapes, reference_attention, segments_or_zeros
from ringrl.ops.ring import ring_attention, ring_block_counts

IMPLS = ("vanilla", "blockwise", "ring")


def _default_mesh() -> Mesh:
    from ringrl.parallel import make_mesh

    return make_mesh(data=1, seq=-1)


def _specs(mesh: Mesh, batch: int) -> tuple[P, P]:
    data = "data" if "data" in mesh.axis_names and batch % mesh.shape["data"] == 0 else None
    return P(data, "seq", None, None), P(data, "seq")


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
    check_ring_length(q.shape[1], mesh.shape["seq"], layout)
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
    check_ring_length(x.shape[1], mesh.shape["seq"], layout)
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
