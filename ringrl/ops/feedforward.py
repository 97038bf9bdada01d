"""Blockwise feed-forward: position-wise functions applied one sequence block at a time."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ringrl.ops.blockwise import _get, _put
from ringrl.ops.remat import full_after


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
    dropout key. ``fn`` may close over traced values (a module's parameters): they are
    differentiated too. Rematerialised with a custom VJP: the forward keeps only the inputs, the
    backward recomputes ``fn`` block by block. Blocks are read and written in place, and every
    sequence-sized buffer is created only once its data exists (``ringrl.ops.remat``), so
    nothing but the inputs, the outputs and their cotangents is ever sequence-sized.
    """
    B, L = xs[0].shape[:2]
    local = L // num_shards
    b = min(block_size, local)
    if L % num_shards or local % b:
        raise ValueError(
            f"seq ({L}) must split into {num_shards} shards of whole blocks of {b} positions"
        )
    xs_BRL_ = tuple(x.reshape(B, num_shards, local, *x.shape[2:]) for x in xs)

    def block_fn(*args):
        *blocks, i = args
        return fn(*blocks, i) if with_index else fn(*blocks)

    example = [_block(x, jnp.int32(0), b) for x in xs_BRL_] + [jnp.int32(0)]
    fn_c, consts = jax.closure_convert(block_fn, *example)
    ys_BRL_ = _map_blocks(fn_c, b, local // b, xs_BRL_, tuple(consts))
    return jax.tree.map(lambda y: y.reshape(B, L, *y.shape[3:]), ys_BRL_)


def _block(x_BRL_: Array, i: Array, b: int) -> Array:
    return _get(x_BRL_, i, b, axis=2)


def _put_block(x_BRL_: Array, y_BRb_: Array, i: Array, b: int) -> Array:
    return _put(x_BRL_, y_BRb_.astype(x_BRL_.dtype), i, b, axis=2)


def _differentiable(x: Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _map_blocks(fn_c, b: int, n: int, xs: tuple, consts: tuple):
    return _map_blocks_fwd(fn_c, b, n, xs, consts)[0]


def _map_blocks_fwd(fn_c, b, n, xs, consts):
    B, R = xs[0].shape[:2]
    out_blocks = jax.eval_shape(fn_c, *(_block(x, jnp.int32(0), b) for x in xs), 0, *consts)
    ys = jax.tree.map(
        lambda s: full_after(xs[0], (B, R, n * b, *s.shape[3:]), 0.0, s.dtype), out_blocks
    )

    def body(i, ys):
        y = fn_c(*(_block(x, i, b) for x in xs), i, *consts)
        return jax.tree.map(lambda acc, y: _put_block(acc, y, i, b), ys, y)

    return jax.lax.fori_loop(0, n, body, ys), (xs, consts)


def _map_blocks_bwd(fn_c, b, n, res, g):
    xs, consts = res
    g0 = jax.tree.leaves(g)[0]
    wrt_c = [j for j, c in enumerate(consts) if _differentiable(c)]
    wrt_x = [j for j, x in enumerate(xs) if _differentiable(x)]
    dxs = tuple(full_after(g0, x.shape, 0.0, x.dtype) for x in xs)
    dcs = tuple(jnp.zeros_like(consts[j]) for j in wrt_c)

    def body(i, state):
        dxs, dcs = state
        blocks = [_block(x, i, b) for x in xs]

        def f(x_blocks, c_vals):
            bl, cs = list(blocks), list(consts)
            for j, v in zip(wrt_x, x_blocks, strict=True):
                bl[j] = v
            for j, v in zip(wrt_c, c_vals, strict=True):
                cs[j] = v
            return fn_c(*bl, i, *cs)

        _, vjp = jax.vjp(f, [blocks[j] for j in wrt_x], [consts[j] for j in wrt_c])
        dx_blocks, dc = vjp(jax.tree.map(lambda y: _block(y, i, b), g))
        dxs = list(dxs)
        for j, d in zip(wrt_x, dx_blocks, strict=True):
            dxs[j] = _put_block(dxs[j], d, i, b)
        return tuple(dxs), tuple(a + d for a, d in zip(dcs, dc, strict=True))

    dxs, dcs = jax.lax.fori_loop(0, n, body, (dxs, dcs))
    dconsts = [None] * len(consts)
    for j, d in zip(wrt_c, dcs, strict=True):
        dconsts[j] = d
    for j, c in enumerate(consts):
        if dconsts[j] is None:
            dconsts[j] = np.zeros(c.shape, jax.dtypes.float0)
    dxs = tuple(
        d if _differentiable(x) else np.zeros(x.shape, jax.dtypes.float0)
        for d, x in zip(dxs, xs, strict=True)
    )
    return dxs, tuple(dconsts)


_map_blocks.defvjp(_map_blocks_fwd, _map_blocks_bwd)
