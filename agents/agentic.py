"""Agentic Transformer (Liu & Abbeel, ICML 2023): act from a chain of past episodes.

The model reads per-step arrays (see :mod:`ringrl.sampler`) and turns them into tokens.

Token layouts (``AgentConfig.tokens_per_step``), step ``t`` of the concatenated chain:

* ``4`` -- the paper's: ``[R_t, s_t, a_t, (r_t, d_t)]`` -- return-to-go, state, action, and
  the reward token carrying reward and completion flag. The action ``a_t`` is predicted from the
  hidden state of the *state* token, which (causally) sees ``R_t, s_t`` and all earlier steps
  but not ``a_t``. Without returns (``use_returns=False``, BC) the layout is ``[s_t, a_t]``.
* ``3`` -- Decision Transformer's: ``[R_t, s_t, a_t]`` (no reward or completion token); the
  action is predicted from the state token.
* ``1`` -- fused: one token per step from ``[R_t, s_t, a_{t-1}, r_{t-1}, d_{t-1}, p_t]``,
  i.e. the current return and state with the *previous* step's action, reward and completion
  (``p_t = 1`` when a previous step exists in the context, else the previous-step fields are
  0). The token at ``t`` predicts ``a_t``; it never contains ``a_t`` itself, and causality hides
  later tokens. The previous step of an episode's first step is the last step of the episode
  before it in the chain, so completion flags flow forward. 4x more steps fit a context.

Every token of a step also gets a learned embedding of the step's within-episode timestep.
Returns-to-go are multiplied by ``return_scale`` and rewards by ``reward_scale``, both derived
from the training data (:func:`ringrl.context.data_scales`: 1 / the largest absolute episode
return and per-step reward, so both enter at order one) and stored in the module (and
checkpoint) with the observation statistics and the completion level.

Loss: mean squared error between ``tanh``-squashed predictions and the dataset actions, over real
steps. As in Decision Transformer: a deterministic policy for evaluation, bounded outputs for the
[-1, 1] action boxes of dm_control / MuJoCo, and no variance head to collapse on the narrow
action distributions of exploration data (a Gaussian NLL would need an entropy or min-std guard).

Acting (``act``): the history is the agent's previous episodes followed by the current partial
episode; the context is built by the one context rule (:func:`ringrl.context.acting_chain`:
whole episodes, the most recent that fit, sorted by return or in the order played, relabelled
to ``target_return``) and the action of the last step is returned. This recomputes the whole
context per action; :class:`ringrl.policies.IncrementalPolicy` decodes the same context with a
KV cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array
from jax.sharding import Mesh

from ringrl.context import ContextRule, Steps, acting_chain, pad_chain
from ringrl.model import Transformer, TransformerConfig
from ringrl.ops.layouts import padded_steps


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    obs_dim: int
    act_dim: int
    tokens_per_step: int = 4  # 4: (return, state, action, reward) as AT; 3: DT's; 1: fused
    use_returns: bool = True  # False: BC -- no return, reward or completion inputs
    max_timestep: int = 1000  # timestep embedding table size - 1 (ExoRL episodes: 1000)
    context_steps: int = 1000  # steps the model sees when acting (N * steps per trajectory)
    discrete: bool = False  # act_dim one-hot actions, a categorical head, cross-entropy loss
    use_rewards: bool | None = None  # reward/completion inputs (None: as use_returns; AD: True)

    def __post_init__(self):
        if self.tokens_per_step not in (1, 3, 4):
            raise ValueError(f"tokens_per_step must be 1, 3 or 4, got {self.tokens_per_step}")

    @property
    def rewards_in(self) -> bool:
        """Whether rewards and completion flags enter the tokens."""
        return self.use_returns if self.use_rewards is None else self.use_rewards

    @property
    def reward_token(self) -> bool:
        """Whether a step has its own (reward, completion) token (the 4-token layouts)."""
        return self.tokens_per_step == 4 and self.rewards_in

    @property
    def step_tokens(self) -> int:
        """Tokens one step occupies: ``[R?, s, a, (r, d)?]`` (4, 3 or 2), or 1 fused."""
        if self.tokens_per_step == 1:
            return 1
        return int(self.use_returns) + 2 + int(self.reward_token)

    @property
    def action_token(self) -> int:
        """Index, within a step, of the token whose output predicts the step's action."""
        return 1 if (self.tokens_per_step > 1 and self.use_returns) else 0


class Stat(nnx.Variable):
    """A non-trainable dataset statistic (checkpointed, not optimised)."""


