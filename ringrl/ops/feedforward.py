"""Blockwise feed-forward: position-wise functions applied one sequence block at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array


def blockwise_feedforward(
    fn: Callable[[Array], Any],
    x: Array,
    *,
    block_size: int,
    num_shards: int = 1,
) -> Any:
    """Apply position-wise ``fn`` to ``x[batch, seq, d]`` block by block, rematerialised.

    The hidden activation of ``fn`` (e.g. the ``4*d`` MLP layer) only ever exists for one block
    of ``block_size`` positions per shard; the backward pass recomputes it block by block.

    ``fn`` may return a pytree of position-wise arrays (e.g. a layer's q, k and v); each comes
    back as ``[batch, seq, ...]``.

    ``num_shards``: when ``seq`` is sharded over that many devices, each device walks its own
    blocks (the scan runs over the within-shard block index), so no gather is ever needed.
    """
    return blockwise_map(fn, x, block_size=block_size, num_shards=num_shards)


def blockwise_map(
    fn: Callable[..., Any],
    *xs: Array,
    block_size: int,
    num_shards: int = 1,
    with_index: bool = False,
) -> Any:
    """``fn(*x_blocks)`` over sequence blocks of several ``[batch, seq, ...]`` arrays.

    Each block argument has shape ``[batch, num_shards, block, ...]``; with ``with_index`` the
    block's index (0 .. blocks per shard - 1, an int32 scalar) comes last, e.g. to fold into a
    dropout key. Rematerialised: the backward pass recomputes ``fn`` block by block, so only the
    inputs and the outputs exist for the whole sequence.
    """
    B, L = xs[0].shape[:2]
    local = L // num_shards
    b = min(block_size, local)
    if L % num_shards or local % b:
        raise ValueError(
            f"seq ({L}) must split into {num_shards} shards of whole blocks of {b} positions"
        )
    n = local // b

    def to_blocks(x_BL_: Array) -> Array:  # [B, L, ...] -> [N, B, R, b, ...]
        return jnp.moveaxis(x_BL_.reshape(B, num_shards, n, b, *x_BL_.shape[2:]), 2, 0)

    def from_blocks(y_NBRb_: Array) -> Array:
        return jnp.moveaxis(y_NBRb_, 0, 2).reshape(B, L, *y_NBRb_.shape[4:])

    step = jax.checkpoint(lambda args: fn(*args))
    args = tuple(to_blocks(x) for x in xs) + (
        (jnp.arange(n, dtype=jnp.int32),) if with_index else ()
    )
    return jax.tree.map(from_blocks, jax.lax.map(step, args))
