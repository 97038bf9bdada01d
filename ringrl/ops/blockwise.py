"""Blockwise (memory-efficient) attention: online softmax over key blocks, custom VJP.

The forward pass visits query blocks one at a time and, for each, folds in key/value blocks with
the online-softmax update (running max ``m``, denominator ``l``, unnormalised output ``o``, all
float32). Block pairs that the causal mask or the positions hide entirely are skipped with
``lax.cond``, not computed and masked. The backward pass recomputes the probabilities block by
block from the saved log-sum-exp, so memory grows with the block size, never with ``seq**2``.

The shard-level functions here (:func:`attend_shard`, :func:`attend_shard_bwd`) also power ring
attention: a ring step is one call with the key/value shard currently held.

Shape suffixes: B batch, Q/S query/key positions, q/s positions within a block, K kv heads,
G query heads per kv head, D head dim, N number of blocks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ringrl.ops.reference import (
    attention_mask,
    check_shapes,
    segments_or_zeros,
    split_heads,
    stats_dtype,
)


class Shard(NamedTuple):
    """One device's (or the whole) query or key side: positions and segment ids."""

    pos_L: Array  # int32 [L] absolute positions (for the causal mask and block skipping)
    seg_BL: Array  # int32 [B, L] segment ids, negative = padding


class Carry(NamedTuple):
    """Online-softmax state for all queries of a shard."""

    o_BQKGD: Array  # unnormalised output, float32
    m_BKGQ: Array  # running max of the scores
    l_BKGQ: Array  # running softmax denominator


def init_carry(q_BQKGD: Array) -> Carry:
    B, Q, K, G, D = q_BQKGD.shape
    f = stats_dtype(q_BQKGD.dtype)
    return Carry(
        jnp.zeros((B, Q, K, G, D), f),
        jnp.full((B, K, G, Q), -jnp.inf, f),
        jnp.zeros((B, K, G, Q), f),
    )


def finalize(carry: Carry, dtype: jnp.dtype) -> tuple[Array, Array]:
    """Normalise: returns (out ``[B, Q, K, G, D]`` in ``dtype``, lse ``[B, K, G, Q]``).

    Rows that attended nothing get output 0 and lse = +inf (so that ``exp(s - lse) == 0`` in the
    backward pass, never NaN).
    """
    o, m, denom = carry
    nonempty = denom > 0
    lse_BKGQ = jnp.where(nonempty, m + jnp.log(jnp.where(nonempty, denom, 1.0)), jnp.inf)
    denom_BQKG = jnp.moveaxis(jnp.where(nonempty, denom, 1.0), -1, 1)
    return (o / denom_BQKG[..., None]).astype(dtype), lse_BKGQ


def _get(x: Array, i: Array, size: int, axis: int = 1) -> Array:
    """Block ``i`` (of ``size`` positions) along ``axis``, without copying the rest."""
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis)


def _put(x: Array, block: Array, i: Array, size: int, axis: int = 1) -> Array:
    """Write block ``i`` along ``axis`` in place."""
    return jax.lax.dynamic_update_slice_in_dim(x, block, i * size, axis)


def _visible(q_pos_q: Array, k_pos_s: Array, causal: bool) -> Array:
    """Whether any query of the block may see any key of the block under the causal mask."""
    if not causal:
        return jnp.bool_(True)
    return q_pos_q.max() >= k_pos_s.min()


def _scores(q_BqKGD: Array, k_BsKD: Array, mask_Bqs: Array) -> Array:
    f = stats_dtype(q_BqKGD.dtype)
    scale = jnp.asarray(q_BqKGD.shape[-1] ** -0.5, f)
    s_BKGqs = jnp.einsum("bqkgd,bskd->bkgqs", q_BqKGD, k_BsKD, preferred_element_type=f) * scale
    return jnp.where(mask_Bqs[:, None, None], s_BKGqs, -jnp.inf)


