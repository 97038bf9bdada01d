"""Sequence layouts on the ring and the sequence lengths the model accepts: one owner.

Which global positions each of ``R`` devices holds (``contiguous``: device r holds
``[r*C, (r+1)*C)``; ``zigzag``: the sequence is cut into ``2R`` chunks, device r holds chunks
``r`` and ``2R-1-r``, which balances causal work), how a shard is moved between layouts inside
``shard_map``, and the length rule that follows from them and from the block size: attention
and the blockwise feed-forward tile every shard (every zigzag chunk) into blocks of
``min(block_size, length)``, so the length must split evenly at each level.

Everything that pads a sequence (the training sampler, the recompute policy, benchmarks) asks
:func:`padded_steps` / :func:`valid_length`; the kernels and the ring raise on anything else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

LAYOUTS = ("contiguous", "zigzag")


def layout_positions(layout: str, index: Array | int, num_shards: int, local_len: int) -> Array:
    """Global positions ``[local_len]`` (int32) held by shard ``index`` under ``layout``."""
    i = jnp.asarray(index, jnp.int32)
    ar = jnp.arange(local_len, dtype=jnp.int32)
    if layout == "contiguous":
        return i * local_len + ar
    if layout == "zigzag":
        if local_len % 2:
            raise ValueError(f"zigzag layout needs an even local length, got {local_len}")
        c = local_len // 2
        ar = ar[:c]
        return jnp.concatenate([i * c + ar, (2 * num_shards - 1 - i) * c + ar])
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def ring_layout(causal: bool) -> str:
    """Causal attention is load-balanced with the zigzag layout; otherwise order is irrelevant."""
    return "zigzag" if causal else "contiguous"


def _zigzag_moves(R: int, parity: int) -> list[tuple[int, int]]:
    """Where each device's natural chunk ``2r + parity`` goes under the zigzag layout."""
    dest = lambda j: j if j < R else 2 * R - 1 - j  # noqa: E731
    return [(r, dest(2 * r + parity)) for r in range(R)]


def to_zigzag(x: Array, axis_name: str) -> Array:
    """Inside ``shard_map``: natural contiguous shards -> zigzag shards (two ``ppermute``s).

    Device r holds natural chunks ``2r, 2r+1`` (of ``2R``) and must end with chunks ``r`` and
    ``2R-1-r``. Exactly one of those is even, so every device receives one even and one odd
    chunk: no gather of the whole sequence ever happens.
    """
    R = jax.lax.axis_size(axis_name)
    if R == 1:
        return x
    even, odd = jnp.split(x, 2, axis=1)
    even = jax.lax.ppermute(even, axis_name, _zigzag_moves(R, 0))
    odd = jax.lax.ppermute(odd, axis_name, _zigzag_moves(R, 1))
    d_is_even = jax.lax.axis_index(axis_name) % 2 == 0
    first = jnp.where(d_is_even, even, odd)
    second = jnp.where(d_is_even, odd, even)
    return jnp.concatenate([first, second], axis=1)


def from_zigzag(x: Array, axis_name: str) -> Array:
    """Inverse of :func:`to_zigzag`."""
    R = jax.lax.axis_size(axis_name)
    if R == 1:
        return x
    first, second = jnp.split(x, 2, axis=1)
    d_is_even = jax.lax.axis_index(axis_name) % 2 == 0
    even = jnp.where(d_is_even, first, second)
    odd = jnp.where(d_is_even, second, first)
    back = lambda moves: [(dst, src) for src, dst in moves]  # noqa: E731
    even = jax.lax.ppermute(even, axis_name, back(_zigzag_moves(R, 0)))
    odd = jax.lax.ppermute(odd, axis_name, back(_zigzag_moves(R, 1)))
    return jnp.concatenate([even, odd], axis=1)


def check_ring_length(L: int, R: int, layout: str) -> None:
    """Raise unless ``L`` tokens split into the chunks ``layout`` needs on ``R`` devices."""
    if layout not in LAYOUTS:
        raise ValueError(f"attention() lays sequences out contiguous or zigzag, not {layout!r}")
    chunks = 2 * R if layout == "zigzag" else R
    if L % chunks:
        raise ValueError(
            f"ring attention over {R} devices with the {layout} layout needs seq ({L}) to be a "
            f"multiple of {chunks}; pad with negative segment ids"
        )


def valid_length(L: int, block_size: int, seq_shards: int = 1, ring: bool = False) -> bool:
    """Whether attention and the blockwise feed-forward accept ``L`` tokens per sequence.

    One device (or attention that is not the ring): ``L`` splits into blocks of
    ``min(block_size, L)``. The ring (zigzag layout, ``seq_shards`` devices): ``L`` splits into
    ``2 * seq_shards`` chunks, and both a chunk (attention's blocks) and a device's shard (the
    feed-forward's blocks) split into their blocks.
    """
    if L < 1:
        return False
    if ring:
        if L % (2 * seq_shards):
            return False
        chunk, local = L // (2 * seq_shards), L // seq_shards
        return chunk % min(block_size, chunk) == 0 and local % min(block_size, local) == 0
    return L % min(block_size, L) == 0


def padded_steps(
    steps: int, tokens_per_step: int, block_size: int, seq_shards: int = 1, ring: bool = False
) -> int:
    """The smallest ``T >= steps`` whose ``T * tokens_per_step`` tokens the model accepts.

    ``T`` is also a multiple of ``seq_shards``, so that per-step arrays shard over ``"seq"``.
    """
    T = max(steps, 1)
    while not (
        T % seq_shards == 0 and valid_length(T * tokens_per_step, block_size, seq_shards, ring)
    ):
        T += 1
    return T
