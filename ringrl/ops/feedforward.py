"""Blockwise feed-forward: a position-wise function applied one sequence block at a time."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array


def blockwise_feedforward(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    block_size: int,
    num_shards: int = 1,
) -> Array:
    """Apply position-wise ``fn`` to ``x[batch, seq, d]`` block by block, rematerialised.

    The hidden activation of ``fn`` (e.g. the ``4*d`` MLP layer) only ever exists for one block
    of ``block_size`` positions per shard; the backward pass recomputes it block by block.

    ``num_shards``: when ``seq`` is sharded over that many devices, each device walks its own
    blocks (the scan runs over the within-shard block index), so no gather is ever needed.
    """
    B, L, D = x.shape
    local = L // num_shards
    b = min(block_size, local)
    if L % num_shards or local % b:
        raise ValueError(
            f"seq ({L}) must split into {num_shards} shards of whole blocks of {b} positions"
        )
    n = local // b
    x_BRNbD = x.reshape(B, num_shards, n, b, D)
    xs_NBRbD = jnp.moveaxis(x_BRNbD, 2, 0)
    step = jax.checkpoint(fn)
    ys_NBRbE = jax.lax.map(step, xs_NBRbD)
    y_BRNbE = jnp.moveaxis(ys_NBRbE, 0, 2)
    return y_BRNbE.reshape(B, L, ys_NBRbE.shape[-1])
