"""Where a trained agent's attention goes: softmax weights per layer, summed by episode.

For notebooks on long histories: the context of one acting step (``agent.context``) goes through
the model's own blocks once (plain attention in float32, one device), and at every layer the
softmax weights of chosen queries are kept -- e.g. the action queries of the running episode --
and summed over the tokens of each episode of the context. The forward pass is the model's
(tested equal to it), so the weights are the ones the agent acts on.

Shape suffixes: L tokens, H query heads, K kv heads, E head dim, Q chosen queries, Y layers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array


def attention_weights(agent, batch: dict, queries: np.ndarray) -> tuple[np.ndarray, Array]:
    """``(weights_YHQL, hidden_LD)``: every layer's softmax weights of the token positions
    ``queries`` over all tokens of row 0 of ``batch`` (the agent's per-step arrays), and the
    model's final hidden states (for the equality check with the model's own forward pass)."""
    model = agent.transformer
    cfg = model.cfg
    x_1LD, seg_1L = agent.tokens({k: jnp.asarray(v) for k, v in batch.items()})
    H, K = cfg.num_heads, cfg.num_kv_heads
    E = cfg.d_model // H
    L = x_1LD.shape[1]
    pos_L = jnp.arange(L)
    q_idx = jnp.asarray(queries)
    visible_LL = (
        (pos_L[None] <= pos_L[:, None]) & (seg_1L[0][None] >= 0) & (seg_1L[0][:, None] >= 0)
    )
    visible_LL &= seg_1L[0][None] == seg_1L[0][:, None]
    weights = []
    x_LD = x_1LD[0].astype(jnp.float32)
    for block in model.blocks:
        h_LD = block.norm1(x_LD).astype(cfg.dtype)
        q_LHE, k_LKE, v_LKE = block.attn.project(h_LD)
        k_LHE = jnp.repeat(k_LKE, H // K, axis=1)  # query head h reads kv head h // G
        v_LHE = jnp.repeat(v_LKE, H // K, axis=1)
        s_HLL = jnp.einsum("qhe,khe->hqk", q_LHE.astype(jnp.float32), k_LHE.astype(jnp.float32))
        s_HLL = jnp.where(visible_LL[None], s_HLL * E**-0.5, -jnp.inf)
        m_HL1 = jnp.max(s_HLL, -1, keepdims=True)
        p_HLL = jnp.exp(s_HLL - jnp.where(jnp.isfinite(m_HL1), m_HL1, 0.0))
        l_HL1 = p_HLL.sum(-1, keepdims=True)
        p_HLL = jnp.where(l_HL1 > 0, p_HLL / jnp.where(l_HL1 > 0, l_HL1, 1.0), 0.0)
        weights.append(np.asarray(p_HLL[:, q_idx]))
        out_LHE = jnp.einsum("hqk,khe->qhe", p_HLL, v_LHE.astype(jnp.float32))
        x_LD = x_LD + block.attn.o(out_LHE.reshape(L, H * E).astype(cfg.dtype)).astype(jnp.float32)
        x_LD = x_LD + block.mlp(block.norm2(x_LD).astype(cfg.dtype)).astype(jnp.float32)
    return np.stack(weights), model.norm(x_LD)


def episode_mass(
    agent, history: list, target: float, *, max_episode_steps: int, order: str = "played"
) -> tuple[np.ndarray, list[int]]:
    """``(mass_YP, kept)``: per layer, the attention mass (mean over heads and over the action
    queries of the running episode) on each of the ``P`` completed episodes of the context, and
    the indices (into ``history``) of those episodes, in context order.

    ``history``: the trial's completed episodes then the running one (as for ``agent.act``);
    the context rule decides which episodes the model holds (:meth:`agent.context_rule`). The
    mass on the running episode itself is ``1 - mass_YP.sum(1)``.
    """
    from ringrl.context import acting_chain

    *previous, running = history
    rule = agent.context_rule(max_episode_steps, order)
    batch, last = agent.context(history, target, max_episode_steps=max_episode_steps, order=order)
    _, first = acting_chain(previous, running, rule, target)
    kept_eps = list(range(first, len(previous)))
    arranged = [kept_eps[i] for i in rule.arrange([previous[i] for i in kept_eps])]
    Ksteps, A = agent.cfg.step_tokens, agent.cfg.action_token
    lengths = [len(previous[i].rewards) for i in arranged]
    run_steps = last + 1 - sum(lengths)
    queries = (sum(lengths) + np.arange(run_steps)) * Ksteps + A
    weights_YHQL, _ = attention_weights(agent, batch, queries)
    owner_L = np.repeat(np.arange(len(arranged)), np.asarray(lengths, int) * Ksteps)
    per_token_YL = weights_YHQL.mean(axis=(1, 2))[:, : len(owner_L)]
    mass_YP = (
        np.stack([np.bincount(owner_L, weights=w, minlength=len(arranged)) for w in per_token_YL])
        if len(arranged)
        else np.zeros((len(weights_YHQL), 0))
    )
    return mass_YP, arranged
