"""Blockwise (memory-efficient) attention: online softmax over key blocks, custom VJP.

The forward pass folds key/value tiles into every query tile's online-softmax state (running
max ``m``, denominator ``l``, unnormalised output ``o``, all float32). Tile pairs that the
causal mask or padding hide entirely are skipped (the query loop of a key tile visits only the
query tiles it computes), not computed and masked; pairs the mask does not touch are computed
without building it (``lax.cond``). The backward pass recomputes the probabilities tile by tile
from the saved log-sum-exp, so memory grows with the block size, never with ``seq**2``.

The kernel walks the sequence in tiles: :func:`query_tile` query rows against
:func:`key_tile` key positions (at 4 heads and block 512: 128 x 256), so that a tile's float32
scores, probabilities and their gradients stay in a core's cache. ``block_size`` (the
key/value block: what is held and passed around the ring) is unchanged by it; skipping is
decided per tile pair, so it is at least as fine as per block pair.

The shard-level functions here (:func:`attend_shard`, :func:`attend_shard_bwd`) also power ring
attention: a ring step is one call with the key/value shard currently held.

Shape suffixes: B batch, Q/S query/key positions, q/s positions within a tile, K kv heads,
G query heads per kv head, D head dim. Queries are kept heads-major (``[B, K, G, Q, D]``, q
pre-scaled by ``head_dim ** -0.5``); keys and values stay token-major (``[B, S, K, D]``) and each
key tile is transposed to ``[B, K, s, D]`` when loaded, so every tile product is a plain batched
matmul and no heads-major copy of k, v or the output is kept for the backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
from ringrl.ops.remat import full_after


class Shard(NamedTuple):
    """One device's (or the whole) query or key side: positions and segment ids."""

    pos_L: Array  # int32 [L] absolute positions (for the causal mask and block skipping)
    seg_BL: Array  # int32 [B, L] segment ids, negative = padding


class Carry(NamedTuple):
    """Online-softmax state for all queries of a shard (heads-major, float32)."""

    o_BKGQD: Array  # unnormalised output
    m_BKGQ: Array  # running max of the scores
    l_BKGQ: Array  # running softmax denominator


def heads_major(q_BQHD: Array, num_kv_heads: int) -> Array:
    """``[B, Q, H, D] -> [B, K, G, Q, D]``: the kernel's layout, one batched matmul per block."""
    return jnp.moveaxis(split_heads(q_BQHD, num_kv_heads), 1, 3)


def tokens_major(x_BKGQD: Array) -> Array:
    """``[B, K, G, Q, D] -> [B, Q, H, D]`` (inverse of :func:`heads_major`)."""
    B, K, G, Q, D = x_BKGQD.shape
    return jnp.moveaxis(x_BKGQD, 3, 1).reshape(B, Q, K * G, D)


def softmax_scale(q: Array) -> Array:
    return jnp.asarray(q.shape[-1] ** -0.5, stats_dtype(q.dtype))


def kernel_inputs(q: Array, k: Array, v: Array) -> tuple[Array, Array, Array]:
    """``q, k, v`` token-major -> the kernel's inputs: q pre-scaled and heads-major; k and v
    as they are (token-major: each key/value block is transposed when it is loaded, so no
    shard-sized heads-major copy of them is ever kept)."""
    return heads_major(q * softmax_scale(q).astype(q.dtype), k.shape[2]), k, v


def init_carry(q_BKGQD: Array) -> Carry:
    B, K, G, Q, D = q_BKGQD.shape
    f = stats_dtype(q_BKGQD.dtype)
    return Carry(  # created only once q exists (see ringrl.ops.remat)
        full_after(q_BKGQD, (B, K, G, Q, D), 0.0, f),
        full_after(q_BKGQD, (B, K, G, Q), -jnp.inf, f),
        full_after(q_BKGQD, (B, K, G, Q), 0.0, f),
    )


