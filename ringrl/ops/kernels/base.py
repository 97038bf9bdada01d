"""The kernel boundary: one query chunk against one key/value chunk.

Blockwise and ring attention call only this interface; they own the merge of chunk results
(:func:`merge`) and the schedule (which chunk meets which, what travels around the ring). A
kernel owns everything inside a chunk pair: tiling, skipping the tile pairs the mask hides,
and the platform tuning it was built with (:class:`ringrl.backend.Tuning`).

A kernel is a frozen dataclass (hashable: it is a static argument of the custom VJPs) with

``prepare(q_BQHD, num_kv_heads) -> q``
    the query shard in the kernel's own layout, made once per attention call and passed to
    every ``forward``/``backward`` of that call (the XLA kernel: pre-scaled and heads-major,
    so no ring step copies the queries; the Pallas kernel: unchanged). Below, ``q`` is that.

``forward(q, k_BSKD, v_BSKD, q_side, k_side, *, causal, block, acc=None) -> Chunk``
    the chunk pair's softmax attention: ``Chunk.out`` float32, normalised (rows that attend
    nothing: 0), ``Chunk.lse`` the float32 natural-log log-sum-exp of each row's scores (scale
    ``head_dim ** -0.5``; rows that attend nothing: ``-inf``), ``Chunk.pairs`` the tiles the
    kernel computed in this call (int32, for load-balance statistics). Both are in the kernel's
    result layout: ``out`` has the prepared queries' shape (head dim last), ``lse`` the same
    without the head dim, so :func:`merge` is elementwise whatever the kernel; :meth:`finish`
    gives ``(out [B, Q, H, D], lse [B, H, Q])``. ``acc``: an earlier result for the same
    queries; the kernel then returns ``merge(acc, this chunk)``, computed in place where it can
    (the XLA kernel continues its online softmax from ``acc``, so a ring step needs no second
    output-sized buffer).

``backward(q, k, v, out_BQHD, lse, do_BQHD, q_side, k_side, *, causal, block, grads=None)
-> (dq_BQHD, dk_BSKD, dv_BSKD)``
    this chunk pair's float32 contributions to the gradients, given the *global* output (in
    natural layout, any dtype), lse (result layout, ``-inf`` for rows that attend nothing) and
    output gradient. ``grads``: float32 accumulators the contributions are added to (None:
    zeros); the XLA kernel adds in place, so a ring step needs no second gradient-sized buffer.

``finish(chunk) -> (out_BQHD, lse_BHQ)``: a result in natural layout.

``block`` is the caller's key/value block (``block_size``), which the XLA kernel's tiles
divide; a kernel may ignore it. Token i of the query chunk may attend token j of the key chunk
iff ``q_side.seg_BL[:, i] == k_side.seg_BL[:, j] >= 0`` and, when causal,
``k_side.pos_L[j] <= q_side.pos_L[i]`` (global positions: the zigzag layout's chunk kinds --
causal on the diagonal, entirely visible, entirely hidden -- follow from them).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax.numpy as jnp
from jax import Array

from ringrl.backend import Tuning
from ringrl.ops.remat import full_after


class Side(NamedTuple):
    """One chunk's query or key side: global positions and segment ids."""

    pos_L: Array  # int32 [L] global positions (the causal mask and skipping)
    seg_BL: Array  # int32 [B, L] segment ids, negative = padding


class Chunk(NamedTuple):
    """A kernel's forward result (kernel's result layout: see the module docstring)."""

    out: Array  # float32, normalised over the keys seen; 0 where a row attends nothing
    lse: Array  # float32 natural-log log-sum-exp (out's shape without the head dim); -inf
    pairs: Array  # int32 scalar: tiles computed (by this call)


class Kernel(Protocol):
    name: str
    tuning: Tuning

    def prepare(self, q_BQHD: Array, num_kv_heads: int) -> Array: ...

    def forward(
        self,
        q: Array,
        k: Array,
        v: Array,
        q_side: Side,
        k_side: Side,
        *,
        causal: bool,
        block: int,
        acc: Chunk | None = None,
    ) -> Chunk: ...

    def finish(self, chunk: Chunk) -> tuple[Array, Array]: ...

    def backward(
        self,
        q: Array,
        k: Array,
        v: Array,
        out: Array,
        lse: Array,
        do: Array,
        q_side: Side,
        k_side: Side,
        *,
        causal: bool,
        block: int,
        grads: tuple[Array, Array, Array] | None = None,
    ) -> tuple[Array, Array, Array]: ...


def empty_chunk(q: Array, late: bool = True) -> Chunk:
    """The merge's identity for prepared queries ``q``: no keys seen (output 0, lse -inf).
    ``late``: created no earlier than ``q`` (:func:`ringrl.ops.remat.full_after`)."""
    fill = full_after if late else (lambda _, shape, v, dtype: jnp.full(shape, v, dtype))
    out = fill(q, q.shape, 0.0, jnp.float32)
    return Chunk(out, fill(q, q.shape[:-1], -jnp.inf, jnp.float32), jnp.int32(0))


def merge(a: Chunk, b: Chunk) -> Chunk:
    """Two results of the same queries -> the result over both chunks' keys (float32).

    ``lse = logaddexp(lse_a, lse_b)``; each output weighs ``exp(lse_x - lse)``. Rows that no
    chunk has given a key stay (0, -inf): the weights are taken against a finite stand-in, so
    ``-inf - -inf`` never happens.
    """
    lse = jnp.logaddexp(a.lse, b.lse)
    finite = jnp.where(jnp.isfinite(lse), lse, 0.0)
    weight = lambda x: jnp.exp(x - finite)[..., None]  # noqa: E731
    return Chunk(a.out * weight(a.lse) + b.out * weight(b.lse), lse, a.pairs + b.pairs)


def backward_lse(lse: Array) -> Array:
    """The lse a backward pass divides by: ``+inf`` where a row attends nothing, so that
    ``exp(s - lse)`` is 0 there whatever ``s`` is (``-inf - -inf`` would be NaN)."""
    return jnp.where(lse == -jnp.inf, jnp.inf, lse)
