"""Plain softmax attention: the specification every other attention path is tested against.

Shapes use suffixes: B batch, Q query positions, S key positions, H query heads, K key/value
heads, G = H // K query heads per key/value head (grouped-query attention), D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def stats_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Softmax statistics are float32 at least (float64 inputs keep float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def attention_mask(
    q_pos_Q: Array,
    k_pos_S: Array,
    q_seg_BQ: Array,
    k_seg_BS: Array,
    *,
    causal: bool,
) -> Array:
    """``mask_BQS[b, i, j]``: query i may attend key j.

    Same non-negative segment id, and ``k_pos <= q_pos`` when causal. A negative segment id is
    padding: it attends nothing and nothing attends it. ``q_pos`` is ``[Q]``, or ``[B, Q]`` when
    rows sit at different positions (incremental decoding).
    """
    mask_BQS = (q_seg_BQ[:, :, None] == k_seg_BS[:, None, :]) & (q_seg_BQ[:, :, None] >= 0)
    if causal:
        mask_BQS &= q_pos_Q[..., :, None] >= k_pos_S  # [Q, S] or [B, Q, S]: broadcasts
    return mask_BQS


def split_heads(q_BQHD: Array, num_kv_heads: int) -> Array:
    """``[B, Q, H, D] -> [B, Q, K, G, D]``: group query heads by the key/value head they share."""
    B, Q, H, D = q_BQHD.shape
    if H % num_kv_heads:
        raise ValueError(f"heads ({H}) must be a multiple of kv_heads ({num_kv_heads})")
    return q_BQHD.reshape(B, Q, num_kv_heads, H // num_kv_heads, D)


def segments_or_zeros(q: Array, segment_ids: Array | None) -> Array:
    """int32 ``[batch, seq]`` segment ids; None means one segment (all zeros)."""
    if segment_ids is None:
        return jnp.zeros(q.shape[:2], jnp.int32)
    return segment_ids.astype(jnp.int32)


def check_shapes(q: Array, k: Array, v: Array, segment_ids: Array | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be [batch, seq, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"heads ({q.shape[2]}) must be a multiple of kv_heads ({k.shape[2]})")
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(
            f"segment_ids must be [batch, seq] = {q.shape[:2]}; got {segment_ids.shape}"
        )


def reference_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    segment_ids: Array | None = None,
) -> Array:
    """Softmax attention over the whole sequence at once (memory grows with ``seq**2``).

    Args:
      q: ``[batch, seq, heads, head_dim]``.
      k, v: ``[batch, seq, kv_heads, head_dim]``, ``heads % kv_heads == 0``.
      causal: query i sees keys j <= i only.
      segment_ids: int ``[batch, seq]`` or None; see :func:`attention_mask`.

    Returns:
      ``[batch, seq, heads, head_dim]`` in q's dtype; rows of padding tokens are exactly 0.
    """
    check_shapes(q, k, v, segment_ids)
    B, L, H, D = q.shape
    segment_ids = segments_or_zeros(q, segment_ids)
    f = stats_dtype(q.dtype)
    pos_L = jnp.arange(L)
    mask_BQS = attention_mask(pos_L, pos_L, segment_ids, segment_ids, causal=causal)
    q_BQKGD = split_heads(q, k.shape[2])
    scores_BKGQS = jnp.einsum(
        "bqkgd,bskd->bkgqs", q_BQKGD, k, preferred_element_type=f
    ) * jnp.asarray(D**-0.5, f)
    scores_BKGQS = jnp.where(mask_BQS[:, None, None], scores_BKGQS, -jnp.inf)
    max_BKGQ = scores_BKGQS.max(-1)
    max_BKGQ = jax.lax.stop_gradient(jnp.where(jnp.isfinite(max_BKGQ), max_BKGQ, 0.0))
    p_BKGQS = jnp.exp(scores_BKGQS - max_BKGQ[..., None])
    denom_BKGQ = p_BKGQS.sum(-1)
    out_BQKGD = jnp.einsum("bkgqs,bskd->bqkgd", p_BKGQS, v.astype(f))
    denom_BQKG1 = jnp.moveaxis(denom_BKGQ, -1, 1)[..., None]
    out_BQKGD = out_BQKGD / jnp.where(denom_BQKG1 > 0, denom_BQKG1, 1.0)
    return out_BQKGD.reshape(B, L, H, D).astype(q.dtype)