def finalize(carry: Carry, dtype: jnp.dtype) -> tuple[Array, Array]:
    """Normalise: returns (out ``[B, K, G, Q, D]`` in ``dtype``, lse ``[B, K, G, Q]``).

    Rows that attended nothing get output 0 and lse = +inf (so that ``exp(s - lse) == 0`` in the
    backward pass, never NaN).
    """
    o, m, denom = carry
    nonempty = denom > 0
    lse_BKGQ = jnp.where(nonempty, m + jnp.log(jnp.where(nonempty, denom, 1.0)), jnp.inf)
    return (o / jnp.where(nonempty, denom, 1.0)[..., None]).astype(dtype), lse_BKGQ


def _get(x: Array, i: Array, size: int, axis: int) -> Array:
    """Block ``i`` (of ``size`` positions) along ``axis``, without copying the rest."""
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis)


def _put(x: Array, block: Array, i: Array, size: int, axis: int) -> Array:
    """Write block ``i`` along ``axis`` in place."""
    return jax.lax.dynamic_update_slice_in_dim(x, block, i * size, axis)


SKIP, FULL, MASKED = 0, 1, 2  # what a tile pair needs: nothing, no mask, the mask


class SpanStats(NamedTuple):
    """Per tile of a side: the facts that decide whether a pair is skipped."""

    pos_min: Array  # int32 [n]
    pos_max: Array  # int32 [n]
    seg_min: Array  # int32 [B, n]
    seg_max: Array  # int32 [B, n]