class AgenticTransformer(nnx.Module):
    """Chain-of-hindsight Transformer policy over per-step arrays; see the module docstring."""

    def __init__(
        self,
        cfg: AgentConfig,
        model_cfg: TransformerConfig,
        *,
        rngs: nnx.Rngs,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        return_scale: float = 1.0,
        reward_scale: float = 1.0,
        success_return: float = float("inf"),
    ):
        self.cfg = cfg
        D, obs_dim, A = model_cfg.d_model, cfg.obs_dim, cfg.act_dim

        def linear(d_in: int) -> nnx.Linear:
            return nnx.Linear(d_in, D, rngs=rngs)

        self.embed_timestep = nnx.Embed(cfg.max_timestep + 1, D, rngs=rngs)
        if cfg.tokens_per_step > 1:
            self.embed_state = linear(obs_dim)
            self.embed_action = linear(A)
            if cfg.use_returns:
                self.embed_return = linear(1)
            if cfg.reward_token:
                self.embed_reward = linear(2)  # (reward, completion)
        else:
            extra = int(cfg.use_returns) + 2 * int(cfg.rewards_in)
            self.embed_step = linear(obs_dim + A + 1 + extra)
        self.embed_norm = nnx.LayerNorm(D, rngs=rngs)
        self.transformer = Transformer(model_cfg, rngs=rngs)
        self.action_head = nnx.Linear(D, A, rngs=rngs)
        mean = np.zeros(obs_dim, np.float32) if obs_mean is None else obs_mean
        std = np.ones(obs_dim, np.float32) if obs_std is None else obs_std
        self.obs_mean = Stat(jnp.asarray(mean, jnp.float32))
        self.obs_std = Stat(jnp.asarray(np.maximum(std, 1e-6), jnp.float32))
        self.return_scale = Stat(jnp.asarray(return_scale, jnp.float32))
        self.reward_scale = Stat(jnp.asarray(reward_scale, jnp.float32))
        self.success_return = Stat(jnp.asarray(success_return, jnp.float32))

    # ---- tokens -------------------------------------------------------------------------------

    def step_tokens(self, batch: Mapping[str, Array]) -> Array:
        """Per-step tokens ``[B, T, step_tokens, D]`` (before the timestep embedding)."""
        cfg = self.cfg
        obs_BTO = (batch["observations"] - self.obs_mean[...]) / self.obs_std[...]
        act_BTA = batch["actions"]
        rtg_BT1 = (batch["returns_to_go"] * self.return_scale[...])[..., None]
        rew_BT = batch["rewards"] * self.reward_scale[...]
        rew_BT2 = jnp.stack([rew_BT, batch["completions"]], -1)
        if cfg.tokens_per_step > 1:
            tokens = [self.embed_state(obs_BTO), self.embed_action(act_BTA)]
            if cfg.use_returns:
                tokens = [self.embed_return(rtg_BT1), *tokens]
            if cfg.reward_token:
                tokens.append(self.embed_reward(rew_BT2))
            return jnp.stack(tokens, axis=2)

        def prev(x_BTF: Array) -> Array:  # the previous step's features, 0 at the first step
            return jnp.pad(x_BTF, ((0, 0), (1, 0), (0, 0)))[:, :-1]

        has_prev_BT1 = prev(batch["mask"][..., None])
        feats = [obs_BTO, prev(act_BTA), has_prev_BT1]
        if cfg.use_returns:
            feats.append(rtg_BT1)
        if cfg.rewards_in:
            feats.append(prev(rew_BT2))
        return self.embed_step(jnp.concatenate(feats, -1))[:, :, None]

    def tokens(self, batch: Mapping[str, Array]) -> tuple[Array, Array]:
        """Token sequence ``x_BLD`` and segment ids ``seg_BL`` (0 real, -1 padding)."""
        x_BTKD = self.step_tokens(batch)
        t_BT = jnp.clip(batch["timesteps"], 0, self.cfg.max_timestep)
        x_BTKD = x_BTKD + self.embed_timestep(t_BT)[:, :, None]
        B, T, K, D = x_BTKD.shape
        seg_BT = jnp.where(batch["mask"] > 0, 0, -1).astype(jnp.int32)
        seg_BL = jnp.broadcast_to(seg_BT[..., None], (B, T, K)).reshape(B, T * K)
        return self.embed_norm(x_BTKD.reshape(B, T * K, D)), seg_BL

    # ---- prediction, loss, acting ------------------------------------------------------------

    def __call__(
        self, batch: Mapping[str, Array], *, mesh: Mesh | None = None, deterministic: bool = True
    ) -> Array:
        """One output ``[B, T, act_dim]`` per step: actions in [-1, 1], or (discrete) logits."""
        x_BLD, seg_BL = self.tokens(batch)
        h_BLD = self.transformer(x_BLD, segment_ids=seg_BL, mesh=mesh, deterministic=deterministic)
        B, L, D = h_BLD.shape
        K = self.cfg.step_tokens
        h_BTD = h_BLD.reshape(B, L // K, K, D)[:, :, self.cfg.action_token]
        return self.head(h_BTD)

    def head(self, h_D: Array) -> Array:
        """The action output of hidden states ``[..., D]``: ``tanh`` actions, or logits."""
        out = self.action_head(h_D)
        return out if self.cfg.discrete else jnp.tanh(out)

    def loss(
        self, batch: Mapping[str, Array], *, mesh: Mesh | None = None, deterministic: bool = False
    ) -> tuple[Array, dict[str, Array]]:
        """Masked mean over real steps: MSE to the dataset actions (mean over dims), or, for
        discrete actions, the cross-entropy of the logits with the (one-hot) dataset action."""
        pred_BTA = self(batch, mesh=mesh, deterministic=deterministic)
        mask_BT = batch["mask"]
        if self.cfg.discrete:
            logp_BTA = jax.nn.log_softmax(pred_BTA.astype(jnp.float32), axis=-1)
            err_BT = -jnp.sum(logp_BTA * batch["actions"], axis=-1)
        else:
            target_BTA = jnp.clip(batch["actions"], -1.0, 1.0)
            err_BT = jnp.mean(jnp.square(pred_BTA - target_BTA), axis=-1)
        steps = jnp.maximum(mask_BT.sum(), 1.0)
        loss = jnp.sum(err_BT * mask_BT) / steps
        return loss, {"loss": loss, "steps": mask_BT.sum()}

    #: The context order the agent was trained on when it admits only one (AD: chronological).
    FIXED_ORDER: str | None = None

    def context_rule(self, max_episode_steps: int, order: str = "sorted") -> ContextRule:
        """The context rule this agent acts by (its context size and completion level)."""
        order = self.FIXED_ORDER or order
        return ContextRule(
            self.cfg.context_steps, max_episode_steps, order, float(self.success_return[...])
        )

    def context(
        self,
        history: Sequence,
        target_return: float,
        *,
        max_episode_steps: int,
        order: str = "sorted",
        block_size: int = 512,
        seq_shards: int = 1,
        ring: bool = False,
    ) -> tuple[dict[str, np.ndarray], int]:
        """Per-step model input ``[1, T, ...]`` for ``history`` and the index of its last step.

        ``history``: previous episodes, then the current partial episode, each with
        ``observations [T_i, obs_dim]``, ``actions`` and ``rewards`` (the partial episode has one
        more observation than actions/rewards; its current action and reward are unknown).
        The context is :func:`ringrl.context.acting_chain`'s for :meth:`context_rule`.
        """
        *past, current = history
        obs = np.asarray(current.observations, np.float32)
        n = len(obs)
        act = np.zeros((n, self.cfg.act_dim), np.float32)
        act[: n - 1] = np.asarray(current.actions, np.float32).reshape(-1, self.cfg.act_dim)[
            : n - 1
        ]
        rew = np.zeros(n, np.float32)
        rew[: n - 1] = np.asarray(current.rewards, np.float32)[: n - 1]
        rule = self.context_rule(max_episode_steps, order)
        chain, _ = acting_chain(past, Steps(obs, act, rew), rule, target_return)
        steps = len(chain["mask"])
        T = padded_steps(steps, self.cfg.step_tokens, block_size, seq_shards, ring)
        return {k: v[None] for k, v in pad_chain(chain, T).items()}, steps - 1

    def act(
        self,
        history: Sequence,
        target_return: float,
        *,
        max_episode_steps: int,
        order: str = "sorted",
        mesh: Mesh | None = None,
    ) -> np.ndarray:
        """The output ``[act_dim]`` for the last step of ``history`` (see :meth:`context`): the
        action, or (discrete) the logits; :class:`ringrl.policies.ActionChooser` turns logits into
        an action."""
        m = self.transformer.cfg
        ring = m.attention == "ring"
        shards = (mesh.shape["seq"] if mesh is not None else jax.device_count()) if ring else 1
        batch, last = self.context(
            history,
            target_return,
            max_episode_steps=max_episode_steps,
            order=order,
            block_size=m.block_size,
            seq_shards=shards,
            ring=ring,
        )
        pred_BTA = _predict(self, {k: jnp.asarray(v) for k, v in batch.items()}, mesh)
        return np.asarray(pred_BTA[0, last])


def one_hot(actions: np.ndarray, num_actions: int) -> np.ndarray:
    """Integer actions ``[T]`` as float32 one-hot rows ``[T, num_actions]`` (the model's input).

    Raises ValueError naming the offending value when an action is outside ``0..num_actions-1``.
    """
    a = np.asarray(actions).reshape(-1)
    bad = (a < 0) | (a >= num_actions)
    if bad.any():
        raise ValueError(f"discrete action {a[bad][0]} is outside 0..{num_actions - 1}")
    out = np.zeros((len(a), num_actions), np.float32)
    out[np.arange(len(a)), a.astype(np.int64)] = 1.0
    return out


@nnx.jit(static_argnames=("mesh",))
def _predict(agent: AgenticTransformer, batch: dict[str, Array], mesh: Mesh | None) -> Array:
    return agent(batch, mesh=mesh, deterministic=True)
