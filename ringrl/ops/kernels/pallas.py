"""The ``pallas`` kernel: fused flash attention in Pallas, forward and backward.

The schedule is FlashAttention-2's: the forward pass runs one program per (batch row, query
head, query block) and loops over key blocks with an online softmax held in registers
(float32 running max, denominator and output); the backward pass runs one program per (batch
row, kv head, key block) for dK and dV, which loops over the kv head's query heads and query
blocks, and one per (batch row, query head, query block) for dQ, which loops over key blocks;
both recompute ``p = exp(s - lse)`` from the global log-sum-exp. ``delta = rowsum(do * out)``
is one XLA reduction before them.

What this kernel adds to the usual flash-attention kernel, for the ring:

* separate query and key segment ids, and global positions for the causal mask (the zigzag
  layout's chunks are not contiguous, and a ring step pairs a query shard with another
  device's key shard);
* a negative segment id is padding: the rows attend nothing and get output exactly 0 and lse
  ``-inf`` (the mask is ``-inf``, not a large finite value, and the denominator is checked),
  and no NaN in the backward pass (:func:`~ringrl.ops.kernels.base.backward_lse`);
* grouped-query attention: the kv head of query head ``h`` is ``h // G``, and the dK/dV
  program sums over its ``G`` query heads itself (no ``G``-times larger dK/dV buffer);
* block pairs that cannot hold a visible pair (:func:`visible`: causally in the future, or
  segment ranges that do not meet) are skipped with ``lax.cond``, not computed and masked.

On a GPU it lowers through Triton; elsewhere (``Tuning.interpret``) it runs in Pallas'
interpret mode, which is how the test suite checks it against float64 on CPU. Block sizes must
divide the chunk length (the largest divisor under ``Tuning.block_q`` etc. is used); on a GPU
they, the head dim and the query heads per kv head should be powers of two (Triton's blocks).
The Triton lowering is checked on CPU (tests/test_kernels.py); nothing of this kernel has been
compiled by Triton, run or measured on a GPU yet.

Shape suffixes: B batch, Q/S query/key positions, H query heads, K kv heads, G = H // K,
D head dim; inside a program, q/s are a block's rows/keys.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl

from ringrl.backend import CPU, Tuning
from ringrl.ops.kernels.base import Chunk, Side, backward_lse, merge

F32 = jnp.float32


def _divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap``."""
    return max(t for t in range(1, min(n, cap) + 1) if n % t == 0)


def visible(q_pos, q_seg, k_pos, k_seg, causal: bool) -> Array:
    """Whether a (query block, key block) pair may hold a visible (query, key) pair.

    Reduces the last axis of each argument (positions ``[..., q]``/``[..., s]``, segment ids
    likewise; leading axes broadcast), so the same rule decides inside a program (1-D blocks:
    a scalar) and counts pairs outside (a table). Conservative: a pair it keeps may still be
    all masked (then the mask gives 0); a pair it drops has no visible (query, key) pair.
    """
    q_hi, k_hi = q_seg.max(-1), k_seg.max(-1)
    keep = (q_hi >= 0) & (k_hi >= 0) & (q_hi >= k_seg.min(-1)) & (k_hi >= q_seg.min(-1))
    if causal:
        keep &= q_pos.max(-1) >= k_pos.min(-1)
    return keep


def _mask(q_pos_q, q_seg_q, k_pos_s, k_seg_s, causal: bool) -> Array:
    """``[q, s]``: query i may attend key j (same non-negative segment, and j <= i if causal)."""
    mask_qs = (q_seg_q[:, None] == k_seg_s[None, :]) & (q_seg_q[:, None] >= 0)
    if causal:
        mask_qs &= q_pos_q[:, None] >= k_pos_s[None, :]
    return mask_qs


def _dot(a: Array, b: Array) -> Array:
    return jnp.dot(a, b, preferred_element_type=F32)