def span_stats(side: Shard, size: int) -> SpanStats:
    """Positions and segment-id extremes of each run of ``size`` positions of ``side``."""
    B, L = side.seg_BL.shape
    pos_nz, seg_Bnz = side.pos_L.reshape(L // size, size), side.seg_BL.reshape(B, L // size, size)
    return SpanStats(pos_nz.min(1), pos_nz.max(1), seg_Bnz.min(2), seg_Bnz.max(2))


def tile_kinds(q: SpanStats, k: SpanStats, causal: bool) -> Array:
    """What each (query tile, key tile) pair needs, ``[query tiles, key tiles]`` int8.

    ``SKIP`` when the mask hides the whole pair (causally, or all padding on one side),
    ``FULL`` when it hides nothing (one segment per row on both sides, the same one, entirely
    in the past), else ``MASKED``. One small vectorised computation per shard pair, instead of
    a handful of tiny reductions per tile pair.
    """
    hidden = (q.seg_max < 0).all(0)[:, None] | (k.seg_max < 0).all(0)[None, :]
    if causal:
        hidden |= q.pos_max[:, None] < k.pos_min[None, :]
    q_one = (q.seg_min == q.seg_max) & (q.seg_min >= 0)  # [B, nq]: one real segment
    k_one = k.seg_min == k.seg_max
    same = q.seg_min[:, :, None] == k.seg_min[:, None, :]
    one_segment = (q_one[:, :, None] & k_one[:, None, :] & same).all(0)
    seen = (q.pos_min[:, None] >= k.pos_max[None, :]) if causal else jnp.bool_(True)
    kinds = jnp.where(hidden, SKIP, jnp.where(one_segment & seen, FULL, MASKED))
    return kinds.astype(jnp.int8)


def key_tile_kinds(q: SpanStats, k: SpanStats, j: Array, causal: bool) -> Array:
    """Column ``j`` of :func:`tile_kinds`: what each query tile needs against key tile ``j``,
    ``[query tiles]`` int8. The kernels compute one column per key tile, so no table over
    all tile pairs (quadratic in the sequence: 4 MiB at 375K tokens per device) is ever held.
    """
    k_j = SpanStats(*(jax.lax.dynamic_slice_in_dim(x, j, 1, x.ndim - 1) for x in k))
    return tile_kinds(q, k_j, causal)[:, 0]


def _num_groups(num_tiles: int, pass_tiles: int) -> int:
    """Groups of ``pass_tiles`` key tiles in a shard of ``num_tiles`` (they must divide it)."""
    if pass_tiles < 1 or num_tiles % pass_tiles:
        raise ValueError(
            f"pass_tiles ({pass_tiles}) must be a positive divisor of the shard's "
            f"{num_tiles} key tiles"
        )
    return num_tiles // pass_tiles


def visit_order(kinds_n: Array) -> tuple[Array, Array]:
    """The query tiles one key tile computes: ``(order, count)``; its query loop visits
    ``order[:count]`` only, so a skipped pair costs nothing (not even the slicing of its
    tiles). Stable: computed tiles keep their order, so results are the same as visiting
    every tile. ``kinds_n`` is the key tile's :func:`key_tile_kinds`."""
    hidden = kinds_n == SKIP
    return jnp.argsort(hidden, stable=True).astype(jnp.int32), (~hidden).sum(dtype=jnp.int32)


def _rows(x_BKGq_: Array) -> Array:
    """``[B, K, G, q, ...] -> [B, K, G*q, ...]``: the query heads that share a kv head and
    their rows form one matmul dimension (a free reshape; einsums over a separate ``g`` axis
    make XLA's CPU backend copy every score tile between layouts)."""
    B, K, G, q = x_BKGq_.shape[:4]
    return x_BKGq_.reshape(B, K, G * q, *x_BKGq_.shape[4:])


def _dot(spec: str, a: Array, b: Array, f: jnp.dtype) -> Array:
    return jnp.einsum(spec, a, b, preferred_element_type=f)


def _scores(q_BKGqD: Array, k_BKsD: Array, mask_Bqs: Array | None) -> Array:
    """Scores ``[B, K, G*q, s]`` of a tile pair (q is pre-scaled), float32, masked -inf.

    Score-sized arrays stay 4-D (rows merged, :func:`_rows`): a size-1 ``G`` axis in them
    makes XLA's CPU backend copy each score tile between two layouts of the same bytes."""
    B, _, G = q_BKGqD.shape[:3]
    s_BKMs = _dot("bkmd,bksd->bkms", _rows(q_BKGqD), k_BKsD, stats_dtype(q_BKGqD.dtype))
    if mask_Bqs is None:
        return s_BKMs
    mask_B1Ms = jnp.broadcast_to(mask_Bqs[:, None, None], (B, 1, G, *mask_Bqs.shape[1:]))
    return jnp.where(_rows(mask_B1Ms), s_BKMs, -jnp.inf)


def _online_update(carry: Carry, q_BKGqD, k_BKsD, v_BKsD, mask_Bqs) -> Carry:
    o_BKMD, m_BKM, denom_BKM = (_rows(x) for x in carry)
    s_BKMs = _scores(q_BKGqD, k_BKsD, mask_Bqs)
    m_new = jnp.maximum(m_BKM, s_BKMs.max(-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p_BKMs = jnp.exp(s_BKMs - m_safe[..., None])
    correction = jnp.exp(m_BKM - m_safe)  # 0 while the row has seen nothing (m = -inf)
    denom_BKM = denom_BKM * correction + p_BKMs.sum(-1)
    pv_BKMD = _dot("bkms,bksd->bkmd", p_BKMs.astype(v_BKsD.dtype), v_BKsD, o_BKMD.dtype)
    new = (o_BKMD * correction[..., None] + pv_BKMD, m_new, denom_BKM)
    return Carry(*(x.reshape(c.shape) for x, c in zip(new, carry, strict=True)))


def _tile_mask(q_side: Shard, i: Array, size: int, kp_s: Array, ks_Bs: Array, causal: bool):
    """The ``[B, q, s]`` mask of query tile ``i`` against a key tile (masked pairs only)."""
    qp, qs = _get(q_side.pos_L, i, size, 0), _get(q_side.seg_BL, i, size, 1)
    return attention_mask(qp, kp_s, qs, ks_Bs, causal=causal)


Blocks = tuple[Array, ...]
PassOn = Callable[[Blocks], Blocks]  # sends blocks to the next device, returns what arrives


def attend_shard(
    carry: Carry,
    q_BKGQD: Array,
    k_BSKD: Array,
    v_BSKD: Array,
    q_side: Shard,
    k_side: Shard,
    *,
    causal: bool,
    tile_q: int,
    tile_k: int,
    pass_on: PassOn | None = None,
    pass_tiles: int = 1,
) -> tuple[Carry, Array, tuple[Array, Array, Array]]:
    """Fold the key/value shard into every query's online-softmax state.

    ``q_BKGQD`` is heads-major and pre-scaled by ``head_dim ** -0.5``; ``k_BSKD``, ``v_BSKD``
    are token-major. Key tiles of ``tile_k`` positions are the outer loop (each is transposed
    once, when loaded), query tiles of ``tile_q`` rows the inner one; key tiles and carry tiles
    are read and written in place with dynamic slices. Each tile pair is skipped, computed
    without a mask, or computed with the mask (:func:`key_tile_kinds`, decided for a key tile's
    pairs before its query loop; :func:`visit_order` lists the query tiles each key tile
    computes, so a skipped pair costs no loop iteration).

    ``pass_on`` (ring attention): the shard moves on ``pass_tiles`` key tiles at a time.
    ``pass_on`` is called with a group's token-major ``(k, v, segment ids)`` before its tiles
    are computed; what it returns (the previous device's group) is written into the group's
    slot once they are done. So only one group, never a whole shard (unless the group is the
    shard), is in flight.

    Returns the new carry, the number of tile pairs computed (int32) and the key shard
    ``(k, v, segment ids)`` held at the end (the next shard when ``pass_on`` is given).
    """
    num_k = k_BSKD.shape[1] // tile_k
    group = tile_k * pass_tiles
    q_stats, k_stats = span_stats(q_side, tile_q), span_stats(k_side, tile_k)

    def per_group(g, state):
        carry, computed, kv = state
        held = tuple(_get(x, g, group, 1) for x in kv)
        arrived = None if pass_on is None else pass_on(held)  # before compute

        def per_k_tile(jj, state):
            carry, computed = state
            j = g * pass_tiles + jj
            k_raw, v_raw, ks = (_get(x, jj, tile_k, 1) for x in held)
            kp = _get(k_side.pos_L, j, tile_k, 0)
            k_blk, v_blk = jnp.moveaxis(k_raw, 1, 2), jnp.moveaxis(v_raw, 1, 2)

            def per_q_tile(t, carry):
                i = order[t]
                q_blk = _get(q_BKGQD, i, tile_q, 3)
                mask = lambda: _tile_mask(q_side, i, tile_q, kp, ks, causal)  # noqa: E731
                c = jax.lax.cond(
                    kinds[i] == FULL,
                    lambda c: _online_update(c, q_blk, k_blk, v_blk, None),
                    lambda c: _online_update(c, q_blk, k_blk, v_blk, mask()),
                    Carry(*(_get(x, i, tile_q, 3) for x in carry)),
                )
                return Carry(*(_put(x, y, i, tile_q, 3) for x, y in zip(carry, c, strict=True)))

            kinds = key_tile_kinds(q_stats, k_stats, j, causal)
            order, count = visit_order(kinds)
            return jax.lax.fori_loop(0, count, per_q_tile, carry), computed + count

        carry, computed = jax.lax.fori_loop(0, pass_tiles, per_k_tile, (carry, computed))
        if arrived is not None:
            kv = tuple(_put(x, y, g, group, 1) for x, y in zip(kv, arrived, strict=True))
        return carry, computed, kv

    state = (carry, jnp.int32(0), (k_BSKD, v_BSKD, k_side.seg_BL))
    carry, computed, kv = jax.lax.fori_loop(0, _num_groups(num_k, pass_tiles), per_group, state)
    return carry, computed, kv


def _scores_t(k_BKsD: Array, q_BKGqD: Array, mask_Bqs: Array | None) -> Array:
    """Transposed scores ``[B, K, s, G*q]`` of a tile pair (the backward pass's layout),
    float32, masked -inf."""
    B, _, G, q = q_BKGqD.shape[:4]
    s_BKsM = _dot("bksd,bkmd->bksm", k_BKsD, _rows(q_BKGqD), stats_dtype(q_BKGqD.dtype))
    if mask_Bqs is None:
        return s_BKsM
    s = mask_Bqs.shape[2]
    mask_B1sGq = jnp.broadcast_to(jnp.swapaxes(mask_Bqs, 1, 2)[:, None, :, None], (B, 1, s, G, q))
    return jnp.where(mask_B1sGq.reshape(B, 1, s, G * q), s_BKsM, -jnp.inf)


def _block_grads(q_blk, k_blk, kT_blk, v_blk, do_blk, lse, delta, mask, state):
    """One tile pair's contributions to (dq tile, dk tile, dv tile), all float32.

    Inputs heads-major (``kT_blk`` is the key tile as ``[B, K, D, s]``); dq comes back
    token-major (``[B, q, K, G, D]``, the shard accumulator's layout), dk and dv heads-major
    (``[B, K, s, D]``, accumulated over the query tiles of one key tile). With q pre-scaled:
    ``p = exp(q k - lse)``, ``ds = p (do v - delta)``; dk = ds^T q, dv = p^T do, dq = ds k (the
    caller applies the scale to dq once at the end).

    The score-sized arrays are kept transposed (``[B, K, s, G*q]``: keys as rows), so that
    every product contracts the last axis of its left operand. XLA's CPU backend hands only
    such dots to YNNPACK; a dot that contracts a leading axis (``ds^T q`` in the usual
    layout) falls back to a generic kernel that splits itself over the intra-op thread pool,
    which is slow when the pool is shared by emulated host devices.
    """
    dq_blk, dk_blk, dv_blk = state
    f = dk_blk.dtype
    B, K, G, q, D = q_blk.shape
    q_BKMD, do_BKMD = _rows(q_blk), _rows(do_blk)
    p_BKsM = jnp.exp(_scores_t(k_blk, q_blk, mask) - _rows(lse)[:, :, None])
    dp_BKsM = _dot("bksd,bkmd->bksm", v_blk, do_BKMD, f)
    ds_BKsM = p_BKsM * (dp_BKsM - _rows(delta)[:, :, None])
    p_BKsM, ds_BKsM = p_BKsM.astype(do_blk.dtype), ds_BKsM.astype(q_blk.dtype)
    dv_blk = dv_blk + _dot("bksm,bkmd->bksd", p_BKsM, do_BKMD, f)
    dk_blk = dk_blk + _dot("bksm,bkmd->bksd", ds_BKsM, q_BKMD, f)
    dq_BKDM = _dot("bkds,bksm->bkdm", kT_blk, ds_BKsM, f)
    dq_BqKGD = jnp.transpose(dq_BKDM.reshape(B, K, D, G, q), (0, 4, 1, 3, 2))
    return dq_blk + dq_BqKGD, dk_blk, dv_blk


def attend_shard_bwd(
    q_BKGQD: Array,
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
    tile_q: int,
    tile_k: int,
    pass_kv: PassOn | None = None,
    pass_dkv: PassOn | None = None,
    pass_tiles: int = 1,
) -> tuple[tuple[Array, Array, Array], tuple[Array, Array, Array]]:
    """Add the gradient contributions of one query shard against one key/value shard.

    ``q_BKGQD`` is pre-scaled; k/v and ``do_BQKGD`` are token-major (:func:`attend_shard`).
    ``grads`` = token-major float32 accumulators (dq ``[B, Q, K, G, D]``, *unscaled*; dk, dv
    ``[B, S, K, D]``), updated in place. Tiles of ``do`` and of the gradients are transposed
    one tile at a time, never a whole shard (that would cost a shard-sized copy). Recomputes
    ``p = exp(s - lse)`` tile by tile; ``delta = rowsum(do * out)``.

    Ring attention passes the shard on ``pass_tiles`` key tiles at a time (see
    :func:`attend_shard`): ``pass_kv`` gets a group's ``(k, v, segment ids)`` before its tiles
    are computed, ``pass_dkv`` the group's finished ``(dk, dv)``, which travel with their key
    tiles; what arrives is written into the group's slot.

    Returns ``(dq, dk, dv)`` and the key shard ``(k, v, segment ids)`` held at the end.
    """
    num_k = k_BSKD.shape[1] // tile_k
    group = tile_k * pass_tiles
    q_stats, k_stats = span_stats(q_side, tile_q), span_stats(k_side, tile_k)

    def per_group(g, state):
        dq, dk, dv, kv = state
        held = tuple(_get(x, g, group, 1) for x in kv)
        arrived = None if pass_kv is None else pass_kv(held)  # before compute

        def per_k_tile(jj, state):
            dq, dk_grp, dv_grp = state
            j = g * pass_tiles + jj
            k_raw, v_raw, ks = (_get(x, jj, tile_k, 1) for x in held)
            k_blk, v_blk = jnp.moveaxis(k_raw, 1, 2), jnp.moveaxis(v_raw, 1, 2)
            kT_blk = jnp.transpose(k_raw, (0, 2, 3, 1))
            kp = _get(k_side.pos_L, j, tile_k, 0)

            def per_q_tile(t, state):
                dq, dk_blk, dv_blk = state
                i = order[t]
                q_blk = _get(q_BKGQD, i, tile_q, 3)
                do_blk = jnp.moveaxis(_get(do_BQKGD, i, tile_q, 1), 1, 3)
                lse, delta = _get(lse_BKGQ, i, tile_q, 3), _get(delta_BKGQ, i, tile_q, 3)
                grads = lambda mask: (  # noqa: E731
                    lambda s: _block_grads(q_blk, k_blk, kT_blk, v_blk, do_blk, lse, delta, mask, s)
                )
                dq_blk, dk_blk, dv_blk = jax.lax.cond(
                    kinds[i] == FULL,
                    grads(None),
                    lambda s: grads(_tile_mask(q_side, i, tile_q, kp, ks, causal))(s),
                    (_get(dq, i, tile_q, 1), dk_blk, dv_blk),
                )
                return _put(dq, dq_blk, i, tile_q, 1), dk_blk, dv_blk

            heads_major = (jnp.moveaxis(_get(x, jj, tile_k, 1), 1, 2) for x in (dk_grp, dv_grp))
            kinds = key_tile_kinds(q_stats, k_stats, j, causal)
            order, count = visit_order(kinds)
            dq, dk_blk, dv_blk = jax.lax.fori_loop(0, count, per_q_tile, (dq, *heads_major))
            dk_grp, dv_grp = (
                _put(x, jnp.moveaxis(y, 1, 2), jj, tile_k, 1)
                for x, y in ((dk_grp, dk_blk), (dv_grp, dv_blk))
            )
            return dq, dk_grp, dv_grp

        state = (dq, _get(dk, g, group, 1), _get(dv, g, group, 1))
        dq, dk_grp, dv_grp = jax.lax.fori_loop(0, pass_tiles, per_k_tile, state)
        if pass_dkv is not None:
            dk_grp, dv_grp = pass_dkv((dk_grp, dv_grp))
        if arrived is not None:
            kv = tuple(_put(x, y, g, group, 1) for x, y in zip(kv, arrived, strict=True))
        return dq, _put(dk, dk_grp, g, group, 1), _put(dv, dv_grp, g, group, 1), kv

    state = (*grads, (k_BSKD, v_BSKD, k_side.seg_BL))
    dq, dk, dv, kv = jax.lax.fori_loop(0, _num_groups(num_k, pass_tiles), per_group, state)
    return (dq, dk, dv), kv


def delta_of(out_BQKGD: Array, do_BQKGD: Array) -> Array:
    """``delta_BKGQ = rowsum(do * out)`` in float32 (both token-major)."""
    f = stats_dtype(out_BQKGD.dtype)
    return jnp.einsum("bqkgd,bqkgd->bkgq", out_BQKGD.astype(f), do_BQKGD.astype(f))


QUERY_TILE = 128  # most query rows per tile
KEY_TILE = 256  # most key positions per tile
TILE_SCORES = 1 << 17  # float32 scores per [heads x query tile x key tile]: 512 KiB


def _largest_divisor(n: int, cap: int) -> int:
    return max(t for t in range(1, min(n, cap) + 1) if n % t == 0)


def key_tile(block: int) -> int:
    """Key positions computed together: the largest divisor of ``block`` that is at most
    :data:`KEY_TILE`."""
    return _largest_divisor(block, KEY_TILE)


def query_tile(block: int, heads: int = 1) -> int:
    """Query rows computed together against a key tile (:func:`key_tile`) of a ``block``.

    The largest divisor of ``block`` that is at most :data:`QUERY_TILE` and keeps the
    ``[heads, rows, key tile]`` float32 score tile within :data:`TILE_SCORES` (at least 8 rows).
    ``block_size`` is the key/value block (what is held and passed around); a block pair is
    walked in tiles of this many rows and :func:`key_tile` keys. Same result; on CPU the
    tile's scores, probabilities and their gradients (a few score-sized arrays) then stay in a
    core's cache: at 4 heads x block 512, 128 x 256 tiles of 512 KiB instead of one 4 MiB
    block pair (on a 2-core Xeon with 2 MiB of L2 per core, tiles of 128 x 512 made the
    backward's ``ds = p (dp - delta)`` 2.2x slower per element, and the ring 4% slower).
    """
    cap = min(QUERY_TILE, max(8, TILE_SCORES // (heads * key_tile(block))))
    return _largest_divisor(block, cap)


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
    q_h, k_h, v_h = kernel_inputs(q, k, v)
    side = _sides(segment_ids)
    carry, _, _ = attend_shard(
        init_carry(q_h),
        q_h,
        k_h,
        v_h,
        side,
        side,
        causal=causal,
        tile_q=query_tile(b, q.shape[2]),
        tile_k=key_tile(b),
    )
    out_h, lse = finalize(carry, q.dtype)
    out = tokens_major(out_h)
    return out, (q_h, k_h, v_h, segment_ids, out, lse)  # k, v, out: token-major, not copies


def _blockwise_bwd(causal, block_size, res, do):
    q_h, k, v, segment_ids, out, lse = res
    b = effective_block(q_h.shape[3], block_size)
    do_t = split_heads(do, k.shape[2])
    side = _sides(segment_ids)
    f32 = lambda x: full_after(do, x.shape, 0.0, stats_dtype(x.dtype))  # noqa: E731
    (dq, dk, dv), _ = attend_shard_bwd(
        q_h,
        k,
        v,
        do_t,
        lse,
        delta_of(split_heads(out, k.shape[2]), do_t),
        side,
        side,
        (f32(do_t), f32(k), f32(v)),
        causal=causal,
        tile_q=query_tile(b, do.shape[2]),
        tile_k=key_tile(b),
    )
    dq = (dq * softmax_scale(q_h)).reshape(do.shape).astype(q_h.dtype)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None


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
    """Exact attention computed one (query tile, key tile) pair at a time.

    Args and result as :func:`ringrl.ops.reference_attention`; ``seq`` must be a multiple of
    ``min(block_size, seq)``. Memory grows with ``block_size``, not with ``seq**2``: the backward
    pass recomputes each block's probabilities from the saved log-sum-exp.
    """
    check_shapes(q, k, v, segment_ids)
    return _blockwise(q, k, v, segments_or_zeros(q, segment_ids), causal, block_size)
