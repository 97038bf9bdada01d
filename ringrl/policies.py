"""Acting policies for rollouts: ``start_trial / act / record`` over ``E`` environments.

* :class:`RandomPolicy`, :class:`ConstantPolicy`: the baselines.
* :class:`IncrementalPolicy`: an agent acting from its own history with a KV cache
  (:mod:`ringrl.kv_cache`), one environment step's new tokens at a time.
* :class:`RecomputePolicy`: the same agent running its whole context at every step (DT, BC:
  windows shorter than an episode).
* :func:`make_policy` picks one of the two; :class:`PairedPolicy` runs both on one history.
* :class:`ActionChooser`: model outputs to actions (discrete: greedy or sampled from the logits).

Both agent policies build their context with the one context rule (:mod:`ringrl.context`), so
they choose the same actions to float rounding. Shape suffixes: E environments, O observation
size, A action size.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ringrl.context import (
    Steps,
    acting_chain,
    build_chain,
    episode_return,
    is_completed,
    pad_chain,
)
from ringrl.kv_cache import decode_step, init_cache, reset_rows
from ringrl.ops.layouts import padded_steps

# ---- actions from model outputs -----------------------------------------------------------------


class ActionChooser:
    """Model outputs ``[E, act_dim]`` -> the actions taken, as the model reads them back.

    Continuous: the output is the action. Discrete: the output is logits; ``"greedy"`` takes the
    argmax, ``"sample"`` (Algorithm Distillation's) draws from the softmax with a seeded
    generator; either way the action comes back one-hot ``[E, num_actions]`` (what the context
    holds) -- :meth:`env_actions` gives the integers an environment takes.
    """

    MODES = ("sample", "greedy")

    def __init__(self, discrete: bool, mode: str = "sample", seed: int = 0):
        if mode not in self.MODES:
            raise ValueError(f"action selection must be one of {self.MODES}, got {mode!r}")
        self.discrete, self.mode = discrete, mode
        self.rng = np.random.default_rng(seed)

    def __call__(self, out_EA: np.ndarray) -> np.ndarray:
        out_EA = np.asarray(out_EA, np.float32)
        if not self.discrete:
            return out_EA
        E, A = out_EA.shape
        if self.mode == "greedy":
            idx = out_EA.argmax(-1)
        else:
            z = out_EA.astype(np.float64)
            p = np.exp(z - z.max(-1, keepdims=True))
            cum = np.cumsum(p / p.sum(-1, keepdims=True), -1)
            idx = np.minimum((cum < self.rng.random((E, 1))).sum(-1), A - 1)
        return np.eye(A, dtype=np.float32)[idx]

    @staticmethod
    def env_actions(act_EA: np.ndarray) -> np.ndarray:
        """One-hot actions ``[E, A]`` -> int64 ``[E]``."""
        return np.asarray(act_EA).argmax(-1).astype(np.int64)


# ---- baselines ---------------------------------------------------------------------------------


class Policy(Protocol):
    def start_trial(self, rows: np.ndarray) -> None: ...
    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray: ...
    def record(
        self, act_EA: np.ndarray, rew_E: np.ndarray, done_E: np.ndarray, active_E: np.ndarray
    ) -> None: ...


class RandomPolicy:
    """Uniform actions, seeded: in [-1, 1] (the agents' action range), or (``discrete``) a
    uniformly drawn action, one-hot (as the agents return them)."""

    def __init__(self, num_envs: int, act_dim: int, seed: int = 0, discrete: bool = False):
        self.rng = np.random.default_rng(seed)
        self.shape = (num_envs, act_dim)
        self.discrete = discrete

    def start_trial(self, rows: np.ndarray) -> None:
        pass

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        if self.discrete:
            E, A = self.shape
            return np.eye(A, dtype=np.float32)[self.rng.integers(0, A, E)]
        return self.rng.uniform(-1.0, 1.0, self.shape).astype(np.float32)

    def record(self, act_EA, rew_E, done_E, active_E) -> None:
        pass


class ConstantPolicy(RandomPolicy):
    """The same action at every step (a discrete action as its one-hot row)."""

    def __init__(self, num_envs: int, action: np.ndarray):
        self.action = np.broadcast_to(np.asarray(action, np.float32), (num_envs, len(action)))

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        return self.action.copy()


class RecomputePolicy:
    """Full recompute: the context rule's whole context, run through the model at every step.

    Padded to one fixed length so that a single compiled function serves every step.
    """

    def __init__(
        self,
        agent,
        num_envs: int,
        target_return: float,
        max_episode_steps: int,
        *,
        order: str = "sorted",
        mesh=None,
        actions: str = "sample",
        seed: int = 0,
    ):
        self.agent, self.E, self.target, self.mesh = agent, num_envs, float(target_return), mesh
        self.choose = ActionChooser(agent.cfg.discrete, actions, seed)
        self.rule = agent.context_rule(max_episode_steps, order)
        c, m = agent.cfg, agent.transformer.cfg
        ring = m.attention == "ring"
        shards = (mesh.shape["seq"] if mesh is not None else jax.device_count()) if ring else 1
        self.T = padded_steps(c.context_steps, c.step_tokens, m.block_size, shards, ring)
        self.histories = [TrialHistory() for _ in range(num_envs)]
        self.memos: list[dict] = [{} for _ in range(num_envs)]  # prepared episodes per trial
        graphdef, self.state = nnx.split(agent)
        self._predict = jax.jit(
            lambda state, batch: nnx.merge(graphdef, state)(batch, mesh=mesh, deterministic=True)
        )

    def start_trial(self, rows: np.ndarray) -> None:
        for e in np.flatnonzero(rows):
            self.histories[e] = TrialHistory()
            self.memos[e] = {}

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        chains, last = [], []
        for e in range(self.E):
            h = self.histories[e]
            running = h.partial(obs_EO[e], self.agent.cfg.act_dim)
            chain, _ = acting_chain(h.episodes, running, self.rule, self.target, self.memos[e])
            chains.append(pad_chain(chain, self.T))
            last.append(len(chain["mask"]) - 1)
        batch = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
        pred_ETA = np.asarray(self._predict(self.state, batch))
        self._obs = np.asarray(obs_EO, np.float32)
        self.last_output = pred_ETA[np.arange(self.E), last]  # (discrete: logits)
        return self.choose(self.last_output)

    def record(self, act_EA, rew_E, done_E, active_E) -> None:
        for e in np.flatnonzero(active_E):
            self.histories[e].add(self._obs[e], act_EA[e], rew_E[e])
            if done_E[e]:
                self.histories[e].end_episode()


# ---- an agent acting from its own history, one environment step at a time ---------------------


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``rows``."""
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


class TrialHistory:
    """The episodes of one trial so far, and the running one (for prefills and references).

    The running episode is kept in buffers that double when full: ``add`` costs O(1)
    (amortised) and ``partial`` one contiguous copy, where stacking the ``t`` per-step arrays
    again at every step ``t`` was most of a 1000-step DT/BC evaluation's policy time.
    """

    def __init__(self) -> None:
        self.episodes: list[Steps] = []
        self._obs: np.ndarray | None = None  # [capacity, O]; the running episode's rows first
        self._act: np.ndarray | None = None
        self._rew = np.zeros(0, np.float32)
        self.n = 0  # steps of the running episode recorded so far

    def _reserve(self, obs: np.ndarray, act: np.ndarray, rows: int) -> None:
        if self._obs is None:
            self._obs = np.zeros((max(rows, 64), *np.shape(obs)), np.float32)
            self._act = np.zeros((len(self._obs), *np.shape(act)), np.float32)
            self._rew = np.zeros(len(self._obs), np.float32)
        elif rows > len(self._obs):
            cap = max(rows, 2 * len(self._obs))
            self._obs, self._act, self._rew = (
                _grown(a, cap) for a in (self._obs, self._act, self._rew)
            )

    def add(self, obs: np.ndarray, act: np.ndarray, rew: float) -> None:
        self._reserve(obs, act, self.n + 2)  # + the next step's observation (``partial``)
        self._obs[self.n], self._act[self.n], self._rew[self.n] = obs, act, rew
        self.n += 1

    def end_episode(self) -> None:
        n = self.n
        self.episodes.append(
            Steps(self._obs[:n].copy(), self._act[:n].copy(), self._rew[:n].copy())
        )
        self.n = 0

    def partial(self, obs: np.ndarray, act_dim: int) -> Steps:
        """The running episode up to observation ``obs``; its current action/reward are 0."""
        n = self.n
        if self._obs is None:
            self._reserve(obs, np.zeros(act_dim, np.float32), 2)
        self._obs[n] = obs
        self._act[n], self._rew[n] = 0.0, 0.0
        return Steps(
            self._obs[: n + 1].copy(), self._act[: n + 1].copy(), self._rew[: n + 1].copy()
        )


class IncrementalPolicy:
    """An Agentic Transformer (or DT / BC) acting in ``E`` environments with a KV cache.

    Each row of the cache holds one trial's context, exactly the one the context rule
    (:func:`ringrl.context.acting_chain`) builds for ``agent.act``: the most recent whole
    previous episodes that fit, arranged by ``order`` (sorted by return, or as played), then the
    running episode, relabelled to the fixed ``target_return`` (so tokens already written never
    change within an episode). Every ``act`` embeds only the step's new tokens -- the previous
    step's action and reward tokens and the current return and state tokens (4-token layout),
    ``[a, R, s]`` (DT's 3 tokens), ``[a, s]`` without returns, one fused token in the 1-token
    layout -- and runs :func:`decode_step` on them.

    When an episode ends, the rule decides the next context; if it is not the cached one with
    the finished episode at its end (an older episode evicted, or the new one sorted before
    others), the row is emptied and prefilled again from the arranged episodes. The action then
    equals the agent's full recompute over the same history, to float rounding.
    """

    def __init__(
        self,
        agent,
        num_envs: int,
        target_return: float,
        max_episode_steps: int,
        *,
        order: str = "sorted",
        mesh: Mesh | None = None,
        prefill_chunk: int = 256,
        cache_dtype: str = "float32",
        actions: str = "sample",
        seed: int = 0,
    ):
        self.agent, self.mesh, self.E = agent, mesh, num_envs
        self.choose = ActionChooser(agent.cfg.discrete, actions, seed)
        self.target = float(target_return)
        self.max_steps = int(max_episode_steps)
        self.rule = agent.context_rule(self.max_steps, order)
        if self.rule.context_steps < self.max_steps:
            raise ValueError(
                f"a KV cache needs a context ({self.rule.context_steps} steps) that holds a whole "
                f"episode ({self.max_steps} steps); recompute windows instead"
            )
        acfg = agent.cfg
        self.K, self.A = acfg.step_tokens, acfg.action_token
        self.O, self.act_dim = acfg.obs_dim, acfg.act_dim
        self.chunk = prefill_chunk
        capacity = (self.rule.context_steps + 1) * self.K + prefill_chunk
        self.cache = init_cache(
            agent.transformer.cfg, num_envs, capacity, mesh=mesh, dtype=cache_dtype
        )
        self.capacity = self.cache.seg.shape[1]
        self.graphdef, self.state = nnx.split(agent)
        if mesh is not None:  # parameters replicated over the mesh the cache lives on
            self.state = jax.device_put(self.state, NamedSharding(mesh, P()))
        self._step = jax.jit(self._step_fn, donate_argnums=4)  # the cache, updated in place
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=4)
        self._embed = jax.jit(self._embed_fn)
        self.histories = [TrialHistory() for _ in range(num_envs)]
        self.cached: list[list[int]] = [[] for _ in range(num_envs)]  # episodes in the cache
        self.kept_from = np.zeros(num_envs, int)  # oldest history episode in the context
        self.prefills = 0  # rows prefilled again (evictions or reordering)
        self._reset_prev(np.ones(num_envs, bool))
        self.pos = np.zeros(num_envs, int)  # host mirror of cache.pos

    # -- jitted pieces -------------------------------------------------------------------------

    def _step_fn(self, state, batch, seg_BN, num_new_B, cache):
        agent = nnx.merge(self.graphdef, state)
        x_BLD, _ = agent.tokens(batch)
        x_BND = x_BLD[:, self.A + 1 : self.A + 1 + self.K]
        h_BND, cache = decode_step(
            agent.transformer, x_BND, seg_BN, cache, mesh=self.mesh, num_new_B=num_new_B
        )
        return agent.head(h_BND[:, -1]), cache

    def _embed_fn(self, state, batch):
        return nnx.merge(self.graphdef, state).tokens(batch)[0]

    def _prefill_fn(self, state, x_1ND, seg_1N, num_new_1, cache, row):
        agent = nnx.merge(self.graphdef, state)
        one = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, row, 1, 0), cache)
        _, one = decode_step(
            agent.transformer, x_1ND, seg_1N, one, mesh=self.mesh, num_new_B=num_new_1
        )
        return jax.tree.map(
            lambda a, o: jax.lax.dynamic_update_slice_in_dim(a, o, row, 0), cache, one
        )

    # -- per-environment bookkeeping -----------------------------------------------------------

    def _reset_prev(self, rows: np.ndarray) -> None:
        E = self.E
        if not hasattr(self, "prev_obs"):  # the previous step of every env (tokens to add)
            self.prev_obs = np.zeros((E, self.O), np.float32)
            self.prev_act = np.zeros((E, self.act_dim), np.float32)
            self.prev_rew, self.prev_rtg = np.zeros(E, np.float32), np.zeros(E, np.float32)
            self.prev_done, self.prev_t = np.zeros(E, np.float32), np.zeros(E, np.int32)
            self.prev_exists = np.zeros(E, bool)
            self.collected, self.t = np.zeros(E, np.float64), np.zeros(E, np.int32)
            self.cur_obs = np.zeros((E, self.O), np.float32)
            self._cur_rtg = np.zeros(E, np.float32)
        self.prev_exists[rows] = False
        self.collected[rows], self.t[rows] = 0.0, 0

    def start_trial(self, rows: np.ndarray) -> None:
        """Empty the context of the environments where ``rows`` is true (a new trial)."""
        rows = np.asarray(rows, bool)
        self.cache = reset_rows(self.cache, jnp.asarray(rows))
        self.pos[rows] = 0
        self._reset_prev(rows)
        for e in np.flatnonzero(rows):
            self.histories[e] = TrialHistory()
            self.cached[e], self.kept_from[e] = [], 0

    def context_episodes(self, e: int, obs: np.ndarray) -> list[Steps]:
        """The episodes in env ``e``'s context, in context order, then the running one."""
        h = self.histories[e]
        return [*(h.episodes[i] for i in self.cached[e]), h.partial(obs, self.act_dim)]

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray | None = None) -> np.ndarray:
        """Actions ``[E, act_dim]`` for the current observations: in [-1, 1], or (discrete)
        one-hot, greedy or sampled from the logits (``actions``)."""
        active_E = np.ones(self.E, bool) if active_E is None else np.asarray(active_E, bool)
        obs_EO = np.asarray(obs_EO, np.float32)
        rtg_E = (self.target - self.collected).astype(np.float32)
        batch = {
            "observations": np.stack([self.prev_obs, obs_EO], 1),
            "actions": np.stack([self.prev_act, np.zeros_like(self.prev_act)], 1),
            "rewards": np.stack([self.prev_rew, np.zeros_like(self.prev_rew)], 1),
            "returns_to_go": np.stack([self.prev_rtg, rtg_E], 1),
            "completions": np.stack([self.prev_done, np.zeros_like(self.prev_done)], 1),
            "timesteps": np.stack([self.prev_t, self.t], 1),
            "mask": np.stack([self.prev_exists, np.ones(self.E, bool)], 1).astype(np.float32),
        }
        n_prev = self.K - self.A - 1  # new tokens that belong to the previous step
        seg_EN = np.zeros((self.E, self.K), np.int32)
        seg_EN[:, :n_prev] = np.where(self.prev_exists, 0, -1)[:, None]
        seg_EN[~active_E] = -1
        num_new_E = np.where(active_E, self.K, 0).astype(np.int32)
        act_EA, self.cache = self._step(self.state, batch, seg_EN, num_new_E, self.cache)
        self.pos += num_new_E
        self.cur_obs = obs_EO
        self._cur_rtg = rtg_E
        self.last_output = np.asarray(act_EA)  # the model's outputs (discrete: logits)
        return self.choose(self.last_output)

    def record(
        self, act_EA: np.ndarray, rew_E: np.ndarray, done_E: np.ndarray, active_E: np.ndarray
    ) -> None:
        """The actions taken, rewards received and episode ends of the last ``act``."""
        for e in np.flatnonzero(active_E):
            self.histories[e].add(self.cur_obs[e], act_EA[e], rew_E[e])
            self.collected[e] += float(np.float32(rew_E[e]))
            self.prev_obs[e], self.prev_act[e] = self.cur_obs[e], act_EA[e]
            self.prev_rew[e], self.prev_rtg[e] = rew_E[e], self._cur_rtg[e]
            self.prev_t[e], self.prev_exists[e] = self.t[e], True
            self.prev_done[e] = 0.0
            self.t[e] += 1
            if done_E[e]:
                self.histories[e].end_episode()
                self.collected[e], self.t[e] = 0.0, 0
                self._next_context(e)

    # -- the next episode's context -------------------------------------------------------------

    def _next_context(self, e: int) -> None:
        """After an episode: keep the cache if the rule's context extends it, else prefill."""
        episodes = self.histories[e].episodes
        first = self.rule.first_kept([len(ep) for ep in episodes])
        arranged = [first + i for i in self.rule.arrange(episodes[first:])]
        self.kept_from[e] = first
        if arranged == [*self.cached[e], len(episodes) - 1]:
            self.cached[e] = arranged
            completed = is_completed(episode_return(episodes[-1]), self.rule.success_return)
            self.prev_done[e] = float(completed)  # the finished episode's reward token
            return
        rows = np.zeros(self.E, bool)
        rows[e] = True
        self.cache = reset_rows(self.cache, jnp.asarray(rows))
        self.pos[e], self.cached[e] = 0, arranged
        self.prev_exists[e] = False
        if arranged:
            self._prefill_row(e, [episodes[i] for i in arranged])

    def _prefill_row(self, e: int, kept: list[Steps]) -> None:
        """Write ``kept`` (in this order) into row ``e``, but the last step's trailing tokens:
        those come with the next ``act``, as after any step."""
        chain = build_chain(
            kept, target=self.target, success_return=self.rule.success_return, order="played"
        )
        n = len(chain["mask"])
        T = -(-n // self.chunk) * self.chunk  # steps, padded (fewer recompilations)
        x_1LD = self._embed(self.state, {k: v[None] for k, v in pad_chain(chain, T).items()})
        real = n * self.K - (self.K - self.A - 1)
        ch = self.chunk * self.K
        for start in range(0, real, ch):
            count = min(ch, real - start)
            seg_1N = np.where(np.arange(ch) < count, 0, -1).astype(np.int32)[None]
            x_1ND = jax.lax.dynamic_slice_in_dim(x_1LD, start, ch, 1)
            self.cache = self._prefill(
                self.state, x_1ND, seg_1N, np.asarray([count], np.int32), self.cache, e
            )
        self.pos[e] = real
        self.prefills += 1
        self.prev_obs[e], self.prev_act[e] = chain["observations"][-1], chain["actions"][-1]
        self.prev_rew[e], self.prev_rtg[e] = chain["rewards"][-1], chain["returns_to_go"][-1]
        self.prev_done[e], self.prev_t[e] = chain["completions"][-1], chain["timesteps"][-1]
        self.prev_exists[e] = True


# ---- choosing one -------------------------------------------------------------------------------


def make_policy(
    agent,
    num_envs: int,
    target: float,
    max_steps: int,
    *,
    decode: str,
    seq_shards: int,
    order: str = "sorted",
    actions: str = "sample",
    seed: int = 0,
):
    """A KV-cache policy when the context holds a whole episode (or asked), else recompute.
    ``actions``: greedy or sampled discrete actions (seeded by ``seed``)."""
    from ringrl.model import with_attention
    from ringrl.parallel import make_mesh

    if decode == "auto":
        decode = "cache" if agent.cfg.context_steps >= max_steps else "recompute"
    if decode == "cache":
        mesh = make_mesh(1, seq_shards) if seq_shards > 1 else None
        policy = IncrementalPolicy(
            agent, num_envs, target, max_steps, order=order, mesh=mesh, actions=actions, seed=seed
        )
        return policy, decode
    if agent.transformer.cfg.attention == "ring":  # one device is plenty for a window
        agent.transformer = with_attention(agent.transformer, "blockwise")
    policy = RecomputePolicy(
        agent, num_envs, target, max_steps, order=order, actions=actions, seed=seed
    )
    return policy, decode


class PairedPolicy:
    """Acts with ``lead`` (the KV cache); ``follow`` (recompute) sees the same history."""

    def __init__(self, lead, follow):
        self.lead, self.follow, self.worst = lead, follow, 0.0

    def start_trial(self, rows):
        self.lead.start_trial(rows)
        self.follow.start_trial(rows)

    def act(self, obs, active):
        a, b = self.lead.act(obs, active), self.follow.act(obs, active)
        self.worst = max(self.worst, float(np.abs(a - b)[active].max()))
        return a

    def record(self, act, rew, done, active):
        self.lead.record(act, rew, done, active)
        self.follow.record(act, rew, done, active)