def _online_update(carry: Carry, q_BqKGD, k_BsKD, v_BsKD, mask_Bqs) -> Carry:
    o, m, denom = carry
    s_BKGqs = _scores(q_BqKGD, k_BsKD, mask_Bqs)
    m_new = jnp.maximum(m, s_BKGqs.max(-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p_BKGqs = jnp.exp(s_BKGqs - m_safe[..., None])
    correction = jnp.exp(m - m_safe)  # 0 while the row has seen nothing (m = -inf)
    denom = denom * correction + p_BKGqs.sum(-1)
    pv_BqKGD = jnp.einsum(
        "bkgqs,bskd->bqkgd", p_BKGqs.astype(v_BsKD.dtype), v_BsKD, preferred_element_type=o.dtype
    )
    o = o * jnp.moveaxis(correction, -1, 1)[..., None] + pv_BqKGD
    return Carry(o, m_new, denom)


def attend_shard(
    carry: Carry,
    q_BQKGD: Array,
    k_BSKD: Array,
    v_BSKD: Array,
    q_side: Shard,
    k_side: Shard,
    *,
    causal: bool,
    block_q: int,
    block_k: int,
) -> tuple[Carry, Array]:
    """Fold the key/value shard into every query's online-softmax state.

    Blocks are read and written in place with dynamic slices (no blocked copies of the
    shards). Returns the new carry and the number of block pairs actually computed (int32).
    """
    num_q, num_k = q_BQKGD.shape[1] // block_q, k_BSKD.shape[1] // block_k

    def per_q_block(i, state):
        carry, count = state
        q_blk, qp = _get(q_BQKGD, i, block_q), _get(q_side.pos_L, i, block_q, 0)
        qs = _get(q_side.seg_BL, i, block_q)
        c = Carry(_get(carry.o_BQKGD, i, block_q), *(_get(x, i, block_q, 3) for x in carry[1:]))

        def per_k_block(j, state):
            c, count = state
            kp, ks = _get(k_side.pos_L, j, block_k, 0), _get(k_side.seg_BL, j, block_k)

            def compute(c):
                mask = attention_mask(qp, kp, qs, ks, causal=causal)
                k_blk, v_blk = _get(k_BSKD, j, block_k), _get(v_BSKD, j, block_k)
                return _online_update(c, q_blk, k_blk, v_blk, mask)

            visible = _visible(qp, kp, causal)
            c = jax.lax.cond(visible, compute, lambda c: c, c)
            return c, count + visible.astype(jnp.int32)

        c, count = jax.lax.fori_loop(0, num_k, per_k_block, (c, count))
        carry = Carry(
            _put(carry.o_BQKGD, c.o_BQKGD, i, block_q),
            *(_put(x, y, i, block_q, 3) for x, y in zip(carry[1:], c[1:], strict=True)),
        )
        return carry, count

    return jax.lax.fori_loop(0, num_q, per_q_block, (carry, jnp.int32(0)))


def attend_shard_bwd(
    q_BQKGD: Array,
    k_BSKD: Array,
    v_BSKD: Array,
    do_BQKGD: Array,
    lse_BKGQ: Array,
    delta_BKGQ: Array,
    q_side: Shard,
    k_side: Shard,
    grads: tuple[Array, Array, Array],
    *,
    causal: bool,
    block_q: int,
    block_k: int,
) -> tuple[Array, Array, Array]:
    """Add the gradient contributions of one query shard against one key/value shard.

    ``grads`` = float32 accumulators (dq ``[B, Q, K, G, D]``, dk, dv with k's shape), updated
    in place and returned. Recomputes ``p = exp(s - lse)`` block by block;
    ``delta = rowsum(do * out)``.
    """
    f = stats_dtype(q_BQKGD.dtype)
    scale = jnp.asarray(q_BQKGD.shape[-1] ** -0.5, f)
    num_q, num_k = q_BQKGD.shape[1] // block_q, k_BSKD.shape[1] // block_k

    def per_k_block(j, grads):
        dq, dk, dv = grads
        k_blk, v_blk = _get(k_BSKD, j, block_k), _get(v_BSKD, j, block_k)
        kp, ks = _get(k_side.pos_L, j, block_k, 0), _get(k_side.seg_BL, j, block_k)

        def per_q_block(i, state):
            qp, qs = _get(q_side.pos_L, i, block_q, 0), _get(q_side.seg_BL, i, block_q)

            def compute(state):
                dq, dk_blk, dv_blk = state
                q_blk, do_blk = _get(q_BQKGD, i, block_q), _get(do_BQKGD, i, block_q)
                lse, delta = _get(lse_BKGQ, i, block_q, 3), _get(delta_BKGQ, i, block_q, 3)
                mask = attention_mask(qp, kp, qs, ks, causal=causal)
                p_BKGqs = jnp.exp(_scores(q_blk, k_blk, mask) - lse[..., None])
                dp = jnp.einsum("bqkgd,bskd->bkgqs", do_blk, v_blk, preferred_element_type=f)
                ds_BKGqs = p_BKGqs * (dp - delta[..., None]) * scale
                dv_blk += jnp.einsum(
                    "bkgqs,bqkgd->bskd",
                    p_BKGqs.astype(do_blk.dtype),
                    do_blk,
                    preferred_element_type=f,
                )
                dk_blk += jnp.einsum(
                    "bkgqs,bqkgd->bskd",
                    ds_BKGqs.astype(q_blk.dtype),
                    q_blk,
                    preferred_element_type=f,
                )
                dq_blk = _get(dq, i, block_q) + jnp.einsum(
                    "bkgqs,bskd->bqkgd",
                    ds_BKGqs.astype(k_blk.dtype),
                    k_blk,
                    preferred_element_type=f,
                )
                return _put(dq, dq_blk, i, block_q), dk_blk, dv_blk

            return jax.lax.cond(_visible(qp, kp, causal), compute, lambda s: s, state)

        state = (dq, _get(dk, j, block_k), _get(dv, j, block_k))
        dq, dk_blk, dv_blk = jax.lax.fori_loop(0, num_q, per_q_block, state)
        return dq, _put(dk, dk_blk, j, block_k), _put(dv, dv_blk, j, block_k)

    return jax.lax.fori_loop(0, num_k, per_k_block, grads)


def delta_of(out_BQKGD: Array, do_BQKGD: Array) -> Array:
    """``delta_BKGQ = rowsum(do * out)`` in float32."""
    f = stats_dtype(out_BQKGD.dtype)
    d = jnp.einsum("bqkgd,bqkgd->bkgq", do_BQKGD.astype(f), out_BQKGD.astype(f))
    return d


def effective_block(seq: int, block_size: int) -> int:
    """The block actually used: ``block_size`` capped at ``seq``; it must divide ``seq``."""
    b = min(block_size, seq)
    if seq % b:
        raise ValueError(
            f"sequence length {seq} must be a multiple of block_size {b} "
            "(pad the sequence with negative segment ids)"
        )
    return b


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blockwise(q, k, v, segment_ids, causal, block_size):
    return _blockwise_fwd(q, k, v, segment_ids, causal, block_size)[0]


def _sides(segment_ids: Array) -> Shard:
    return Shard(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids)


def _blockwise_fwd(q, k, v, segment_ids, causal, block_size):
    b = effective_block(q.shape[1], block_size)
    q5 = split_heads(q, k.shape[2])
    side = _sides(segment_ids)
    carry, _ = attend_shard(
        init_carry(q5), q5, k, v, side, side, causal=causal, block_q=b, block_k=b
    )
    out5, lse = finalize(carry, q.dtype)
    return out5.reshape(q.shape), (q, k, v, segment_ids, out5, lse)


def _blockwise_bwd(causal, block_size, res, do):
    q, k, v, segment_ids, out5, lse = res
    b = effective_block(q.shape[1], block_size)
    q5 = split_heads(q, k.shape[2])
    do5 = do.reshape(q5.shape)
    side = _sides(segment_ids)
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    zeros = (jnp.zeros(q5.shape, f32), jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32))
    dq, dk, dv = attend_shard_bwd(
        q5,
        k,
        v,
        do5,
        lse,
        delta_of(out5, do5),
        side,
        side,
        zeros,
        causal=causal,
        block_q=b,
        block_k=b,
    )
    return dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
) -> Array:
    """Exact attention computed one (query block, key block) pair at a time.

    Args and result as :func:`ringrl.ops.reference_attention`; ``seq`` must be a multiple of
    ``min(block_size, seq)``. Memory grows with ``block_size``, not with ``seq**2``: the backward
    pass recomputes each block's probabilities from the saved log-sum-exp.
    """
    check_shapes(q, k, v, segment_ids)
    return _blockwise(q, k, v, segments_or_zeros(q, segment_ids), causal, block_size)
