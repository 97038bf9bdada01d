"""A key/value cache for the Transformer, optionally sharded over the mesh's ``"seq"`` axis.

The Transformer (:mod:`ringrl.model`) has no positional encoding of its own: a token's key and
value at every layer depend only on the tokens before it. Once computed they never change, so
acting at environment step ``t`` only needs the *new* tokens of that step; the keys and values of
all earlier tokens come from the cache.

:func:`decode_step` runs the model's blocks on ``N`` new tokens per row: it writes their keys and
values into the cache at the row's next free slots and attends them (causally) to every filled
slot. With a mesh whose ``"seq"`` axis has ``R > 1`` devices, the cache's slot axis is sharded in
``R`` contiguous parts. Inside ``shard_map`` each device writes the new keys/values that fall in
its part and attends the new queries to its local slots only; the partial softmax results are
combined exactly across devices -- global max by ``pmax``, then the sums and the weighted values
by ``psum`` (the ring-attention online softmax, one step, no key/value ever leaves its device).

It reuses the model's own sub-modules (``norm1``, ``attn.q/k/v/o``, ``norm2``, ``mlp``, final
``norm``), so a change of the model's structure breaks the decode-equals-recompute tests, not
silently the results. Dropout is off (evaluation). This module is model level: the agents' acting
policy built on it is :class:`ringrl.policies.IncrementalPolicy`.

Shape suffixes: B batch (environments), N new tokens, C cache slots (local part inside
``shard_map``), D width, H query heads, K kv heads, G = H // K, E head dim, Y layers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ringrl.model import Transformer, TransformerConfig
from ringrl.ops.reference import attention_mask

SEQ_AXIS = "seq"


class KVCache(NamedTuple):
    """Keys/values of every layer for ``B`` rows of ``C`` token slots.

    ``k``: one ``[B, K, C, E]`` array per layer, ``v``: one ``[B, K, E, C]`` array per layer
    (separate arrays, so that a jitted step with the cache donated updates them in place). Each
    layout keeps the contracted axis contiguous: head dim for the scores ``q . k``, slots for
    ``p . v`` (on CPU slot-major ``[B, C, K, E]`` values made ``p . v`` 5x slower than
    ``q . k``). ``seg``: int32 ``[B, C]`` segment id of each
    slot (negative: empty or padding, never attended); ``pos``: int32 ``[B]`` the next free slot
    of each row.
    """

    k: Array
    v: Array
    seg: Array
    pos: Array


def seq_shards(mesh: Mesh | None) -> int:
    """Devices the cache is split over (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[SEQ_AXIS])


def cache_shardings(mesh: Mesh):
    """``cache -> NamedShardings`` of a cache whose slot axis is split over ``"seq"``."""
    k = NamedSharding(mesh, P(None, None, SEQ_AXIS, None))
    v = NamedSharding(mesh, P(None, None, None, SEQ_AXIS))
    seg = NamedSharding(mesh, P(None, SEQ_AXIS))
    return lambda cache: KVCache(
        tuple(k for _ in cache.k), tuple(v for _ in cache.v), seg, NamedSharding(mesh, P())
    )


