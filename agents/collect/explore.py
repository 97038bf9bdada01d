"""Task-agnostic exploration: RND intrinsic reward + SAC learner (the ExoRL recipe).

Random Network Distillation (Burda et al. 2018, arXiv 1810.12894) as in URLB/ExoRL's ``rnd``
agent: a frozen random *target* network embeds (normalised) observations, a *predictor* learns to
match it on visited states, and the prediction error, divided by its running standard deviation,
is the reward. States the predictor has seen often are predicted well (low reward); novel states
are not (high reward). The extrinsic reward is ignored entirely; the physics states are saved so
that any task of the domain can be relabelled afterwards (``envs.relabel_rewards``).

The learner is our SAC (``agents.collect.sac``) rather than URLB's DDPG: SAC's entropy bonus adds
state-space coverage of its own, and it reuses one well-tested update. Everything below — RND
networks, normaliser, the jitted joint update and the collection loop — is in this file.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from agents.collect.common import EpisodeRecorder, physics_state
from agents.collect.sac import (
    MLP,
    SAC,
    ActionScaler,
    Batch,
    ReplayBuffer,
    SACConfig,
    SACResult,
    SACState,
)


# --------------------------------------------------------------------------------------------
# Hyperparameters (URLB/ExoRL ``rnd`` agent values unless noted)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RNDConfig:
    rep_dim: int = 512
    """Embedding size of target and predictor (URLB: 512)."""
    hidden_dims: tuple[int, ...] = (256, 256)
    """URLB: 1024 wide; 256 here to stay fast on CPU."""
    lr: float = 1e-4
    """Predictor learning rate (URLB: 1e-4)."""
    scale: float = 1.0
    """Intrinsic reward scale (URLB ``rnd_scale``: 1.0)."""
    obs_clip: float = 5.0
    """Normalised observations are clipped to ``[-obs_clip, obs_clip]`` (RND paper: 5)."""


@dataclasses.dataclass
class ExploreConfig:
    sac: SACConfig = dataclasses.field(default_factory=SACConfig)
    rnd: RNDConfig = dataclasses.field(default_factory=RNDConfig)
    log_every: int = 10_000
    """Steps between learning-curve points (mean intrinsic / extrinsic reward)."""


# --------------------------------------------------------------------------------------------
# RND: running statistics, networks, reward, update
# --------------------------------------------------------------------------------------------
class RunningStats(NamedTuple):
    """Mean and variance of a stream, merged batch by batch (Chan et al.)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @staticmethod
    def init(shape: tuple[int, ...]) -> RunningStats:
        return RunningStats(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))

    def update(self, x: jax.Array) -> RunningStats:
        b_mean, b_var, n = jnp.mean(x, axis=0), jnp.var(x, axis=0), x.shape[0]
        delta, total = b_mean - self.mean, self.count + n
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        return RunningStats(mean, m2 / total, total)


class RNDState(NamedTuple):
    predictor: nnx.State
    target: nnx.State
    opt: optax.OptState
    obs_stats: RunningStats
    reward_stats: RunningStats


@dataclasses.dataclass(frozen=True)
class RND:
    """``RND.create(cfg, obs_dim, key) -> (rnd, state)``; ``rnd.reward(state, obs)``;
    ``rnd.update(state, obs) -> (state, metrics)`` (pure functions, jit them)."""

    cfg: RNDConfig
    obs_dim: int
    net_def: Any = None
    tx: optax.GradientTransformation = None

    @classmethod
    def create(cls, cfg: RNDConfig, obs_dim: int, key: jax.Array) -> tuple[RND, RNDState]:
        k_pred, k_target = jax.random.split(key)
        net_def, predictor = nnx.split(
            MLP(obs_dim, cfg.hidden_dims, cfg.rep_dim, rngs=nnx.Rngs(k_pred))
        )
        _, target = nnx.split(MLP(obs_dim, cfg.hidden_dims, cfg.rep_dim, rngs=nnx.Rngs(k_target)))
        tx = optax.adam(cfg.lr)
        state = RNDState(
            predictor=predictor,
            target=target,
            opt=tx.init(predictor),
            obs_stats=RunningStats.init((obs_dim,)),
            reward_stats=RunningStats.init(()),
        )
        return cls(cfg, obs_dim, net_def, tx), state

    def prediction_error(self, predictor: nnx.State, state: RNDState, obs: jax.Array) -> jax.Array:
        """Per-state mean squared error between predictor and frozen target embeddings."""
        s = state.obs_stats
        x = jnp.clip((obs - s.mean) / jnp.sqrt(s.var + 1e-8), -self.cfg.obs_clip, self.cfg.obs_clip)
        pred = nnx.merge(self.net_def, predictor)(x)
        tgt = jax.lax.stop_gradient(nnx.merge(self.net_def, state.target)(x))
        return jnp.mean((pred - tgt) ** 2, axis=-1)

    def reward(self, state: RNDState, obs: jax.Array) -> jax.Array:
        """Intrinsic reward: prediction error over its running standard deviation, scaled."""
        err = self.prediction_error(state.predictor, state, obs)
        return self.cfg.scale * err / jnp.sqrt(state.reward_stats.var + 1e-8)

    def update(self, state: RNDState, obs: jax.Array) -> tuple[RNDState, dict]:
        """Update the observation statistics, then one predictor step on ``obs``; also updates
        the running statistics of the prediction error (the reward normaliser)."""
        state = state._replace(obs_stats=state.obs_stats.update(obs))

        def loss_fn(p: nnx.State) -> tuple[jax.Array, jax.Array]:
            err = self.prediction_error(p, state, obs)
            return jnp.mean(err), err

        (loss, err), g = jax.value_and_grad(loss_fn, has_aux=True)(state.predictor)
        upd, opt = self.tx.update(g, state.opt, state.predictor)
        predictor = optax.apply_updates(state.predictor, upd)
        new = state._replace(
            predictor=predictor, opt=opt, reward_stats=state.reward_stats.update(err)
        )
        return new, {"rnd_loss": loss}