def _forward_kernel(qp_ref, qs_ref, kp_ref, ks_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, **kw):
    """One (batch row, query head, query block): loop over key blocks, online softmax."""
    causal, scale, block_k = kw["causal"], kw["scale"], kw["block_k"]
    q_qD, qp_q, qs_q = q_ref[...], qp_ref[...], qs_ref[...]
    rows, D = q_qD.shape

    def per_key_block(j, carry):
        span = pl.ds(j * block_k, block_k)
        kp_s, ks_s = kp_ref[span], ks_ref[span]

        def compute(carry):
            o_qD, m_q, l_q = carry
            s_qs = _dot(q_qD, k_ref[span, :].T) * scale
            s_qs = jnp.where(_mask(qp_q, qs_q, kp_s, ks_s, causal), s_qs, -jnp.inf)
            m_new = jnp.maximum(m_q, s_qs.max(axis=1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # a row that has seen nothing
            p_qs = jnp.exp(s_qs - m_safe[:, None])
            correction = jnp.exp(m_q - m_safe)
            v_sD = v_ref[span, :]
            o_qD = o_qD * correction[:, None] + _dot(p_qs.astype(v_sD.dtype), v_sD)
            return o_qD, m_new, l_q * correction + p_qs.sum(axis=1)

        keep = visible(qp_q, qs_q, kp_s, ks_s, causal)
        return jax.lax.cond(keep, compute, lambda c: c, carry)

    init = (jnp.zeros((rows, D), F32), jnp.full((rows,), -jnp.inf, F32), jnp.zeros((rows,), F32))
    o_qD, m_q, l_q = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, per_key_block, init)
    nonempty = l_q > 0
    l_safe = jnp.where(nonempty, l_q, 1.0)
    o_ref[...] = o_qD / l_safe[:, None]
    lse_ref[...] = jnp.where(nonempty, m_q + jnp.log(l_safe), -jnp.inf)


def _dkdv_kernel(
    qp_ref, qs_ref, kp_ref, ks_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref,
    **kw,
):  # fmt: skip
    """One (batch row, kv head, key block): loop over its query heads x query blocks."""
    causal, scale, block_q = kw["causal"], kw["scale"], kw["block_q"]
    k_sD, v_sD, kp_s, ks_s = k_ref[...], v_ref[...], kp_ref[...], ks_ref[...]
    num_q = q_ref.shape[0] // block_q
    groups = q_ref.shape[1]

    def per_query_block(t, carry):
        n = jnp.int32(num_q)  # lax's div/rem: jnp's floor division does not lower to Triton
        g, i = jax.lax.div(t, n), jax.lax.rem(t, n)
        span = pl.ds(i * block_q, block_q)
        qp_q, qs_q = qp_ref[span], qs_ref[span]

        def compute(carry):
            dk_sD, dv_sD = carry
            q_qD, do_qD = q_ref[span, g, :], do_ref[span, g, :]
            lse_q, delta_q = lse_ref[g, span], delta_ref[g, span]
            s_qs = _dot(q_qD, k_sD.T) * scale
            mask_qs = _mask(qp_q, qs_q, kp_s, ks_s, causal)
            p_qs = jnp.where(mask_qs, jnp.exp(s_qs - lse_q[:, None]), 0.0)
            dv_sD = dv_sD + _dot(p_qs.astype(do_qD.dtype).T, do_qD)
            ds_qs = p_qs * (_dot(do_qD, v_sD.T) - delta_q[:, None])
            dk_sD = dk_sD + _dot(ds_qs.astype(q_qD.dtype).T, q_qD) * scale
            return dk_sD, dv_sD

        keep = visible(qp_q, qs_q, kp_s, ks_s, causal)
        return jax.lax.cond(keep, compute, lambda c: c, carry)

    zeros = jnp.zeros(k_sD.shape, F32)
    dk_sD, dv_sD = jax.lax.fori_loop(0, groups * num_q, per_query_block, (zeros, zeros))
    dk_ref[...] = dk_sD
    dv_ref[...] = dv_sD


def _dq_kernel(
    qp_ref, qs_ref, kp_ref, ks_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dq_ref, **kw
):
    """One (batch row, query head, query block): loop over key blocks."""
    causal, scale, block_k = kw["causal"], kw["scale"], kw["block_k"]
    q_qD, do_qD, qp_q, qs_q = q_ref[...], do_ref[...], qp_ref[...], qs_ref[...]
    lse_q, delta_q = lse_ref[...], delta_ref[...]

    def per_key_block(j, dq_qD):
        span = pl.ds(j * block_k, block_k)
        kp_s, ks_s = kp_ref[span], ks_ref[span]

        def compute(dq_qD):
            k_sD, v_sD = k_ref[span, :], v_ref[span, :]
            s_qs = _dot(q_qD, k_sD.T) * scale
            mask_qs = _mask(qp_q, qs_q, kp_s, ks_s, causal)
            p_qs = jnp.where(mask_qs, jnp.exp(s_qs - lse_q[:, None]), 0.0)
            ds_qs = p_qs * (_dot(do_qD, v_sD.T) - delta_q[:, None])
            return dq_qD + _dot(ds_qs.astype(k_sD.dtype), k_sD) * scale

        keep = visible(qp_q, qs_q, kp_s, ks_s, causal)
        return jax.lax.cond(keep, compute, lambda d: d, dq_qD)

    zeros = jnp.zeros(q_qD.shape, F32)
    dq_ref[...] = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, per_key_block, zeros)


