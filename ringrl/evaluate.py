"""``ringrl eval RUN_DIR_OR_CHECKPOINT``: in-context evaluation by rollout.

Protocol (Agentic Transformer): a *trial* is ``K`` successive episodes in one environment, each
conditioned on the agent's own previous episodes of that trial (relabelled to one fixed target
return, the dataset's best by default). ``T`` trials run in ``E`` parallel environments of a
``gymnasium.vector.SyncVectorEnv``; trial ``i`` runs in environment ``i % E``, fixed in advance,
so every environment runs a fixed quota of episodes and short episodes cannot crowd out long
ones (the short-episode bias of "first N episodes to finish"). Episode ``k`` of trial ``i`` is
reset with seed ``seed + 1000 * i + k``; the uniform-random baseline runs on the same seeds.

Acting: with a context of at least two whole episodes the agent decodes incrementally from a
KV cache (:class:`ringrl.decode.IncrementalPolicy`; sharded over ``"seq"`` with
``--seq-shards``), otherwise (DT, BC: windows of a few steps) it recomputes its window at
every step (:class:`RecomputePolicy`). Outputs in the run directory: ``eval.json`` and
``eval_curve.png`` (return against in-context episode index, mean +- std over trials).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Protocol

import numpy as np

# ---- policies ---------------------------------------------------------------------------------


class Policy(Protocol):
    def start_trial(self, rows: np.ndarray) -> None: ...
    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray: ...
    def record(
        self, act_EA: np.ndarray, rew_E: np.ndarray, done_E: np.ndarray, active_E: np.ndarray
    ) -> None: ...


class RandomPolicy:
    """Uniform actions in [-1, 1] (the agents' action range), seeded."""

    def __init__(self, num_envs: int, act_dim: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.shape = (num_envs, act_dim)

    def start_trial(self, rows: np.ndarray) -> None:
        pass

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.shape).astype(np.float32)

    def record(self, act_EA, rew_E, done_E, active_E) -> None:
        pass


class RecomputePolicy:
    """Full recompute: the agent's whole context (last ``context_steps`` steps) at every step.

    The same context rules as ``agent.act`` (history relabelled to the target, in order), padded
    to one fixed length so that a single compiled function serves every step.
    """

    def __init__(self, agent, num_envs: int, target_return: float, *, mesh=None):
        import jax
        from flax import nnx

        from ringrl.decode import TrialHistory
        from ringrl.sampler import padded_steps

        self.agent, self.E, self.target, self.mesh = agent, num_envs, float(target_return), mesh
        c, m = agent.cfg, agent.transformer.cfg
        ring = m.attention == "ring"
        shards = (mesh.shape["seq"] if mesh is not None else jax.device_count()) if ring else 1
        self.T = padded_steps(c.context_steps, c.step_tokens, m.block_size, shards, ring)
        self.histories = [TrialHistory() for _ in range(num_envs)]
        graphdef, self.state = nnx.split(agent)
        self._predict = jax.jit(
            lambda state, batch: nnx.merge(graphdef, state)(batch, mesh=mesh, deterministic=True)
        )

    def start_trial(self, rows: np.ndarray) -> None:
        from ringrl.decode import TrialHistory

        for e in np.flatnonzero(rows):
            self.histories[e] = TrialHistory()

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        from ringrl.sampler import build_chain, pad_chain

        chains, last = [], []
        for e in range(self.E):
            h = self.histories[e]
            eps = [*h.episodes, h.partial(obs_EO[e], self.agent.cfg.act_dim)]
            chain = build_chain(eps, target=self.target, sort=False, partial_last=True)
            n = min(len(chain["mask"]), self.agent.cfg.context_steps)
            chains.append(pad_chain({k: v[len(v) - n :] for k, v in chain.items()}, self.T))
            last.append(n - 1)
        batch = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
        pred_ETA = np.asarray(self._predict(self.state, batch))
        self._obs = np.asarray(obs_EO, np.float32)
        return pred_ETA[np.arange(self.E), last]

    def record(self, act_EA, rew_E, done_E, active_E) -> None:
        for e in np.flatnonzero(active_E):
            self.histories[e].add(self._obs[e], act_EA[e], rew_E[e])
            if done_E[e]:
                self.histories[e].end_episode()


# ---- rollouts -----------------------------------------------------------------------------------


def rollout(
    task: str,
    policy: Policy,
    *,
    trials: int,
    episodes: int,
    num_envs: int,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """``(returns [trials, episodes], env steps)``; trial ``i`` runs in env ``i % num_envs``."""
    import gymnasium as gym

    import envs

    E = min(num_envs, trials)
    vec = gym.vector.SyncVectorEnv(
        [lambda: envs.make(task) for _ in range(E)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )
    low, high = vec.single_action_space.low, vec.single_action_space.high
    queue = [list(range(e, trials, E)) for e in range(E)]  # each env's trials, in order
    trial = np.array([q.pop(0) for q in queue])
    episode = np.zeros(E, int)
    returns = np.zeros((trials, episodes))
    steps = 0
    active = np.ones(E, bool)
    obs, _ = vec.reset(seed=[seed + 1000 * int(i) for i in trial])
    policy.start_trial(active.copy())
    bar = _bar(progress, trials * episodes)
    while active.any():
        act = np.asarray(policy.act(obs, active), np.float32)
        obs_next, rew, term, trunc, _ = vec.step(np.clip(act, low, high))
        rew = np.where(active, rew, 0.0).astype(np.float32)
        done = (term | trunc) & active
        returns[trial[active], episode[active]] += rew[active]
        steps += int(active.sum())
        policy.record(act, rew, done, active)
        reset, seeds, new_trial = term | trunc, [None] * E, np.zeros(E, bool)
        for e in np.flatnonzero(done):
            bar is not None and bar.update(1)
            episode[e] += 1
            if episode[e] == episodes:  # trial over: next one of this env, or idle
                if queue[e]:
                    trial[e], episode[e], new_trial[e] = queue[e].pop(0), 0, True
                else:
                    active[e] = False
            seeds[e] = seed + 1000 * int(trial[e]) + int(episode[e])
        if reset.any():
            obs_reset, _ = vec.reset(seed=seeds, options={"reset_mask": reset})
            obs_next = np.where(reset[:, None], obs_reset, obs_next)
        if new_trial.any():
            policy.start_trial(new_trial)
        obs = obs_next
    vec.close()
    if bar is not None:
        bar.close()
    return returns, steps


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="episodes", unit="ep", dynamic_ncols=True, file=sys.stderr)


# ---- loading a trained agent --------------------------------------------------------------------


def find_run(path: str | Path) -> tuple[Path, int | None]:
    """``(run_dir, step)`` from a run directory or one of its checkpoint step directories."""
    p = Path(path).absolute()
    if (p / "config.yaml").exists():
        return p, None
    if p.name.isdigit() and (p.parent.parent / "config.yaml").exists():
        return p.parent.parent, int(p.name)
    raise FileNotFoundError(f"{path}: neither a run directory (config.yaml) nor a checkpoint")


def load_agent(path: str | Path, *, data_path: str | None = None):
    """``(agent, cfg, dataset, step)`` restored from a run directory or checkpoint."""
    from flax import nnx

    from ringrl.checkpoint import Checkpointer
    from ringrl.config import load_config
    from ringrl.parallel import make_mesh
    from ringrl.train import _load_episodes, init_state

    run_dir, step = find_run(path)
    cfg = load_config(run_dir / "config.yaml")
    if data_path:
        cfg.data.path = data_path
    ds = _load_episodes(cfg)
    mesh = make_mesh(1, 1)
    graphdef, rng_state, state = init_state(cfg, ds.obs_dim, ds.act_dim, mesh)
    ckpt = Checkpointer(run_dir / "checkpoints")
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint")
    pure, _ = ckpt.restore(step, nnx.to_pure_dict(state))
    ckpt.close()
    nnx.replace_by_pure_dict(state, pure)
    agent, _ = nnx.merge(graphdef, rng_state, state)
    return agent, cfg, ds, step


def make_policy(
    agent, num_envs: int, target: float, max_steps: int, *, decode: str, seq_shards: int
):
    """A KV-cache policy when the context holds >= 2 whole episodes (or asked), else recompute."""
    from ringrl.decode import IncrementalPolicy
    from ringrl.model import with_attention
    from ringrl.parallel import make_mesh

    if decode == "auto":
        decode = "cache" if agent.cfg.context_steps >= 2 * max_steps else "recompute"
    if decode == "cache":
        mesh = make_mesh(1, seq_shards) if seq_shards > 1 else None
        return IncrementalPolicy(agent, num_envs, target, max_steps, mesh=mesh), decode
    if agent.transformer.cfg.attention == "ring":  # one device is plenty for a window
        agent.transformer = with_attention(agent.transformer, "blockwise")
    return RecomputePolicy(agent, num_envs, target), decode


# ---- results -------------------------------------------------------------------------------------


def summarize(task: str, method: str, returns: np.ndarray, random_returns: np.ndarray) -> dict:
    """The ``eval.json`` numbers for ``returns [trials, episodes]``."""
    import envs

    def norm(x: float) -> float | None:
        try:
            return float(envs.normalized_score(task, x))
        except ValueError:  # a task without reference scores
            return None

    final = float(returns[:, -1].mean())
    best = float(returns.max(1).mean())
    rand = float(random_returns.mean())
    return {
        "task": task,
        "method": method,
        "trials": int(returns.shape[0]),
        "episodes": int(returns.shape[1]),
        "returns": returns.round(3).tolist(),
        "episode_return_mean": returns.mean(0).round(3).tolist(),
        "episode_return_std": returns.std(0).round(3).tolist(),
        "final_return_mean": final,
        "final_return_std": float(returns[:, -1].std()),
        "max_return_mean": best,
        "max_return_note": "AT paper's number: max over the in-context episodes of a trial, "
        "averaged over trials (optimistic; final_return_mean is the honest one)",
        "final_normalized_mean": norm(final),
        "max_normalized_mean": norm(best),
        "random_return_mean": rand,
        "random_normalized_mean": norm(rand),
        "random_returns": random_returns.round(3).tolist(),
    }


def plot_curve(results: list[dict], path: str | Path, title: str = "") -> None:
    """Return against in-context episode index (mean +- std over trials), one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        mean, std = np.asarray(r["episode_return_mean"]), np.asarray(r["episode_return_std"])
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, marker="o", label=r["method"])
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    if results:
        ax.axhline(results[0]["random_return_mean"], color="gray", ls=":", label="random")
        if "target_return" in results[0]:
            ax.axhline(results[0]["target_return"], color="k", ls="--", lw=0.8, label="target")
    ax.set_xlabel("episode in context (trial)")
    ax.set_ylabel("return")
    ax.set_title(title or (results[0]["task"] if results else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    path: str | Path,
    *,
    episodes: int | None = None,
    trials: int = 5,
    num_envs: int = 5,
    target: float | None = None,
    target_scale: float = 1.0,
    seed: int = 0,
    decode: str = "auto",
    seq_shards: int = 1,
    task: str | None = None,
    data_path: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate a run (see the module docstring); writes ``eval.json`` and ``eval_curve.png``."""
    import envs

    agent, cfg, ds, step = load_agent(path, data_path=data_path)
    task = task or ds.metadata.get("task") or cfg.data.task
    if not task:
        raise ValueError("the dataset names no task; pass --task")
    kind = cfg.agent.kind
    K = episodes or (cfg.agent.num_trajectories if kind == "at" else 1)
    best = float(ds.returns.max())
    target = best * target_scale if target is None else float(target)
    max_steps = int(envs.max_episode_steps(task))
    policy, mode = make_policy(
        agent, min(num_envs, trials), target, max_steps, decode=decode, seq_shards=seq_shards
    )
    t0 = time.perf_counter()
    returns, steps = rollout(
        task, policy, trials=trials, episodes=K, num_envs=num_envs, seed=seed, progress=progress
    )
    wall = time.perf_counter() - t0
    rand = RandomPolicy(min(num_envs, trials), ds.act_dim, seed)
    random_returns, _ = rollout(task, rand, trials=trials, episodes=1, num_envs=num_envs, seed=seed)
    result = summarize(task, kind, returns, random_returns[:, 0])
    result.update(
        target_return=target,
        dataset_best_return=best,
        dataset_mean_return=float(ds.returns.mean()),
        checkpoint_step=step,
        decode=mode,
        context_steps=agent.cfg.context_steps,
        wall_s=round(wall, 2),
        env_steps=steps,
        env_steps_per_s=round(steps / wall, 1),
    )
    run_dir, _ = find_run(path)
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    plot_curve([result], out / "eval_curve.png", f"{task}: {cfg.name}")
    return result


# ---- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="run directory, or a checkpoint (<run>/checkpoints/<step>)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="in-context episodes per trial (default: AT N, DT/BC 1)",
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--envs", type=int, default=5, help="parallel environments")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="target return (default: dataset best x --target-scale)",
    )
    parser.add_argument("--target-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode", choices=["auto", "cache", "recompute"], default="auto")
    parser.add_argument(
        "--seq-shards",
        type=int,
        default=1,
        help="devices the KV cache is sharded over (ring-style decoding)",
    )
    parser.add_argument("--task", default=None, help="env id (default: the dataset's task)")
    parser.add_argument("--data", default=None, help="dataset path (default: the config's)")
    parser.add_argument("--out", default=None, help="output directory (default: the run dir)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    r = evaluate(
        args.path,
        episodes=args.episodes,
        trials=args.trials,
        num_envs=args.envs,
        target=args.target,
        target_scale=args.target_scale,
        seed=args.seed,
        decode=args.decode,
        seq_shards=args.seq_shards,
        task=args.task,
        data_path=args.data,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    curve = " ".join(f"{x:.1f}" for x in r["episode_return_mean"])
    print(
        f"{r['task']} {r['method']}: final {r['final_return_mean']:.1f} ± "
        f"{r['final_return_std']:.1f}, max-over-episodes (AT paper) {r['max_return_mean']:.1f}, "
        f"random {r['random_return_mean']:.1f}; per-episode mean: {curve}"
    )
    return 0
