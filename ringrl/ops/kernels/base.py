"""The kernel boundary: one query chunk against one key/value chunk.

Blockwise and ring attention call only this interface; they own the merge of chunk results
(:func:`merge`) and the schedule (which chunk meets which, what travels around the ring). A
kernel owns everything inside a chunk pair: tiling, skipping the tile pairs the mask hides,
and the platform tuning it was built with (:class:`ringrl.backend.Tuning`).

A kernel is a frozen dataclass (hashable: it is a static argument of the custom VJPs) with

``forward(q_BQHD, k_BSKD, v_BSKD, q_side, k_side, *, causal, block) -> Chunk``
    the chunk's softmax attention. ``Chunk.out_BQHD`` float32 (rows that attend nothing in
    this chunk: 0), ``Chunk.lse_BHQ`` the float32 natural-log log-sum-exp of each row's scores
    (scale ``head_dim ** -0.5``; rows that attend nothing: ``-inf``), ``Chunk.pairs`` the
    number of tiles the kernel computed (int32; for load-balance statistics).

``backward(q, k, v, out_BQHD, lse_BHQ, do_BQHD, q_side, k_side, *, causal, block, grads=None)
-> (dq_BQHD, dk_BSKD, dv_BSKD)``
    this chunk pair's float32 contributions to the gradients, given the *global* output, lse
    (as :func:`merge` leaves them: ``-inf`` for rows that attend nothing) and output gradient.
    ``grads``: float32 accumulators the contributions are added to (None: zeros); the XLA
    kernel adds in place, so a ring step needs no second gradient-sized buffer.

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


class Side(NamedTuple):
    """One chunk's query or key side: global positions and segment ids."""

    pos_L: Array  # int32 [L] global positions (the causal mask and skipping)
    seg_BL: Array  # int32 [B, L] segment ids, negative = padding


class Chunk(NamedTuple):
    """A kernel's forward result for one chunk pair."""

    out_BQHD: Array  # float32, normalised within the chunk; 0 where a row attends nothing
    lse_BHQ: Array  # float32 natural-log log-sum-exp; -inf where a row attends nothing
    pairs: Array  # int32 scalar: tiles computed


class Kernel(Protocol):
    name: str
    tuning: Tuning

    def forward(
        self, q: Array, k: Array, v: Array, q_side: Side, k_side: Side, *, causal: bool, block: int
    ) -> Chunk: ...

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


def empty_chunk(out_BQHD: Array, lse_BHQ: Array) -> Chunk:
    """The merge's identity: no keys seen yet (output 0, lse -inf)."""
    return Chunk(out_BQHD, lse_BHQ, jnp.int32(0))


def merge(a: Chunk, b: Chunk) -> Chunk:
    """Two chunk results of the same queries -> the result over both chunks' keys (float32).

    ``lse = logaddexp(lse_a, lse_b)``; each output weighs ``exp(lse_x - lse)``. Rows that no
    chunk has given a key stay (0, -inf): the weights are taken against a finite stand-in, so
    ``-inf - -inf`` never happens.
    """
    lse = jnp.logaddexp(a.lse_BHQ, b.lse_BHQ)
    finite = jnp.where(jnp.isfinite(lse), lse, 0.0)
    weight = lambda x: jnp.moveaxis(jnp.exp(x - finite), 1, 2)[..., None]  # noqa: E731 [B,Q,H,1]
    out = a.out_BQHD * weight(a.lse_BHQ) + b.out_BQHD * weight(b.lse_BHQ)
    return Chunk(out, lse, a.pairs + b.pairs)


def backward_lse(lse_BHQ: Array) -> Array:
    """The lse a backward pass divides by: ``+inf`` where a row attends nothing, so that
    ``exp(s - lse)`` is 0 there whatever ``s`` is (``-inf - -inf`` would be NaN)."""
    return jnp.where(lse_BHQ == -jnp.inf, jnp.inf, lse_BHQ)
