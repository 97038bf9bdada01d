"""Rematerialisation and buffer placement that hold on XLA's CPU backend.

XLA's CPU pipeline drops optimization barriers before common-subexpression elimination and
schedules without regard to memory, which undoes two things the long-context code relies on:

* ``jax.checkpoint`` recomputation gets merged back into the forward pass (measured: 8 plain
  MLP layers need as much memory with it as without), so every activation stays alive;
* buffers that depend only on constants (zero-initialised accumulators) are created at the start
  of the program, so with rematerialised layers every layer's accumulators are alive at once.

Both are fixed with a data dependency XLA cannot fold: :func:`always_zero` is 0 for any input
(``x != x and x == x`` is false even for NaN) but is computed from the input.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array


def always_zero(x: Array, dtype: jnp.dtype = jnp.float32) -> Array:
    """A scalar 0 of ``dtype`` that XLA can only compute once ``x`` exists."""
    x0 = jax.lax.reshape(x, (x.size,))[0] if x.ndim else x
    return ((x0 != x0) & (x0 == x0)).astype(dtype)


def full_after(x: Array, shape: tuple[int, ...], fill: float, dtype: jnp.dtype) -> Array:
    """``jnp.full(shape, fill, dtype)``, created no earlier than ``x``."""
    return jnp.full(shape, fill, dtype) + always_zero(x, dtype)


def remat(fn: Callable[..., Array]) -> Callable[..., Array]:
    """``fn`` rematerialised: the forward keeps only its inputs, the backward recomputes it.

    Unlike ``jax.checkpoint`` this survives XLA's CPU backend: the backward recomputes ``fn``
    from inputs tied to the incoming cotangent (:func:`always_zero` added to each floating
    input), so the recomputation can neither be merged with the forward pass nor hoisted before
    the cotangent exists. Same values and gradients as ``fn`` (up to float rounding: XLA may
    fuse the recomputation differently).
    """

    @jax.custom_vjp
    def run(*args):
        return fn(*args)

    def fwd(*args):
        return fn(*args), args

    def bwd(args, g):
        zero = always_zero(jax.tree.leaves(g)[0])

        def tie(a):
            floating = isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)
            return a + zero.astype(a.dtype) if floating else a

        return jax.vjp(fn, *jax.tree.map(tie, args))[1](g)

    run.defvjp(fwd, bwd)
    return run
