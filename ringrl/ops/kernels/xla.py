"""The ``xla`` kernel: the XLA-level tile kernel behind blockwise and ring attention.

The forward pass folds key/value tiles into every query tile's online-softmax state (running
max ``m``, denominator ``l``, unnormalised output ``o``, all float32). Tile pairs that the
causal mask or padding hide entirely are skipped (the query loop of a key tile visits only the
query tiles it computes), not computed and masked; pairs the mask does not touch are computed
without building it (``lax.cond``). The backward pass recomputes the probabilities tile by tile
from the global log-sum-exp, so memory grows with the tile, never with ``seq**2``.

The kernel walks a chunk pair in tiles: :func:`query_tile` query rows against :func:`key_tile`
key positions (at 4 heads and block 512 on CPU: 128 x 256), so that a tile's float32 scores,
probabilities and their gradients stay in a core's cache. The caps come from the kernel's
:class:`ringrl.backend.Tuning`; ``block`` (the caller's key/value block) is what the tiles
divide. Skipping is decided per tile pair.

:class:`XlaKernel` is the boundary (:mod:`ringrl.ops.kernels.base`): chunks in, float32
(out, lse) or gradients out. Its prepared queries (:meth:`XlaKernel.prepare`) are heads-major
(``[B, K, G, Q, D]``, pre-scaled by ``head_dim ** -0.5``); keys and values stay token-major
(``[B, S, K, D]``) and each key tile is transposed to ``[B, K, s, D]`` when loaded, so every
tile product is a plain batched matmul and no heads-major copy of k, v, do or the gradients is
made.

Shape suffixes: B batch, Q/S query/key positions, q/s positions within a tile, K kv heads,
G query heads per kv head, H = K * G, D head dim.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ringrl.backend import CPU, Tuning
from ringrl.ops.kernels.base import Chunk, Side, backward_lse
from ringrl.ops.reference import attention_mask, split_heads, stats_dtype
from ringrl.ops.remat import full_after


class Carry(NamedTuple):
    """Online-softmax state for all queries of a chunk (heads-major, float32)."""

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


def scaled_heads_major(q_BQHD: Array, num_kv_heads: int) -> Array:
    """The kernel's queries: pre-scaled by ``head_dim ** -0.5`` (in q's dtype), heads-major."""
    return heads_major(q_BQHD * softmax_scale(q_BQHD).astype(q_BQHD.dtype), num_kv_heads)


def filled(like: Array, shape: tuple[int, ...], fill: float, dtype, late: bool) -> Array:
    """``jnp.full(shape, fill, dtype)``; with ``late`` (the CPU workaround, see
    :mod:`ringrl.ops.remat`), created no earlier than ``like``."""
    return full_after(like, shape, fill, dtype) if late else jnp.full(shape, fill, dtype)


def init_carry(q_BKGQD: Array, late: bool = True) -> Carry:
    B, K, G, Q, D = q_BKGQD.shape
    f = stats_dtype(q_BKGQD.dtype)
    return Carry(
        filled(q_BKGQD, (B, K, G, Q, D), 0.0, f, late),
        filled(q_BKGQD, (B, K, G, Q), -jnp.inf, f, late),
        filled(q_BKGQD, (B, K, G, Q), 0.0, f, late),
    )


def finalize(carry: Carry) -> tuple[Array, Array]:
    """Normalise: (out ``[B, K, G, Q, D]`` float32, natural-log lse ``[B, K, G, Q]``).

    Rows that attended nothing get output 0 and lse ``-inf``.
    """
    o, m, denom = carry
    nonempty = denom > 0
    lse_BKGQ = jnp.where(nonempty, m + jnp.log(jnp.where(nonempty, denom, 1.0)), -jnp.inf)
    return o / jnp.where(nonempty, denom, 1.0)[..., None], lse_BKGQ


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


def span_stats(side: Side, size: int) -> SpanStats:
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


def _tile_mask(q_side: Side, i: Array, size: int, kp_s: Array, ks_Bs: Array, causal: bool):
    """The ``[B, q, s]`` mask of query tile ``i`` against a key tile (masked pairs only)."""
    qp, qs = _get(q_side.pos_L, i, size, 0), _get(q_side.seg_BL, i, size, 1)
    return attention_mask(qp, kp_s, qs, ks_Bs, causal=causal)


def attend(
    carry: Carry,
    q_BKGQD: Array,
    k_BSKD: Array,
    v_BSKD: Array,
    q_side: Side,
    k_side: Side,
    *,
    causal: bool,
    tile_q: int,
    tile_k: int,
) -> tuple[Carry, Array]:
    """Fold a key/value chunk into every query's online-softmax state.

    ``q_BKGQD`` is heads-major and pre-scaled by ``head_dim ** -0.5``; ``k_BSKD``, ``v_BSKD``
    are token-major. Key tiles of ``tile_k`` positions are the outer loop (each is transposed
    once, when loaded), query tiles of ``tile_q`` rows the inner one; carry tiles are read and
    written in place with dynamic slices. Each tile pair is skipped, computed without a mask,
    or computed with the mask (:func:`key_tile_kinds`, decided for a key tile's pairs before
    its query loop; :func:`visit_order` lists the query tiles each key tile computes, so a
    skipped pair costs no loop iteration).

    Returns the new carry and the number of tile pairs computed (int32).
    """
    q_stats, k_stats = span_stats(q_side, tile_q), span_stats(k_side, tile_k)

    def per_k_tile(j, state):
        carry, computed = state
        k_raw, v_raw, ks = (_get(x, j, tile_k, 1) for x in (k_BSKD, v_BSKD, k_side.seg_BL))
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

    num_k = k_BSKD.shape[1] // tile_k
    return jax.lax.fori_loop(0, num_k, per_k_tile, (carry, jnp.int32(0)))


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


def _block_grads(q_blk, k_blk, kT_blk, v_blk, do_blk, lse, delta, mask, scale, state):
    """One tile pair's contributions to (dq tile, dk tile, dv tile), all float32.

    Inputs heads-major (``kT_blk`` is the key tile as ``[B, K, D, s]``); dq comes back
    token-major (``[B, q, H, D]``, the accumulator's layout), dk and dv heads-major
    (``[B, K, s, D]``, accumulated over the query tiles of one key tile). With q pre-scaled:
    ``p = exp(q k - lse)``, ``ds = p (do v - delta)``; dk = ds^T q, dv = p^T do,
    dq = scale * ds k.

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
    return dq_blk + (dq_BqKGD * scale).reshape(dq_blk.shape), dk_blk, dv_blk


def attend_bwd(
    q_BKGQD: Array,
    k_BSKD: Array,
    v_BSKD: Array,
    do_BQHD: Array,
    lse_BKGQ: Array,
    delta_BKGQ: Array,
    q_side: Side,
    k_side: Side,
    grads: tuple[Array, Array, Array],
    *,
    causal: bool,
    tile_q: int,
    tile_k: int,
) -> tuple[Array, Array, Array]:
    """Add the gradient contributions of a query chunk against a key/value chunk.

    ``q_BKGQD`` is pre-scaled; k/v and ``do_BQHD`` are token-major (:func:`attend`).
    ``grads`` = token-major float32 accumulators (dq ``[B, Q, H, D]``; dk, dv
    ``[B, S, K, D]``), updated in place. Tiles of ``do`` and of the gradients are transposed
    one tile at a time, never a whole chunk (that would cost a chunk-sized copy). Recomputes
    ``p = exp(s - lse)`` tile by tile (``lse`` +inf where a row attends nothing:
    :func:`~ringrl.ops.kernels.base.backward_lse`); ``delta = rowsum(do * out)``.
    """
    q_stats, k_stats = span_stats(q_side, tile_q), span_stats(k_side, tile_k)
    scale = softmax_scale(q_BKGQD).astype(grads[0].dtype)
    K = q_BKGQD.shape[1]

    def per_k_tile(j, state):
        dq, dk, dv = state
        k_raw, v_raw, ks = (_get(x, j, tile_k, 1) for x in (k_BSKD, v_BSKD, k_side.seg_BL))
        k_blk, v_blk = jnp.moveaxis(k_raw, 1, 2), jnp.moveaxis(v_raw, 1, 2)
        kT_blk = jnp.transpose(k_raw, (0, 2, 3, 1))
        kp = _get(k_side.pos_L, j, tile_k, 0)

        def per_q_tile(t, state):
            dq, dk_blk, dv_blk = state
            i = order[t]
            q_blk = _get(q_BKGQD, i, tile_q, 3)
            do_blk = jnp.moveaxis(split_heads(_get(do_BQHD, i, tile_q, 1), K), 1, 3)
            lse, delta = _get(lse_BKGQ, i, tile_q, 3), _get(delta_BKGQ, i, tile_q, 3)
            grads = lambda mask: (  # noqa: E731
                lambda s: _block_grads(
                    q_blk, k_blk, kT_blk, v_blk, do_blk, lse, delta, mask, scale, s
                )
            )
            dq_blk, dk_blk, dv_blk = jax.lax.cond(
                kinds[i] == FULL,
                grads(None),
                lambda s: grads(_tile_mask(q_side, i, tile_q, kp, ks, causal))(s),
                (_get(dq, i, tile_q, 1), dk_blk, dv_blk),
            )
            return _put(dq, dq_blk, i, tile_q, 1), dk_blk, dv_blk

        heads_major_kv = (jnp.moveaxis(_get(x, j, tile_k, 1), 1, 2) for x in (dk, dv))
        kinds = key_tile_kinds(q_stats, k_stats, j, causal)
        order, count = visit_order(kinds)
        dq, dk_blk, dv_blk = jax.lax.fori_loop(0, count, per_q_tile, (dq, *heads_major_kv))
        dk, dv = (
            _put(x, jnp.moveaxis(y, 1, 2), j, tile_k, 1) for x, y in ((dk, dk_blk), (dv, dv_blk))
        )
        return dq, dk, dv

    return jax.lax.fori_loop(0, k_BSKD.shape[1] // tile_k, per_k_tile, grads)


def delta_of(out_BQKGD: Array, do_BQKGD: Array) -> Array:
    """``delta_BKGQ = rowsum(do * out)`` in float32 (both token-major)."""
    f = stats_dtype(out_BQKGD.dtype)
    return jnp.einsum("bqkgd,bqkgd->bkgq", out_BQKGD.astype(f), do_BQKGD.astype(f))


def _largest_divisor(n: int, cap: int) -> int:
    return max(t for t in range(1, min(n, cap) + 1) if n % t == 0)


def key_tile(block: int, tuning: Tuning = CPU) -> int:
    """Key positions computed together: the largest divisor of ``block`` that is at most
    ``tuning.key_tile``."""
    return _largest_divisor(block, tuning.key_tile)


def query_tile(block: int, heads: int = 1, tuning: Tuning = CPU) -> int:
    """Query rows computed together against a key tile (:func:`key_tile`) of a ``block``.

    The largest divisor of ``block`` that is at most ``tuning.query_tile`` and keeps the
    ``[heads, rows, key tile]`` float32 score tile within ``tuning.tile_scores`` (at least 8
    rows). A block pair is walked in tiles of this many rows and :func:`key_tile` keys. Same
    result; on CPU the tile's scores, probabilities and their gradients (a few score-sized
    arrays) then stay in a core's cache: at 4 heads x block 512, 128 x 256 tiles of 512 KiB
    instead of one 4 MiB block pair (on a 2-core Xeon with 2 MiB of L2 per core, tiles of
    128 x 512 made the backward's ``ds = p (dp - delta)`` 2.2x slower per element, and the
    ring 4% slower).
    """
    cap = min(tuning.query_tile, max(8, tuning.tile_scores // (heads * key_tile(block, tuning))))
    return _largest_divisor(block, cap)


@dataclasses.dataclass(frozen=True)
class XlaKernel:
    """The XLA tile kernel behind the boundary of :mod:`ringrl.ops.kernels.base`."""

    tuning: Tuning = CPU
    name: str = "xla"

    def tiles(self, block: int, heads: int) -> tuple[int, int]:
        """(query rows, key positions) per tile pair for a key/value ``block``."""
        return query_tile(block, heads, self.tuning), key_tile(block, self.tuning)

    def prepare(self, q_BQHD: Array, num_kv_heads: int) -> Array:
        """The queries as the kernel keeps them: pre-scaled, heads-major ``[B, K, G, Q, D]``."""
        return scaled_heads_major(q_BQHD, num_kv_heads)

    def forward(
        self, q, k, v, q_side: Side, k_side: Side, *, causal: bool, block: int, acc=None
    ) -> Chunk:
        K, G = q.shape[1:3]
        tile_q, tile_k = self.tiles(block, K * G)
        if acc is None:
            carry = init_carry(q, self.tuning.late_buffers)
        else:  # continue the online softmax from acc: (o, m, l) = (out, lse, 1), or (0, -inf, 0)
            carry = Carry(acc.out, acc.lse, jnp.isfinite(acc.lse).astype(acc.out.dtype))
        carry, pairs = attend(
            carry, q, k, v, q_side, k_side, causal=causal, tile_q=tile_q, tile_k=tile_k
        )
        out_h, lse = finalize(carry)
        return Chunk(out_h, lse, pairs)

    def finish(self, chunk: Chunk) -> tuple[Array, Array]:
        B, K, G, Q = chunk.lse.shape
        return tokens_major(chunk.out), chunk.lse.reshape(B, K * G, Q)

    def backward(
        self, q, k, v, out, lse, do, q_side, k_side, *, causal: bool, block: int, grads=None
    ) -> tuple[Array, Array, Array]:
        B, K, G, Q, D = q.shape
        tile_q, tile_k = self.tiles(block, K * G)
        f = stats_dtype(q.dtype)
        if grads is None:
            zeros = lambda x: filled(do, x.shape, 0.0, f, self.tuning.late_buffers)  # noqa: E731
            grads = (zeros(do), zeros(k), zeros(v))
        dq, dk, dv = attend_bwd(
            q,
            k,
            v,
            do,  # token-major: tiles are split and transposed one at a time
            backward_lse(lse),
            delta_of(split_heads(out, K), split_heads(do, K)),
            q_side,
            k_side,
            grads,
            causal=causal,
            tile_q=tile_q,
            tile_k=tile_k,
        )
        return dq, dk, dv
