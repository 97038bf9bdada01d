"""Ring attention: exact attention with the sequence split over a ring of devices.

Each device keeps its query shard and passes its key/value shard to the next device at every
ring step, merging what the kernel computes against the shard it holds into its queries'
float32 (output, log-sum-exp) (:func:`ringrl.ops.kernels.merge`). After ``R`` steps every query
has seen every key. The backward pass (custom VJP) rotates K and V again, together with their
gradient accumulators dK and dV, which arrive back at their owner after the last step. The ring
owns the schedule; a kernel (:mod:`ringrl.ops.kernels`: ``xla`` or ``pallas``) computes one
query shard against one group of key/value blocks, forward or backward, and nothing else.

The shard moves on a group of key/value blocks at a time (:func:`pass_blocks`: as many as fit
in the tuning's ``pass_bytes``, 4 MiB on CPU): each group's ``ppermute`` to the next device is
issued before the kernel computes it (so XLA can overlap communication with compute), and what
arrives from the previous device is written into the group's slot once they are done. A device
thus holds one shard plus one group in flight, not two shards at long contexts (in the backward
pass the finished dK/dV blocks travel the same way, after their group is computed). A group's
keys, values and segment ids (or its dK and dV) travel packed in one buffer: one ``ppermute``,
one rendezvous of the devices, per pass. On CPU every ``ppermute`` makes all devices wait for
each other, so fewer, larger passes cost less (one block per pass: 9% slower at 16K tokens on 8
host devices).

Layouts say which global positions a device holds (``R`` devices, local length ``C``):

- ``contiguous``: device r holds ``[r*C, (r+1)*C)``. Causal work is imbalanced: device 0 skips
  all but one step, device R-1 computes at every step.
- ``zigzag``: the sequence is cut into ``2R`` chunks; device r holds chunks ``r`` and
  ``2R-1-r``. Under the causal mask every device computes the same number of tile pairs at every
  ring step (half of them off the diagonal step), the rest are skipped.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ringrl.backend import Tuning
from ringrl.ops.blockwise import _get, _put, effective_block
from ringrl.ops.kernels import Chunk, Kernel, Side, empty_chunk, get_kernel
from ringrl.ops.kernels.xla import filled
from ringrl.ops.layouts import LAYOUTS, layout_positions
from ringrl.ops.reference import segments_or_zeros


def pass_blocks(k_BCKD: Array, block: int, pass_bytes: int) -> int:
    """Key/value blocks sent on together: the most that fit in ``pass_bytes`` (at least one)
    and divide the shard. Each pass is a rendezvous of all devices on the ring, so fewer,
    larger passes synchronise them less often; the bound keeps what is in flight small next to
    the shard at long contexts."""
    B, C, K, D = k_BCKD.shape
    block_bytes = B * block * (2 * K * D * k_BCKD.dtype.itemsize + 4)
    cap = max(1, pass_bytes // block_bytes)
    n = C // block
    return max(d for d in range(1, min(cap, n) + 1) if n % d == 0)


class _Plan(NamedTuple):
    """What every ring step of one call shares."""

    R: int  # devices on the ring
    r: Array  # this device
    C: int  # local length
    block: int  # key/value block (the xla kernel's tiles divide it)
    group: int  # positions sent on per pass
    q_side: Side


def _plan(k, seg, axis_name, block_size, layout, tuning: Tuning) -> _Plan:
    R = jax.lax.axis_size(axis_name)
    r = jax.lax.axis_index(axis_name)
    C = k.shape[1]
    b = effective_block(C // 2 if layout == "zigzag" else C, block_size)
    group = b * pass_blocks(k, b, tuning.pass_bytes)
    return _Plan(R, r, C, b, group, Side(layout_positions(layout, r, R, C), seg))


def _groups(plan: _Plan, layout: str, step, kv):
    """The key side of group ``g`` of the shard held at ``step``: (positions, blocks)."""
    k_pos = layout_positions(layout, (plan.r - step) % plan.R, plan.R, plan.C)
    return lambda g: (_get(k_pos, g, plan.group, 0), tuple(_get(x, g, plan.group, 1) for x in kv))


def _ring_forward(q, k, v, segment_ids, axis_name, causal, block_size, layout, kernel: Kernel):
    """Runs the R ring steps (token-major shards); the key/value shards travel a group of
    blocks at a time. Returns (merged chunk, tile pairs computed per step ``[R]``, the
    kernel's prepared queries)."""
    plan = _plan(k, segment_ids, axis_name, block_size, layout, kernel.tuning)
    C = q.shape[1]
    late = kernel.tuning.late_buffers
    q_k = kernel.prepare(q, k.shape[2])  # once per call, not per ring step

    def ring_step(acc: Chunk, kv, step, pass_on):
        group_of = _groups(plan, layout, step, kv)

        def per_group(g, state):
            acc, kv, pairs = state
            k_pos, held = group_of(g)
            arrived = None if pass_on is None else pass_on(held)  # before compute
            k_g, v_g, seg_g = held
            k_side = Side(k_pos, seg_g)
            chunk = kernel.forward(
                q_k, k_g, v_g, plan.q_side, k_side, causal=causal, block=plan.block, acc=acc
            )  # = merge(acc, this group's chunk), in place where the kernel can
            acc = chunk
            if arrived is not None:
                kv = tuple(_put(x, y, g, plan.group, 1) for x, y in zip(kv, arrived, strict=True))
            return acc, kv, pairs + chunk.pairs

        return jax.lax.fori_loop(0, C // plan.group, per_group, (acc, kv, jnp.int32(0)))

    def step_fn(state, step):
        acc, kv, pairs = ring_step(*state, step, _pass_on(axis_name, plan.R))
        return (acc, kv), pairs

    acc = empty_chunk(q_k, late)
    kv = (k, v, segment_ids)
    (acc, kv), counts = jax.lax.scan(step_fn, (acc, kv), jnp.arange(plan.R - 1))
    acc, _, last = ring_step(acc, kv, plan.R - 1, None)  # the last shard goes nowhere
    return acc, jnp.concatenate([counts, last[None]]), q_k


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _ring(q, k, v, segment_ids, axis_name, causal, block_size, layout, kernel):
    return _ring_fwd(q, k, v, segment_ids, axis_name, causal, block_size, layout, kernel)[0]


def _ring_fwd(q, k, v, segment_ids, axis_name, causal, block_size, layout, kernel):
    acc, _, q_k = _ring_forward(q, k, v, segment_ids, axis_name, causal, block_size, layout, kernel)
    out = kernel.finish(acc)[0].astype(q.dtype)
    return out, (q_k, k, v, segment_ids, out, acc.lse)


def _ring_bwd(axis_name, causal, block_size, layout, kernel: Kernel, res, do):
    q_k, k, v, segment_ids, out, lse = res  # q_k: the kernel's prepared queries
    plan = _plan(k, segment_ids, axis_name, block_size, layout, kernel.tuning)
    pass_on = _pass_on(axis_name, plan.R)

    def ring_step(grads, kv, step, pass_kv):
        group_of = _groups(plan, layout, step, kv)

        def per_group(g, state):
            dq, dk, dv, kv = state
            k_pos, held = group_of(g)
            arrived = None if pass_kv is None else pass_kv(held)  # before compute
            k_g, v_g, seg_g = held
            dq, dk_g, dv_g = kernel.backward(
                q_k,
                k_g,
                v_g,
                out,
                lse,
                do,
                plan.q_side,
                Side(k_pos, seg_g),
                causal=causal,
                block=plan.block,
                grads=(dq, _get(dk, g, plan.group, 1), _get(dv, g, plan.group, 1)),
            )
            # dK/dV travel with their K/V blocks; after the last step they arrive at their owner
            dk_g, dv_g = pass_on((dk_g, dv_g))
            if arrived is not None:
                kv = tuple(_put(x, y, g, plan.group, 1) for x, y in zip(kv, arrived, strict=True))
            return dq, _put(dk, dk_g, g, plan.group, 1), _put(dv, dv_g, g, plan.group, 1), kv

        dq, dk, dv, kv = jax.lax.fori_loop(0, plan.C // plan.group, per_group, (*grads, kv))
        return (dq, dk, dv), kv

    def step_fn(state, step):
        return ring_step(*state, step, pass_on), None

    f32 = lambda x: filled(do, x.shape, 0.0, jnp.float32, kernel.tuning.late_buffers)  # noqa: E731
    state = ((f32(do), f32(k), f32(v)), (k, v, segment_ids))
    state, _ = jax.lax.scan(step_fn, state, jnp.arange(plan.R - 1))
    (dq, dk, dv), _ = ring_step(*state, plan.R - 1, None)
    return dq.astype(do.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


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
    kernel: str | Kernel = "auto",
) -> Array:
    """Exact attention over a sequence sharded along mesh axis ``axis_name``.

    Call inside ``shard_map`` on local shards: q ``[batch, C, heads, head_dim]``, k and v
    ``[batch, C, kv_heads, head_dim]``, segment_ids int ``[batch, C]`` or None, where the shard
    of device r holds the global positions given by ``layout`` (see the module docstring). Block
    pairs the causal mask hides entirely are skipped. ``kernel``: the per-chunk kernel
    (:func:`ringrl.ops.kernels.get_kernel`). Returns this device's output shard.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    seg = segments_or_zeros(q, segment_ids)
    return _ring(q, k, v, seg, axis_name, causal, block_size, layout, get_kernel(kernel))


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
    kernel: str | Kernel = "auto",
) -> Array:
    """Tiles this device's kernel computed at each ring step, ``[R]`` int32 (forward pass;
    the xla kernel counts (query tile, key tile) pairs, the pallas kernel block pairs).

    Same arguments as :func:`ring_attention`; counts come from the kernel itself.
    """
    seg = segments_or_zeros(q, segment_ids)
    args = (q, k, v, seg, axis_name, causal, block_size, layout, get_kernel(kernel))
    return _ring_forward(*args)[1]
