"""Ring attention: exact attention with the sequence split over a ring of devices.

Each device keeps its query shard and passes its key/value shard to the next device at every ring
step, folding the shard it currently holds into its queries' online-softmax state (the blockwise
kernel of :mod:`ringrl.ops.blockwise`). After ``R`` steps every query has seen every key. The
backward pass (custom VJP) rotates K and V again, together with their gradient accumulators dK
and dV, which arrive back at their owner after the last step.

The shard moves on a group of key/value blocks at a time (:func:`pass_blocks`: as many as fit
in :data:`PASS_BYTES`, 4 MiB): each group's ``ppermute`` to the next device is issued before
its blocks are computed (so XLA can overlap communication with compute), and what arrives from
the previous device is written into the group's slot once they are done. A device thus holds
one shard plus one group in flight, not two shards at long contexts (in the backward pass the
finished dK/dV blocks travel the same way, after their group is computed). A group's keys,
values and segment ids (or its dK and dV) travel packed in one buffer: one ``ppermute``, one
rendezvous of the devices, per pass. On CPU every ``ppermute`` makes all devices wait for each
other, so fewer, larger passes cost less (one block per pass: 9% slower at 16K tokens on 8
host devices).

Layouts say which global positions a device holds (``R`` devices, local length ``C``):

- ``contiguous``: device r holds ``[r*C, (r+1)*C)``. Causal work is imbalanced: device 0 skips
  all but one step, device R-1 computes at every step.
- ``zigzag``: the sequence is cut into ``2R`` chunks; device r holds chunks ``r`` and
  ``2R-1-r``. Under the causal mask every device computes the same number of tile pairs at every
  ring step (half of them off the diagonal step), the rest are skipped.
- ``striped``: device r holds positions ``r, r+R, r+2R, ...``; balanced, but no block is ever
  entirely hidden, so nothing can be skipped.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array

from ringrl.ops.blockwise import (
    Shard,
    attend_shard,
    attend_shard_bwd,
    delta_of,
    effective_block,
    finalize,
    init_carry,
    kernel_inputs,
    key_tile,
    query_tile,
    softmax_scale,
    tokens_major,
)
from ringrl.ops.reference import segments_or_zeros, split_heads
from ringrl.ops.remat import full_after

LAYOUTS = ("contiguous", "zigzag", "striped")


def layout_positions(layout: str, index: Array | int, num_shards: int, local_len: int) -> Array:
    """Global positions ``[local_len]`` (int32) held by shard ``index`` under ``layout``."""
    i = jnp.asarray(index, jnp.int32)
    ar = jnp.arange(local_len, dtype=jnp.int32)
    if layout == "contiguous":
        return i * local_len + ar
    if layout == "striped":
        return ar * num_shards + i
    if layout == "zigzag":
        if local_len % 2:
            raise ValueError(f"zigzag layout needs an even local length, got {local_len}")
        c = local_len // 2
        ar = ar[:c]
        return jnp.concatenate([i * c + ar, (2 * num_shards - 1 - i) * c + ar])
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


PASS_BYTES = 4 << 20  # most bytes of keys, values and segment ids sent in one ppermute


def pass_blocks(k_BCKD: Array, block: int) -> int:
    """Key/value blocks sent on together: the most that fit in :data:`PASS_BYTES` (at least
    one) and divide the shard. Each pass is a rendezvous of all devices on the ring, so
    fewer, larger passes synchronise them less often; the bound keeps what is in flight
    small next to the shard at long contexts."""
    B, C, K, D = k_BCKD.shape
    block_bytes = B * block * (2 * K * D * k_BCKD.dtype.itemsize + 4)
    cap = max(1, PASS_BYTES // block_bytes)
    n = C // block
    return max(d for d in range(1, min(cap, n) + 1) if n % d == 0)


def _tiles(k_BCKD: Array, block: int, heads: int) -> tuple[int, int, int]:
    """The kernel's query tile, key tile and key tiles per pass (:func:`pass_blocks` blocks)."""
    tile_k = key_tile(block)
    return query_tile(block, heads), tile_k, pass_blocks(k_BCKD, block) * (block // tile_k)


def _ring_forward(q, k, v, segment_ids, axis_name, causal, block_size, layout):
    """Runs the R ring steps (q heads-major and pre-scaled, k/v token-major: see
    :mod:`blockwise`); the key/value shards travel token-major, a group of blocks at a time.

    Returns (carry, tile pairs computed per step ``[R]``).
    """
    R = jax.lax.axis_size(axis_name)
    r = jax.lax.axis_index(axis_name)
    C = q.shape[3]
    b = effective_block(C // 2 if layout == "zigzag" else C, block_size)
    q_side = Shard(layout_positions(layout, r, R, C), segment_ids)
    tile_q, tile_k, per_pass = _tiles(k, b, q.shape[1] * q.shape[2])  # q: [B, K, G, Q, D]
    attend = functools.partial(
        attend_shard, causal=causal, tile_q=tile_q, tile_k=tile_k, pass_tiles=per_pass
    )

    def compute(carry, kv, step, pass_on):
        k_cur, v_cur, seg_cur = kv
        k_side = Shard(layout_positions(layout, (r - step) % R, R, C), seg_cur)
        return attend(carry, q, k_cur, v_cur, q_side, k_side, pass_on=pass_on)

    def step_fn(state, step):
        carry, count, kv = compute(*state, step, _pass_on(axis_name, R))
        return (carry, kv), count

    kv = (k, v, segment_ids)
    (carry, kv), counts = jax.lax.scan(step_fn, (init_carry(q), kv), jnp.arange(R - 1))
    carry, last, _ = compute(carry, kv, R - 1, None)  # the last shard goes nowhere
    return carry, jnp.concatenate([counts, last[None]])


def _pass_on(axis_name: str, num_shards: int):
    """Blocks to the next device on the ring; returns those from the previous one.

    The blocks travel packed in one buffer: one ``ppermute`` (one rendezvous of all devices)
    per pass instead of one per array.
    """
    perm = [(i, (i + 1) % num_shards) for i in range(num_shards)]
    return lambda blocks: _unpack(jax.lax.ppermute(_pack(blocks), axis_name, perm), blocks)


def _word(blocks) -> jnp.dtype:
    """The widest unsigned type whose size divides every block's item size."""
    size = functools.reduce(math.gcd, (jnp.dtype(b.dtype).itemsize for b in blocks))
    return jnp.dtype(f"uint{8 * size}")


def _pack(blocks) -> Array:
    word = _word(blocks)
    return jnp.concatenate([jax.lax.bitcast_convert_type(b, word).ravel() for b in blocks])


def _unpack(packed: Array, like) -> tuple[Array, ...]:
    word, out, start = _word(like), [], 0
    for b in like:
        ratio = jnp.dtype(b.dtype).itemsize // word.itemsize
        n = b.size * ratio
        words = packed[start : start + n].reshape(b.shape + ((ratio,) if ratio > 1 else ()))
        out.append(jax.lax.bitcast_convert_type(words, b.dtype))
        start += n
    return tuple(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _ring(q, k, v, segment_ids, axis_name, causal, block_size, layout):
    return _ring_fwd(q, k, v, segment_ids, axis_name, causal, block_size, layout)[0]


def _ring_fwd(q, k, v, segment_ids, axis_name, causal, block_size, layout):
    q_h, k_h, v_h = kernel_inputs(q, k, v)
    carry, _ = _ring_forward(q_h, k_h, v_h, segment_ids, axis_name, causal, block_size, layout)
    out_h, lse = finalize(carry, q.dtype)
    out = tokens_major(out_h)
    return out, (q_h, k_h, v_h, segment_ids, out, lse)  # k, v, out: token-major


def _ring_bwd(axis_name, causal, block_size, layout, res, do):
    q_h, k, v, segment_ids, out, lse = res
    R = jax.lax.axis_size(axis_name)
    r = jax.lax.axis_index(axis_name)
    C = q_h.shape[3]
    b = effective_block(C // 2 if layout == "zigzag" else C, block_size)
    do_t = split_heads(do, k.shape[2])  # token-major: blocks are transposed one at a time
    delta = delta_of(split_heads(out, k.shape[2]), do_t)
    q_side = Shard(layout_positions(layout, r, R, C), segment_ids)
    pass_on = _pass_on(axis_name, R)
    tile_q, tile_k, per_pass = _tiles(k, b, do.shape[2])

    def accumulate(grads, kv, step, pass_kv):
        k_cur, v_cur, seg_cur = kv
        k_side = Shard(layout_positions(layout, (r - step) % R, R, C), seg_cur)
        return attend_shard_bwd(
            q_h,
            k_cur,
            v_cur,
            do_t,
            lse,
            delta,
            q_side,
            k_side,
            grads,
            causal=causal,
            tile_q=tile_q,
            tile_k=tile_k,
            pass_tiles=per_pass,
            pass_kv=pass_kv,
            pass_dkv=pass_on,  # dK/dV travel with their K/V block; after the last step they
        )  # arrive back at their owner

    def step_fn(state, step):
        return accumulate(*state, step, pass_on), None

    f32 = lambda x: full_after(do, x.shape, 0.0, jnp.promote_types(x.dtype, jnp.float32))  # noqa: E731
    state = ((f32(do_t), f32(k), f32(v)), (k, v, segment_ids))
    state, _ = jax.lax.scan(step_fn, state, jnp.arange(R - 1))
    (dq, dk, dv), _ = accumulate(*state, R - 1, None)
    dq = (dq * softmax_scale(q_h)).reshape(do.shape).astype(q_h.dtype)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    axis_name: str,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
    layout: str = "contiguous",
) -> Array:
    """Exact attention over a sequence sharded along mesh axis ``axis_name``.

    Call inside ``shard_map`` on local shards: q ``[batch, C, heads, head_dim]``, k and v
    ``[batch, C, kv_heads, head_dim]``, segment_ids int ``[batch, C]`` or None, where the shard
    of device r holds the global positions given by ``layout`` (see the module docstring). Block
    pairs the causal mask hides entirely are skipped. Returns this device's output shard.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    seg = segments_or_zeros(q, segment_ids)
    return _ring(q, k, v, seg, axis_name, causal, block_size, layout)


def ring_block_counts(
    q: Array,
    k: Array,
    v: Array,
    *,
    axis_name: str,
    causal: bool = True,
    segment_ids: Array | None = None,
    block_size: int = 512,
    layout: str = "contiguous",
) -> Array:
    """Tile pairs (query tile, key tile) this device computed at each ring step, ``[R]``
    int32 (forward pass).

    Same arguments as :func:`ring_attention`; counts come from the kernel itself.
    """
    seg = segments_or_zeros(q, segment_ids)
    return _ring_forward(*kernel_inputs(q, k, v), seg, axis_name, causal, block_size, layout)[1]
