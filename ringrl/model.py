"""A pre-norm decoder Transformer in Flax NNX whose attention implementation is a config choice.

The parameters never depend on ``attention`` (``vanilla | blockwise | ring``), ``block_size``,
``kernel`` (``auto | xla | pallas``) or ``feedforward`` (``blockwise | full``): a checkpoint
trained with one runs with any other. The model maps embedded tokens to hidden states; token
and position embeddings belong to the agent that owns the token layout.

Shape suffixes: B batch, L sequence, D model width, H query heads, K kv heads, E head dim,
F feed-forward width.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array
from jax.sharding import Mesh

from ringrl.ops import (
    IMPLS,
    KERNELS,
    attention,
    blockwise_feedforward,
    from_ring_layout,
    ring_attention_laid_out,
    ring_layout,
    to_ring_layout,
)
from ringrl.ops.feedforward import blockwise_map
from ringrl.ops.remat import remat
from ringrl.parallel import make_mesh

FEEDFORWARDS = ("blockwise", "full")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The Transformer's hyperparameters: the ``model:`` section of a training config, as is
    (:class:`ringrl.config.Config`). Paper values: Agentic Transformer reimplementation."""

    num_layers: int = 4  # AT: 4 layers (RA paper: a "350M" model, see configs/paper)
    d_model: int = 256  # AT: 256
    num_heads: int = 8  # AT: 8
    num_kv_heads: int = 8  # < num_heads: grouped-query attention
    mlp_ratio: int = 4
    dropout: float = 0.1  # AT: 0.1
    attention: str = "vanilla"  # vanilla | blockwise | ring
    block_size: int = 512  # attention / feed-forward block (also sets sequence padding)
    compute_dtype: str = "float32"  # float32 | bfloat16 (parameters stay float32)
    remat: bool = True  # rematerialise each layer's activations in the backward pass
    causal: bool = True  # agents: always (an action sees only the past)
    feedforward: str = "blockwise"  # blockwise (BPT) | full (ordinary MLP over the whole sequence)
    kernel: str = "auto"  # attention kernel: auto (pallas on GPU, xla elsewhere) | xla | pallas

    def __post_init__(self):
        if self.attention not in IMPLS:
            raise ValueError(f"attention: expected one of {IMPLS}, got {self.attention!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {self.kernel!r}")
        if self.d_model % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must divide by num_heads ({self.num_heads}) and "
                f"num_heads by num_kv_heads ({self.num_kv_heads})"
            )
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"compute_dtype: expected float32 or bfloat16, got {self.compute_dtype!r}"
            )
        if self.feedforward not in FEEDFORWARDS:
            raise ValueError(
                f"feedforward: expected one of {FEEDFORWARDS}, got {self.feedforward!r}"
            )

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)