def _compiler_params(tuning: Tuning, head_dim: int):
    if tuning.interpret:
        return None
    from jax.experimental.pallas import triton as plgpu

    warps = tuning.num_warps or (4 if head_dim <= 64 else 8)
    return plgpu.CompilerParams(num_warps=warps, num_stages=tuning.num_stages)


def _call(kernel, grid, in_specs, out_specs, out_shape, tuning, head_dim, name):
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(tuning, head_dim),
        interpret=tuning.interpret,
        name=name,
    )


def _row_spec(size: int, index):
    """Positions ``[L]`` (one ``size`` block) and segment ids ``[B, L]`` (row b, one block)."""
    return (
        pl.BlockSpec((size,), lambda b, h, i: (index(b, h, i),)),
        pl.BlockSpec((None, size), lambda b, h, i: (b, index(b, h, i))),
    )


def flash_forward(
    q_BQHD, k_BSKD, v_BSKD, q_side: Side, k_side: Side, *, causal: bool, tuning: Tuning = CPU
) -> tuple[Array, Array]:
    """(out ``[B, Q, H, D]`` float32, lse ``[B, H, Q]`` float32) of one chunk pair."""
    B, Q, H, D = q_BQHD.shape
    S, K = k_BSKD.shape[1:3]
    G = H // K
    bq, bk = _divisor(Q, tuning.block_q), _divisor(S, tuning.block_k)
    kernel = functools.partial(_forward_kernel, causal=causal, scale=D**-0.5, block_k=bk)
    q_block = pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0))
    kv_whole = pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0))
    in_specs = [*_row_spec(bq, lambda b, h, i: i), *_row_spec(S, lambda b, h, i: 0)]
    in_specs += [q_block, kv_whole, kv_whole]
    out_specs = [q_block, pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))]
    out_shape = [jax.ShapeDtypeStruct((B, Q, H, D), F32), jax.ShapeDtypeStruct((B, H, Q), F32)]
    call = _call(kernel, (B, H, Q // bq), in_specs, out_specs, out_shape, tuning, D, "flash_fwd")
    out, lse = call(
        q_side.pos_L, q_side.seg_BL, k_side.pos_L, k_side.seg_BL, q_BQHD, k_BSKD, v_BSKD
    )
    return out, lse


def flash_backward(
    q_BQHD, k_BSKD, v_BSKD, out_BQHD, lse_BHQ, do_BQHD, q_side: Side, k_side: Side, *,
    causal: bool, tuning: Tuning = CPU,
) -> tuple[Array, Array, Array]:  # fmt: skip
    """float32 (dq ``[B, Q, H, D]``, dk, dv ``[B, S, K, D]``) of one chunk pair, from the
    global output, lse and output gradient."""
    B, Q, H, D = q_BQHD.shape
    S, K = k_BSKD.shape[1:3]
    G = H // K
    bq, bk = _divisor(Q, tuning.bwd_block_q), _divisor(S, tuning.bwd_block_k)
    lse = backward_lse(lse_BHQ)
    delta_BHQ = jnp.einsum("bqhd,bqhd->bhq", out_BQHD.astype(F32), do_BQHD.astype(F32))
    sides = (q_side.pos_L, q_side.seg_BL, k_side.pos_L, k_side.seg_BL)
    statics = dict(causal=causal, scale=D**-0.5)

    # dK, dV: grid (batch, kv head, key block); every query of the kv head's G query heads
    q_group = pl.BlockSpec((None, Q, G, D), lambda b, h, j: (b, 0, h, 0))
    stats_group = pl.BlockSpec((None, G, Q), lambda b, h, j: (b, h, 0))
    kv_block = pl.BlockSpec((None, bk, None, D), lambda b, h, j: (b, j, h, 0))
    in_specs = [*_row_spec(Q, lambda b, h, j: 0), *_row_spec(bk, lambda b, h, j: j)]
    in_specs += [q_group, q_group, stats_group, stats_group, kv_block, kv_block]
    dkdv = _call(
        functools.partial(_dkdv_kernel, block_q=bq, **statics),
        (B, K, S // bk),
        in_specs,
        [kv_block, kv_block],
        [jax.ShapeDtypeStruct((B, S, K, D), F32)] * 2,
        tuning,
        D,
        "flash_bwd_dkdv",
    )
    dk, dv = dkdv(*sides, q_BQHD, do_BQHD, lse, delta_BHQ, k_BSKD, v_BSKD)

    # dQ: grid (batch, query head, query block); every key of its kv head
    q_block = pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0))
    stats_block = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    kv_whole = pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0))
    in_specs = [*_row_spec(bq, lambda b, h, i: i), *_row_spec(S, lambda b, h, i: 0)]
    in_specs += [q_block, q_block, stats_block, stats_block, kv_whole, kv_whole]
    dq_call = _call(
        functools.partial(_dq_kernel, block_k=bk, **statics),
        (B, H, Q // bq),
        in_specs,
        q_block,
        jax.ShapeDtypeStruct((B, Q, H, D), F32),
        tuning,
        D,
        "flash_bwd_dq",
    )
    dq = dq_call(*sides, q_BQHD, do_BQHD, lse, delta_BHQ, k_BSKD, v_BSKD)
    return dq, dk, dv


def block_pairs(q_side: Side, k_side: Side, block_q: int, block_k: int, causal: bool) -> Array:
    """Block pairs the forward computes, summed over batch rows (per head), int32."""
    B, Q = q_side.seg_BL.shape
    S = k_side.seg_BL.shape[1]
    qp = q_side.pos_L.reshape(Q // block_q, 1, block_q)
    kp = k_side.pos_L.reshape(1, S // block_k, block_k)
    qs = q_side.seg_BL.reshape(B, Q // block_q, 1, block_q)
    ks = k_side.seg_BL.reshape(B, 1, S // block_k, block_k)
    return visible(qp, qs, kp, ks, causal).sum(dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class PallasKernel:
    """The fused Pallas kernel behind the boundary of :mod:`ringrl.ops.kernels.base`
    (``block`` is not used: the kernel's blocks come from its tuning)."""

    tuning: Tuning = CPU
    name: str = "pallas"

    def prepare(self, q_BQHD: Array, num_kv_heads: int) -> Array:
        """The queries as they are (token-major): the BlockSpecs pick each program's block."""
        return q_BQHD

    def forward(
        self, q, k, v, q_side: Side, k_side: Side, *, causal: bool, block: int, acc=None
    ) -> Chunk:
        t = self.tuning
        out, lse_BHQ = flash_forward(q, k, v, q_side, k_side, causal=causal, tuning=t)
        pairs = block_pairs(
            q_side, k_side, _divisor(q.shape[1], t.block_q), _divisor(k.shape[1], t.block_k), causal
        )
        chunk = Chunk(out, jnp.moveaxis(lse_BHQ, 1, 2), pairs)  # lse [B, Q, H]: out's rows
        return chunk if acc is None else merge(acc, chunk)._replace(pairs=pairs)

    def finish(self, chunk: Chunk) -> tuple[Array, Array]:
        return chunk.out, jnp.moveaxis(chunk.lse, 1, 2)

    def backward(
        self, q, k, v, out, lse, do, q_side, k_side, *, causal: bool, block: int, grads=None
    ) -> tuple[Array, Array, Array]:
        lse_BHQ = jnp.moveaxis(lse, 1, 2)  # the result layout [B, Q, H] -> the kernel's
        new = flash_backward(
            q, k, v, out, lse_BHQ, do, q_side, k_side, causal=causal, tuning=self.tuning
        )
        if grads is None:
            return new
        return tuple(g + n for g, n in zip(grads, new, strict=True))
