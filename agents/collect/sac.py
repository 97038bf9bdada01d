"""Soft Actor-Critic (Haarnoja et al. 2018, arXiv 1812.05905) in JAX + Flax NNX + optax.

CleanRL-style: the hyperparameters (:class:`SACConfig`), the networks, the loss functions, the
jitted update step and the training loop are all in this file, in that order.

- twin Q critics with Polyak-averaged target networks, clipped double-Q target;
- tanh-squashed Gaussian actor (reparameterised), log-std clipped to ``[-5, 2]``;
- automatic entropy temperature, target entropy ``-act_dim``;
- ``learning_starts`` uniform-random steps first, then one gradient update per env step;
- time-limit truncations bootstrap, true terminations do not.

The whole update (critic, actor, temperature, target networks) is one ``jax.jit`` over plain
pytrees (``nnx.split`` once, ``nnx.merge`` inside the trace), so a step costs one dispatch.
Every transition the agent collects goes into the replay buffer *and* into an
:class:`~agents.collect.common.EpisodeRecorder`: at the end the recorder's episodes are the
"replay" dataset (D4RL's medium-replay recipe). Actor snapshots are saved at every evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from agents.collect.common import EpisodeRecorder, evaluate, physics_state


# --------------------------------------------------------------------------------------------
# Hyperparameters (values from the SAC paper, Table 1 of arXiv 1812.05905, unless noted)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SACConfig:
    total_steps: int = 1_000_000
    """Environment steps of training (= transitions in the replay dataset)."""
    learning_starts: int = 5_000
    """Uniform-random steps before the first update (paper: 10k for most tasks; CleanRL 5k)."""
    buffer_size: int | None = None
    """Replay capacity; None keeps every transition (paper: 1M)."""
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak coefficient of the target critics."""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature."""
    hidden_dims: tuple[int, ...] = (256, 256)
    init_alpha: float = 1.0
    """Initial entropy temperature (softlearning / CleanRL: log_alpha = 0)."""
    target_entropy: float | None = None
    """None: ``-act_dim`` (paper)."""
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    updates_per_step: int = 1
    """Update-to-data ratio (paper: 1)."""
    update_every: int = 1
    """Env steps between update rounds (paper: 1); ``updates_per_step / update_every`` is the
    update-to-data ratio. ``ringrl compare`` explores with 4: a quarter of the updates, four
    times the collection speed on a CPU, where the update is nearly all the cost."""
    eval_every: int = 10_000
    """Environment steps between evaluations (and actor snapshots)."""
    eval_episodes: int = 10
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------
class MLP(nnx.Module):
    """ReLU multilayer perceptron."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, *, rngs: nnx.Rngs):
        dims = (in_dim, *hidden, out_dim)
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class Actor(nnx.Module):
    """Gaussian policy head: ``obs -> (mean, log_std)`` of the pre-tanh action."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig, *, rngs: nnx.Rngs):
        self.net = MLP(obs_dim, cfg.hidden_dims, 2 * act_dim, rngs=rngs)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, log_std = jnp.split(self.net(obs), 2, axis=-1)
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, log_std


class TwinCritic(nnx.Module):
    """Two independent Q networks: ``(obs, action) -> (q1, q2)``."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig, *, rngs: nnx.Rngs):
        self.q1 = MLP(obs_dim + act_dim, cfg.hidden_dims, 1, rngs=rngs)
        self.q2 = MLP(obs_dim + act_dim, cfg.hidden_dims, 1, rngs=rngs)

    def __call__(self, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jnp.concatenate([obs, action], axis=-1)
        return self.q1(x)[..., 0], self.q2(x)[..., 0]


def sample_action(
    key: jax.Array, mean: jax.Array, log_std: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised tanh-Gaussian sample in [-1, 1] and its log-probability."""
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    gauss_logp = -0.5 * (((u - mean) / jnp.exp(log_std)) ** 2 + 2 * log_std + jnp.log(2 * jnp.pi))
    # log |d tanh(u) / du| = log(1 - tanh(u)^2), in a numerically stable form
    log_det = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(gauss_logp - log_det, axis=-1)


# --------------------------------------------------------------------------------------------
# Training state and the jitted update
# --------------------------------------------------------------------------------------------
class Batch(NamedTuple):
    obs: jax.Array
    actions: jax.Array  # in [-1, 1] (the actor's scale)
    rewards: jax.Array
    next_obs: jax.Array
    terminals: jax.Array  # 1.0 where the episode truly ended (no bootstrap)


class SACState(NamedTuple):
    actor: nnx.State
    critic: nnx.State
    target_critic: nnx.State
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class SAC:
    """The static parts of an agent (graph definitions, optimizer) plus pure functions.

    ``SAC.create(cfg, obs_dim, act_dim) -> (agent, state)``;
    ``agent.update(state, batch) -> (state, metrics)`` (jitted, state donated);
    ``agent.act(actor_params, obs, key, deterministic) -> action in [-1, 1]`` (jitted).
    """

    cfg: SACConfig
    obs_dim: int
    act_dim: int
    actor_def: Any = None
    critic_def: Any = None
    tx: optax.GradientTransformation = None

    @classmethod
    def create(cls, cfg: SACConfig, obs_dim: int, act_dim: int) -> tuple[SAC, SACState]:
        key = jax.random.key(cfg.seed)
        k_actor, k_critic, key = jax.random.split(key, 3)
        actor_def, actor = nnx.split(Actor(obs_dim, act_dim, cfg, rngs=nnx.Rngs(k_actor)))
        critic_def, critic = nnx.split(TwinCritic(obs_dim, act_dim, cfg, rngs=nnx.Rngs(k_critic)))
        tx = optax.adam(cfg.lr)
        log_alpha = jnp.asarray(np.log(cfg.init_alpha), jnp.float32)
        agent = cls(cfg, obs_dim, act_dim, actor_def, critic_def, tx)
        state = SACState(
            actor=actor,
            critic=critic,
            target_critic=jax.tree.map(jnp.copy, critic),
            log_alpha=log_alpha,
            actor_opt=tx.init(actor),
            critic_opt=tx.init(critic),
            alpha_opt=tx.init(log_alpha),
            key=key,
        )
        return agent, state

    @property
    def target_entropy(self) -> float:
        te = self.cfg.target_entropy
        return -float(self.act_dim) if te is None else te

    # ---- losses ---------------------------------------------------------------------------
    def critic_loss(
        self, critic_params: nnx.State, state: SACState, batch: Batch, key: jax.Array
    ) -> tuple[jax.Array, dict]:
        actor = nnx.merge(self.actor_def, state.actor)
        critic = nnx.merge(self.critic_def, critic_params)
        target = nnx.merge(self.critic_def, state.target_critic)
        next_a, next_logp = sample_action(key, *actor(batch.next_obs))
        tq1, tq2 = target(batch.next_obs, next_a)
        next_v = jnp.minimum(tq1, tq2) - jnp.exp(state.log_alpha) * next_logp
        y = batch.rewards + self.cfg.gamma * (1.0 - batch.terminals) * next_v
        y = jax.lax.stop_gradient(y)
        q1, q2 = critic(batch.obs, batch.actions)
        loss = jnp.mean((q1 - y) ** 2) + jnp.mean((q2 - y) ** 2)
        return loss, {"critic_loss": loss, "q": jnp.mean(q1)}

    def actor_loss(
        self, actor_params: nnx.State, state: SACState, batch: Batch, key: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        actor = nnx.merge(self.actor_def, actor_params)
        critic = nnx.merge(self.critic_def, state.critic)
        a, logp = sample_action(key, *actor(batch.obs))
        q = jnp.minimum(*critic(batch.obs, a))
        loss = jnp.mean(jnp.exp(state.log_alpha) * logp - q)
        return loss, logp

    # ---- one gradient step of everything --------------------------------------------------
    def update_fn(self, state: SACState, batch: Batch) -> tuple[SACState, dict]:
        """Critic step, then actor and temperature steps (on the new critic), then Polyak."""
        key, k_critic, k_actor = jax.random.split(state.key, 3)
        (_, info), g = jax.value_and_grad(self.critic_loss, has_aux=True)(
            state.critic, state, batch, k_critic
        )
        upd, critic_opt = self.tx.update(g, state.critic_opt, state.critic)
        critic = optax.apply_updates(state.critic, upd)
        state = state._replace(critic=critic, critic_opt=critic_opt)

        (a_loss, logp), g = jax.value_and_grad(self.actor_loss, has_aux=True)(
            state.actor, state, batch, k_actor
        )
        upd, actor_opt = self.tx.update(g, state.actor_opt, state.actor)
        actor = optax.apply_updates(state.actor, upd)

        entropy_gap = jax.lax.stop_gradient(-logp - self.target_entropy)
        g = jax.grad(lambda la: jnp.mean(la * entropy_gap))(state.log_alpha)
        upd, alpha_opt = self.tx.update(g, state.alpha_opt, state.log_alpha)
        log_alpha = optax.apply_updates(state.log_alpha, upd)

        target = optax.incremental_update(critic, state.target_critic, self.cfg.tau)
        info |= {"actor_loss": a_loss, "alpha": jnp.exp(log_alpha), "entropy": -jnp.mean(logp)}
        new = state._replace(
            actor=actor,
            actor_opt=actor_opt,
            log_alpha=log_alpha,
            alpha_opt=alpha_opt,
            target_critic=target,
            key=key,
        )
        return new, info

    @functools.cached_property
    def update(self) -> Callable[[SACState, Batch], tuple[SACState, dict]]:
        """``update_fn`` jitted, the state donated."""
        return jax.jit(self.update_fn, donate_argnums=0)

    def act_fn(
        self, actor_params: nnx.State, obs: jax.Array, key: jax.Array, deterministic: bool
    ) -> jax.Array:
        mean, log_std = nnx.merge(self.actor_def, actor_params)(obs)
        if deterministic:
            return jnp.tanh(mean)
        return sample_action(key, mean, log_std)[0]

    @functools.cached_property
    def act(self) -> Callable:
        """``act_fn`` jitted (``deterministic`` static)."""
        return jax.jit(self.act_fn, static_argnums=3)


# --------------------------------------------------------------------------------------------
# Replay buffer (host numpy; sampling with a seeded generator)
# --------------------------------------------------------------------------------------------
class ReplayBuffer:
    """Fixed-capacity FIFO of transitions, sampled uniformly."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros((capacity,), np.float32)
        self.terminals = np.zeros((capacity,), np.float32)
        self.capacity, self.size, self.ptr = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, action, reward, terminated, next_obs) -> None:
        i = self.ptr
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.terminals[i], self.next_obs[i] = float(terminated), next_obs
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        idx = self.rng.integers(0, self.size, size=batch_size)
        return Batch(
            self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
            self.terminals[idx],
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Action scaling between the actor's [-1, 1] and the env's Box
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ActionScaler:
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, space: gym.spaces.Box) -> ActionScaler:
        return cls(np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))

    def to_env(self, a: np.ndarray) -> np.ndarray:
        return (self.low + (np.asarray(a) + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)

    def to_unit(self, a: np.ndarray) -> np.ndarray:
        return (2.0 * (np.asarray(a) - self.low) / (self.high - self.low) - 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------
def save_snapshot(path: Path, agent: SAC, actor_params: nnx.State, meta: dict) -> None:
    """Pickle the actor (config, dims, numpy parameters) plus ``meta`` (step, eval return)."""
    blob = {
        "cfg": dataclasses.asdict(agent.cfg),
        "obs_dim": agent.obs_dim,
        "act_dim": agent.act_dim,
        "actor": jax.tree.map(np.asarray, nnx.to_pure_dict(actor_params)),
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(pickle.dumps(blob))
    tmp.replace(path)


def load_snapshot(path: str | Path) -> tuple[SAC, nnx.State, dict]:
    """Inverse of :func:`save_snapshot`: ``(agent, actor_params, meta)``."""
    blob = pickle.loads(Path(path).read_bytes())
    cfg = blob["cfg"]
    cfg["hidden_dims"] = tuple(cfg["hidden_dims"])
    agent, state = SAC.create(SACConfig(**cfg), blob["obs_dim"], blob["act_dim"])
    actor = state.actor
    nnx.replace_by_pure_dict(actor, blob["actor"])
    return agent, actor, blob["meta"]


def stochastic_policy(
    agent: SAC, actor_params: nnx.State, scaler: ActionScaler, *, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A seeded ``obs -> env action`` sampler of a (loaded) actor: D4RL's rollout policy."""
    key = jax.random.key(seed)

    def pi(obs: np.ndarray) -> np.ndarray:
        nonlocal key
        key, k = jax.random.split(key)
        return scaler.to_env(agent.act(actor_params, jnp.asarray(obs), k, False))

    return pi


def list_snapshots(directory: str | Path) -> list[dict]:
    """The snapshots of a run: ``[{"path", "step", "eval_return"}, ...]`` sorted by step."""
    index = Path(directory) / "snapshots.json"
    if not index.exists():
        return []
    return json.loads(index.read_text())


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SACResult:
    episodes: list
    """Every transition collected while learning, as episodes (the "replay" dataset)."""
    curve: list[dict]
    """``[{"step", "eval_return", "eval_std", "wall_s"}, ...]``."""
    snapshots: list[dict]
    """``[{"path", "step", "eval_return"}, ...]`` (empty when no snapshot directory)."""
    steps_per_s: float
    wall_s: float


def train(
    env: gym.Env,
    eval_env: gym.Env,
    cfg: SACConfig,
    *,
    snapshot_dir: str | Path | None = None,
    record_physics: bool = False,
    progress: Callable[[int], Any] | None = None,
    log: Callable[[str], Any] | None = None,
    reward_fn: Callable | None = None,
) -> SACResult:
    """Train SAC online for ``cfg.total_steps`` env steps; return the replay episodes etc.

    ``reward_fn`` is a hook for intrinsic-reward learners (see ``agents.collect.explore``):
    when given, ``reward_fn(sac_state, batch) -> (sac_state, metrics)`` replaces ``update``.
    """
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    agent, state = SAC.create(cfg, obs_dim, act_dim)
    update = reward_fn or agent.update
    scaler = ActionScaler.of(env.action_space)
    buffer = ReplayBuffer(cfg.buffer_size or cfg.total_steps, obs_dim, act_dim, cfg.seed)
    recorder = EpisodeRecorder(record_physics=record_physics)
    np_rng = np.random.default_rng(cfg.seed)
    act_key = jax.random.key(cfg.seed + 1)
    env.action_space.seed(cfg.seed)
    curve: list[dict] = []
    snapshots: list[dict] = []
    snap_dir = Path(snapshot_dir) if snapshot_dir else None

    def policy(deterministic: bool) -> Callable[[np.ndarray], np.ndarray]:
        def pi(o: np.ndarray) -> np.ndarray:
            nonlocal act_key
            act_key, k = jax.random.split(act_key)
            return scaler.to_env(agent.act(state.actor, jnp.asarray(o), k, deterministic))

        return pi

    def run_eval(step: int) -> None:
        returns = evaluate(eval_env, policy(True), cfg.eval_episodes, seed=cfg.seed + 10_000 + step)
        row = {
            "step": step,
            "eval_return": float(returns.mean()),
            "eval_std": float(returns.std()),
            "wall_s": time.perf_counter() - t0,
        }
        curve.append(row)
        if log:
            log(f"step {step:>8d}  eval return {row['eval_return']:8.1f} ± {row['eval_std']:.1f}")
        if snap_dir is not None:
            path = snap_dir / f"actor_{step:08d}.pkl"
            save_snapshot(path, agent, state.actor, row)
            snapshots.append({"path": str(path), "step": step, "eval_return": row["eval_return"]})
            (snap_dir / "snapshots.json").write_text(json.dumps(snapshots, indent=1))

    t0 = time.perf_counter()
    obs, _ = env.reset(seed=cfg.seed)
    eval_time = 0.0
    for step in range(1, cfg.total_steps + 1):
        if step <= cfg.learning_starts:
            unit_action = np_rng.uniform(-1.0, 1.0, size=act_dim).astype(np.float32)
            action = scaler.to_env(unit_action)
        else:
            action = policy(False)(obs)
            unit_action = scaler.to_unit(action)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        phys = physics_state(env) if record_physics else None
        buffer.add(obs, unit_action, reward, terminated, next_obs)
        recorder.add(obs, action, reward, terminated, truncated, next_obs, phys)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()

        if step > cfg.learning_starts and step % cfg.update_every == 0:
            for _ in range(cfg.updates_per_step):
                state, _info = update(state, buffer.sample(cfg.batch_size))
        if step % cfg.eval_every == 0 or step == cfg.total_steps:
            t_eval = time.perf_counter()
            run_eval(step)
            eval_time += time.perf_counter() - t_eval
        if progress:
            progress(1)

    wall = time.perf_counter() - t0
    return SACResult(
        episodes=recorder.finish(),
        curve=curve,
        snapshots=snapshots,
        steps_per_s=cfg.total_steps / max(wall - eval_time, 1e-9),
        wall_s=wall,
    )