def _dense(cfg: TransformerConfig, d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=cfg.dtype, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        head_dim = cfg.d_model // cfg.num_heads
        self.q = _dense(cfg, cfg.d_model, cfg.num_heads * head_dim, rngs)
        self.k = _dense(cfg, cfg.d_model, cfg.num_kv_heads * head_dim, rngs)
        self.v = _dense(cfg, cfg.d_model, cfg.num_kv_heads * head_dim, rngs)
        self.o = _dense(cfg, cfg.num_heads * head_dim, cfg.d_model, rngs)

    def project(self, x_BLD: Array) -> tuple[Array, Array, Array]:
        """Queries ``[B, L, H, E]``, keys and values ``[B, L, K, E]`` of (normed) ``x_BLD``
        (any leading axes in place of ``B, L``)."""
        cfg = self.cfg
        lead, E = x_BLD.shape[:-1], cfg.d_model // cfg.num_heads
        q_BLHE = self.q(x_BLD).reshape(*lead, cfg.num_heads, E)
        k_BLKE = self.k(x_BLD).reshape(*lead, cfg.num_kv_heads, E)
        v_BLKE = self.v(x_BLD).reshape(*lead, cfg.num_kv_heads, E)
        return q_BLHE, k_BLKE, v_BLKE

    def attend(
        self,
        q_BLHE: Array,
        k_BLKE: Array,
        v_BLKE: Array,
        segment_ids_BL: Array | None,
        mesh: Mesh | None,
        layout: str | None = None,
    ) -> Array:
        """Attention over projected heads, before the output projection: ``[B, L, H, E]``.

        ``layout``: None for a sequence in natural order; else the ring layout the sequence
        (and ``segment_ids_BL``) is already in (:meth:`Transformer.ring_layout`)."""
        cfg = self.cfg
        if layout is not None:
            return ring_attention_laid_out(
                q_BLHE,
                k_BLKE,
                v_BLKE,
                mesh=mesh,
                layout=layout,
                causal=cfg.causal,
                segment_ids=segment_ids_BL,
                block_size=cfg.block_size,
                kernel=cfg.kernel,
            )
        return attention(
            q_BLHE,
            k_BLKE,
            v_BLKE,
            impl=cfg.attention,
            mesh=mesh,
            causal=cfg.causal,
            segment_ids=segment_ids_BL,
            block_size=cfg.block_size,
            kernel=cfg.kernel,
        )

    def __call__(self, x_BLD: Array, segment_ids_BL: Array | None, mesh: Mesh | None) -> Array:
        out_BLHE = self.attend(*self.project(x_BLD), segment_ids_BL, mesh)
        return self.o(out_BLHE.reshape(*out_BLHE.shape[:-2], -1))


class MLP(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.up = _dense(cfg, cfg.d_model, cfg.mlp_ratio * cfg.d_model, rngs)
        self.down = _dense(cfg, cfg.mlp_ratio * cfg.d_model, cfg.d_model, rngs)

    def __call__(self, x_BLD: Array) -> Array:
        return self.down(jax.nn.gelu(self.up(x_BLD)))


class Block(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.norm1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

    def dropout_keys(self, deterministic: bool) -> Array | None:
        """The layer's two dropout keys for one call (None when dropout is off)."""
        if self.cfg.dropout == 0 or deterministic:
            return None
        return jnp.stack([self.drop.rngs(), self.drop.rngs()])

    def __call__(
        self,
        x_BLD: Array,
        segment_ids_BL: Array | None,
        mesh: Mesh | None,
        deterministic: bool,
        keys: Array | None = None,
        layout: str | None = None,
    ) -> Array:
        """One pre-norm layer. With ``feedforward="blockwise"`` everything position-wise (the
        norms, the projections, the MLP, dropout, the residual sums) runs block by block with
        rematerialisation, so that only the layer's input and output, q/k/v and the attention
        output ever exist for the whole sequence; with ``"full"`` it runs on the whole sequence
        at once, as in an ordinary Transformer. ``keys``: from :meth:`dropout_keys` (drawn here
        when not given); ``layout``: see :meth:`Attention.attend`."""
        cfg = self.cfg
        if keys is None:
            keys = self.dropout_keys(deterministic)
        if cfg.feedforward == "blockwise":
            position_wise = functools.partial(
                blockwise_map,
                block_size=cfg.block_size,
                num_shards=_shards(cfg, mesh),
                with_index=True,
            )
        else:  # the whole sequence as one block
            position_wise = lambda fn, *xs: fn(*xs, jnp.int32(0))  # noqa: E731
        qkv = position_wise(lambda x, i: self.attn.project(self.norm1(x).astype(cfg.dtype)), x_BLD)
        out_BLHE = self.attn.attend(*qkv, segment_ids_BL, mesh, layout)
        out_BLF = out_BLHE.reshape(*out_BLHE.shape[:2], -1)

        def residuals(x, out, i):  # x + attention output, then + MLP, on one block
            def drop(h, which):
                if keys is not None:  # a different mask for every block
                    h = self.drop(h, deterministic=False, rngs=jax.random.fold_in(keys[which], i))
                return h.astype(x.dtype)

            x = x + drop(self.attn.o(out), 0)
            return x + drop(self.mlp(self.norm2(x).astype(cfg.dtype)), 1)

        return position_wise(residuals, x_BLD, out_BLF)


def _shards(cfg: TransformerConfig, mesh: Mesh | None) -> int:
    """How many ``"seq"`` shards the position-wise blocks are walked in (ring only)."""
    return mesh.shape["seq"] if (mesh is not None and cfg.attention == "ring") else 1


class Transformer(nnx.Module):
    """Pre-norm decoder: ``num_layers`` x (attention, feed-forward), then a final LayerNorm.

    Call with embedded tokens ``x_BLD`` (float32) and optional ``segment_ids_BL`` (negative =
    padding). ``mesh`` is needed for ``attention="ring"`` (None: all local devices on
    ``"seq"``). Returns float32 hidden states ``[B, L, D]``.

    With ring attention and a causal mask the layers see the sequence in the ring's zigzag
    order (:meth:`ring_layout`): the model reorders its input once and its output back once.
    ``sequence_order="ring"`` says the caller's ``x_BLD`` and ``segment_ids`` are already in
    that order (``ringrl.ops.to_ring_layout``), and the output is then left in it too.
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)

    def __call__(
        self,
        x_BLD: Array,
        *,
        segment_ids: Array | None = None,
        mesh: Mesh | None = None,
        deterministic: bool = True,
        sequence_order: str = "natural",
    ) -> Array:
        if sequence_order not in ("natural", "ring"):
            raise ValueError(f"sequence_order must be 'natural' or 'ring', got {sequence_order!r}")
        x_BLD = x_BLD.astype(jnp.float32)
        if self.cfg.attention == "ring":
            mesh = mesh or make_mesh()  # resolved once: ring_layout and every layer use it
        layout = self.ring_layout(mesh)
        relayout = layout is not None and sequence_order == "natural"
        if relayout:  # once for the whole model, not at every attention call
            x_BLD = to_ring_layout(x_BLD, mesh, layout)
            if segment_ids is not None:
                segment_ids = to_ring_layout(segment_ids, mesh, layout)
        for block in self.blocks:
            keys = block.dropout_keys(deterministic)  # drawn here: nothing mutates under remat
            if self.cfg.remat:
                graphdef, state = nnx.split(block)
                layer = lambda state, x, seg, keys, g=graphdef: nnx.merge(g, state)(  # noqa: E731
                    x, seg, mesh, deterministic, keys, layout
                )
                x_BLD = remat(layer)(state, x_BLD, segment_ids, keys)
            else:
                x_BLD = block(x_BLD, segment_ids, mesh, deterministic, keys, layout)
        if self.cfg.feedforward == "blockwise":
            x_BLD = blockwise_feedforward(
                self.norm, x_BLD, block_size=self.cfg.block_size, num_shards=_shards(self.cfg, mesh)
            )
        else:
            x_BLD = self.norm(x_BLD)
        return from_ring_layout(x_BLD, mesh, layout) if relayout else x_BLD

    def ring_layout(self, mesh: Mesh | None) -> str | None:
        """The order the layers see the sequence in: None (natural) unless attention is a
        ring over several devices with a load-balancing layout (zigzag for causal attention).
        Every layer but attention is position-wise, so the model lays its input out once and
        puts its output back once, instead of relaying q, k, v and the output of every layer."""
        if self.cfg.attention != "ring":
            return None
        layout = ring_layout(self.cfg.causal)
        devices = (mesh or make_mesh()).shape["seq"]
        return None if layout == "contiguous" or devices == 1 else layout


def with_attention(model: Transformer, impl: str, block_size: int | None = None) -> Transformer:
    """The same parameters with another attention implementation (and block size)."""
    cfg = dataclasses.replace(
        model.cfg, attention=impl, block_size=block_size or model.cfg.block_size
    )
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)

    def set_cfg(module):
        if hasattr(module, "cfg"):
            module.cfg = cfg

    for _, m in nnx.iter_graph(clone):
        if isinstance(m, nnx.Module):
            set_cfg(m)
    return clone
