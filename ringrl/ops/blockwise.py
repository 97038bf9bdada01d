"""Blockwise (memory-efficient) attention on one device: one kernel call, custom VJP.

The whole sequence is one chunk pair for the kernel (:mod:`ringrl.ops.kernels`), which walks
it in tiles with an online softmax and skips the tile pairs the mask hides. The backward pass
recomputes the probabilities tile by tile from the saved log-sum-exp, so memory grows with the
tile, never with ``seq**2``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from ringrl.ops.kernels import Kernel, Side, get_kernel
from ringrl.ops.kernels.xla import _get, _put  # noqa: F401  (blocks in place: ring, feedforward)
from ringrl.ops.reference import check_shapes, segments_or_zeros


def effective_block(seq: int, block_size: int) -> int:
    """The block actually used: ``block_size`` capped at ``seq``; it must divide ``seq``."""
    b = min(block_size, seq)
    if seq % b:
        raise ValueError(
            f"sequence length {seq} must be a multiple of block_size {b} "
            "(pad the sequence with negative segment ids)"
        )
    return b


def _side(segment_ids: Array) -> Side:
    return Side(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _blockwise(q, k, v, segment_ids, causal, block_size, kernel):
    return _blockwise_fwd(q, k, v, segment_ids, causal, block_size, kernel)[0]


def _blockwise_fwd(q, k, v, segment_ids, causal, block_size, kernel: Kernel):
    b = effective_block(q.shape[1], block_size)
    side = _side(segment_ids)
    q_k = kernel.prepare(q, k.shape[2])
    chunk = kernel.forward(q_k, k, v, side, side, causal=causal, block=b)
    out = kernel.finish(chunk)[0].astype(q.dtype)
    return out, (q_k, k, v, segment_ids, out, chunk.lse)


def _blockwise_bwd(causal, block_size, kernel: Kernel, res, do):
    q_k, k, v, segment_ids, out, lse = res  # q_k: the kernel's prepared queries
    b = effective_block(do.shape[1], block_size)
    side = _side(segment_ids)
    dq, dk, dv = kernel.backward(q_k, k, v, out, lse, do, side, side, causal=causal, block=b)
    return dq.astype(do.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
    kernel: str | Kernel = "auto",
) -> Array:
    """Exact attention computed one (query tile, key tile) pair at a time.

    Args and result as :func:`ringrl.ops.reference_attention`; ``seq`` must be a multiple of
    ``min(block_size, seq)``. Memory grows with ``block_size``, not with ``seq**2``: the backward
    pass recomputes each block's probabilities from the saved log-sum-exp. ``kernel``:
    ``"auto"`` (``"pallas"`` on GPU, ``"xla"`` elsewhere), ``"xla"``, ``"pallas"`` or a kernel
    object (:mod:`ringrl.ops.kernels`).
    """
    check_shapes(q, k, v, segment_ids)
    seg = segments_or_zeros(q, segment_ids)
    return _blockwise(q, k, v, seg, causal, block_size, get_kernel(kernel))