def init_cache(
    cfg: TransformerConfig,
    batch: int,
    capacity: int,
    *,
    mesh: Mesh | None = None,
    dtype: jnp.dtype | str = jnp.float32,
) -> KVCache:
    """An empty cache of ``capacity`` slots per row (rounded up to a multiple of the shards)."""
    R = seq_shards(mesh)
    C = -(-capacity // R) * R
    E = cfg.d_model // cfg.num_heads
    cache = KVCache(
        tuple(jnp.zeros((batch, cfg.num_kv_heads, C, E), dtype) for _ in range(cfg.num_layers)),
        tuple(jnp.zeros((batch, cfg.num_kv_heads, E, C), dtype) for _ in range(cfg.num_layers)),
        jnp.full((batch, C), -1, jnp.int32),
        jnp.zeros((batch,), jnp.int32),
    )
    if R > 1:
        cache = jax.device_put(cache, cache_shardings(mesh)(cache))
    return cache


def reset_rows(cache: KVCache, rows_B: Array) -> KVCache:
    """Empty the rows where ``rows_B`` is true (slots marked free, position 0)."""
    seg = jnp.where(rows_B[:, None], -1, cache.seg)
    return cache._replace(seg=seg, pos=jnp.where(rows_B, 0, cache.pos))


# ---- attention of new tokens against the cache ------------------------------------------------


def _write(
    cache: Array, new_BN: Array, slots_BN: Array, offset: Array | int, axis: int = 1
) -> Array:
    """Write ``new`` at global slots ``slots`` (slot ``axis``) of a (local part of a) cache.

    Slots outside this part are dropped. ``new_BN`` is ``[B, N, ...]`` whatever ``axis`` is.
    """
    C = cache.shape[axis]
    local_BN = slots_BN - offset
    local_BN = jnp.where((local_BN >= 0) & (local_BN < C), local_BN, C)  # C: out of bounds
    rows_B1 = jnp.arange(cache.shape[0])[:, None]
    index = (rows_B1, *([slice(None)] * (axis - 1)), local_BN)
    return cache.at[index].set(new_BN.astype(cache.dtype), mode="drop")


def _attend_local(
    q_BNHE: Array,
    k_new_BNKE: Array,
    v_new_BNKE: Array,
    seg_new_BN: Array,
    k_BKCE: Array,
    v_BKEC: Array,
    seg_BC: Array,
    pos_B: Array,
    axis_name: str | None,
) -> tuple[Array, Array, Array, Array]:
    """Write the new keys/values and attend; combine across ``axis_name`` if given.

    Returns ``(out_BNHE, k_BKCE, v_BKEC, seg_BC)`` with the (local part of the) updated cache.
    """
    B, N, H, E = q_BNHE.shape
    K, C = k_BKCE.shape[1], k_BKCE.shape[2]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * C
    slots_BN = pos_B[:, None] + jnp.arange(N)[None]
    k_BKCE = _write(k_BKCE, k_new_BNKE, slots_BN, offset, axis=2)
    v_BKEC = _write(v_BKEC, v_new_BNKE, slots_BN, offset, axis=3)
    seg_BC = _write(seg_BC, seg_new_BN, slots_BN, offset)

    slot_C = offset + jnp.arange(C)
    mask_BNC = attention_mask(slots_BN, slot_C, seg_new_BN, seg_BC, causal=True)
    q_BNKGE = q_BNHE.astype(jnp.float32).reshape(B, N, K, H // K, E) * (E**-0.5)
    s_BKGNC = jnp.einsum("bnkge,bkce->bkgnc", q_BNKGE, k_BKCE.astype(jnp.float32))
    s_BKGNC = jnp.where(mask_BNC[:, None, None], s_BKGNC, -jnp.inf)
    m_BKGN = s_BKGNC.max(-1)
    if axis_name is not None:
        m_BKGN = jax.lax.pmax(m_BKGN, axis_name)
    m_BKGN = jnp.where(jnp.isfinite(m_BKGN), m_BKGN, 0.0)  # a row with nothing to attend
    p_BKGNC = jnp.exp(s_BKGNC - m_BKGN[..., None])  # exp(-inf) = 0 on masked slots
    l_BKGN = p_BKGNC.sum(-1)
    o_BNKGE = jnp.einsum("bkgnc,bkec->bnkge", p_BKGNC, v_BKEC.astype(jnp.float32))
    if axis_name is not None:
        l_BKGN = jax.lax.psum(l_BKGN, axis_name)
        o_BNKGE = jax.lax.psum(o_BNKGE, axis_name)
    l_BNKG = jnp.transpose(l_BKGN, (0, 3, 1, 2))
    out_BNKGE = jnp.where(
        l_BNKG[..., None] > 0, o_BNKGE / jnp.where(l_BNKG > 0, l_BNKG, 1.0)[..., None], 0.0
    )
    return out_BNKGE.reshape(B, N, H, E).astype(q_BNHE.dtype), k_BKCE, v_BKEC, seg_BC


def cached_attention(
    q_BNHE: Array,
    k_new_BNKE: Array,
    v_new_BNKE: Array,
    seg_new_BN: Array,
    k_BKCE: Array,
    v_BKEC: Array,
    seg_BC: Array,
    pos_B: Array,
    mesh: Mesh | None = None,
) -> tuple[Array, Array, Array, Array]:
    """Attention of ``N`` new tokens to the cache (after writing them into it).

    Query ``i`` of row ``b`` sits at slot ``pos[b] + i`` and attends slot ``j`` iff ``j`` is not
    after it and both segment ids are equal and non-negative. With ``mesh`` (``"seq"`` > 1) the
    cache arrays are sharded over their slot axis and combined exactly (pmax / psum).
    """
    args = (q_BNHE, k_new_BNKE, v_new_BNKE, seg_new_BN, k_BKCE, v_BKEC, seg_BC, pos_B)
    if seq_shards(mesh) == 1:
        return _attend_local(*args, axis_name=None)
    k, v = P(None, None, SEQ_AXIS, None), P(None, None, None, SEQ_AXIS)
    seg, rep = P(None, SEQ_AXIS), P()
    return jax.shard_map(
        functools.partial(_attend_local, axis_name=SEQ_AXIS),
        mesh=mesh,
        in_specs=(rep, rep, rep, rep, k, v, seg, rep),
        out_specs=(rep, k, v, seg),
        check_vma=False,
    )(*args)


# ---- the model, one chunk of new tokens at a time ---------------------------------------------


def decode_step(
    model: Transformer,
    x_BND: Array,
    seg_BN: Array,
    cache: KVCache,
    *,
    mesh: Mesh | None = None,
    num_new_B: Array | None = None,
) -> tuple[Array, KVCache]:
    """Hidden states ``[B, N, D]`` of ``N`` new embedded tokens per row, and the updated cache.

    Equal (to float rounding) to the last ``N`` outputs of ``model`` on the row's whole token
    sequence. ``seg_BN``: the new tokens' segment ids (negative: padding, never attended, output
    meaningless). ``num_new_B``: how far each row's position advances (default ``N``); tokens
    past it must be padding -- they are written but later overwritten (a row that does not
    advance passes 0 and all-negative ``seg_BN``).
    """
    cfg = model.cfg
    B, N, _ = x_BND.shape
    H, K = cfg.num_heads, cfg.num_kv_heads
    E = cfg.d_model // H
    seg_BN = seg_BN.astype(jnp.int32)
    x_BND = x_BND.astype(jnp.float32)
    ks, vs, seg_BC = [], [], cache.seg
    for y, block in enumerate(model.blocks):
        h_BND = block.norm1(x_BND).astype(cfg.dtype)
        q_BNHE = block.attn.q(h_BND).reshape(B, N, H, E)
        k_BNKE = block.attn.k(h_BND).reshape(B, N, K, E)
        v_BNKE = block.attn.v(h_BND).reshape(B, N, K, E)
        out_BNHE, k_y, v_y, seg_new = cached_attention(
            q_BNHE, k_BNKE, v_BNKE, seg_BN, cache.k[y], cache.v[y], cache.seg, cache.pos, mesh
        )
        ks.append(k_y)
        vs.append(v_y)
        seg_BC = seg_new
        x_BND = x_BND + block.attn.o(out_BNHE.reshape(B, N, H * E)).astype(x_BND.dtype)
        x_BND = x_BND + block.mlp(block.norm2(x_BND).astype(cfg.dtype)).astype(x_BND.dtype)
    num_new_B = jnp.full((B,), N, jnp.int32) if num_new_B is None else num_new_B
    pos_B = cache.pos + num_new_B.astype(jnp.int32)
    new_cache = KVCache(tuple(ks), tuple(vs), seg_BC, pos_B)
    return model.norm(x_BND), new_cache