# --------------------------------------------------------------------------------------------
# Joint update: RND on next_obs, intrinsic reward replaces the extrinsic one, SAC step
# --------------------------------------------------------------------------------------------
class ExploreState(NamedTuple):
    sac: SACState
    rnd: RNDState


def make_update(sac: SAC, rnd: RND) -> Callable[[ExploreState, Batch], tuple[ExploreState, dict]]:
    def update(state: ExploreState, batch: Batch) -> tuple[ExploreState, dict]:
        rnd_state, info = rnd.update(state.rnd, batch.next_obs)
        intrinsic = jax.lax.stop_gradient(rnd.reward(rnd_state, batch.next_obs))
        sac_state, sac_info = sac.update_fn(state.sac, batch._replace(rewards=intrinsic))
        return ExploreState(sac_state, rnd_state), info | sac_info | {
            "intrinsic_reward": jnp.mean(intrinsic)
        }

    return jax.jit(update, donate_argnums=0)


# --------------------------------------------------------------------------------------------
# Collection loop
# --------------------------------------------------------------------------------------------
def train(
    env: gym.Env,
    cfg: ExploreConfig,
    *,
    progress: Callable[[int], Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> SACResult:
    """Explore for ``cfg.sac.total_steps`` env steps; return every transition as episodes
    (with physics states). ``curve`` rows: ``step``, ``intrinsic_reward`` (mean per step over
    the last interval, on sampled batches) and ``eval_return`` (mean *extrinsic* return of the
    episodes finished in the interval, for reference only)."""
    scfg = cfg.sac
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    sac, sac_state = SAC.create(scfg, obs_dim, act_dim)
    rnd, rnd_state = RND.create(cfg.rnd, obs_dim, jax.random.key(scfg.seed + 2))
    state = ExploreState(sac_state, rnd_state)
    update = make_update(sac, rnd)
    scaler = ActionScaler.of(env.action_space)
    buffer = ReplayBuffer(scfg.buffer_size or scfg.total_steps, obs_dim, act_dim, scfg.seed)
    recorder = EpisodeRecorder(record_physics=True)
    np_rng = np.random.default_rng(scfg.seed)
    act_key = jax.random.key(scfg.seed + 1)
    curve: list[dict] = []
    intrinsic: list[float] = []
    ep_return, ext_returns = 0.0, []

    t0 = time.perf_counter()
    obs, _ = env.reset(seed=scfg.seed)
    for step in range(1, scfg.total_steps + 1):
        if step <= scfg.learning_starts:
            unit_action = np_rng.uniform(-1.0, 1.0, size=act_dim).astype(np.float32)
        else:
            act_key, k = jax.random.split(act_key)
            unit_action = np.asarray(sac.act(state.sac.actor, jnp.asarray(obs), k, False))
        action = scaler.to_env(unit_action)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, unit_action, reward, terminated, next_obs)
        recorder.add(obs, action, reward, terminated, truncated, next_obs, physics_state(env))
        ep_return += float(reward)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            ext_returns.append(ep_return)
            ep_return = 0.0

        if step > scfg.learning_starts and step % scfg.update_every == 0:
            state, info = update(state, buffer.sample(scfg.batch_size))
            if step % 100 < scfg.update_every:
                intrinsic.append(float(info["intrinsic_reward"]))
        if step % cfg.log_every == 0 or step == scfg.total_steps:
            row = {
                "step": step,
                "intrinsic_reward": float(np.mean(intrinsic)) if intrinsic else 0.0,
                "eval_return": float(np.mean(ext_returns)) if ext_returns else 0.0,
                "eval_std": float(np.std(ext_returns)) if ext_returns else 0.0,
                "wall_s": time.perf_counter() - t0,
            }
            curve.append(row)
            intrinsic, ext_returns = [], []
            if log:
                log(
                    f"step {step:>8d}  intrinsic/step {row['intrinsic_reward']:.3f}  "
                    f"extrinsic return {row['eval_return']:.1f}"
                )
        if progress:
            progress(1)

    wall = time.perf_counter() - t0
    return SACResult(
        episodes=recorder.finish(),
        curve=curve,
        snapshots=[],
        steps_per_s=scfg.total_steps / wall,
        wall_s=wall,
    )
