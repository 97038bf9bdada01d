"""``ringrl train CONFIG [--run-dir DIR] [--set key=value ...]``: offline training of an agent.

The run directory holds ``config.yaml`` (the resolved config), ``data.json`` (what evaluation
needs of the data: its absolute and run-relative paths, sizes, task, return statistics),
``metrics.jsonl``, TensorBoard events (``tb/``), orbax checkpoints (``checkpoints/``) and
``loss.png``. Running the same command again resumes from the last checkpoint, only when the
saved config matches (:func:`ringrl.rundir.check_resumable`: the step count may grow, logging,
checkpointing and evaluation settings may change); a lock (``.lock``) keeps a second trainer
out. The training state (parameters, optimizer state, dataset statistics) and the sampler's step
are checkpointed; batches and dropout keys are functions of ``(seed, step)``, so a resumed run
ends with the same parameters as an uninterrupted one. A non-finite loss stops the run (exit
code 1) before any checkpoint of the poisoned state. A config that does not match the run
directory's, a locked run directory, or a dataset that does not fit its task's environment is a
one-line error with exit code 2, before ``config.yaml`` or anything else of the run is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agents import BC, AgenticTransformer, AlgorithmDistillation, DecisionTransformer
from agents.agentic import AgentConfig
from ringrl.config import Config, ConfigError, add_override_argument, load_config
from ringrl.context import completion_level, data_scales, has_visible_completion
from ringrl.parallel import make_mesh, shard_batch
from ringrl.sampler import ChainSampler, Prefetcher, SamplerConfig

AGENTS = {
    "at": AgenticTransformer,
    "dt": DecisionTransformer,
    "bc": BC,
    "ad": AlgorithmDistillation,
}


class NonFiniteLoss(RuntimeError):
    pass


class DatasetMismatch(ConfigError):
    """The dataset's observation / action sizes do not fit its task's environment."""


# ---- building blocks (also used by the throughput benchmark) -----------------------------------


def agent_config(cfg: Config, obs_dim: int, act_dim: int, discrete: bool = False) -> AgentConfig:
    a = cfg.agent
    return AgentConfig(
        obs_dim=obs_dim,
        act_dim=act_dim,
        tokens_per_step=a.tokens_per_step,
        use_returns=a.kind not in ("bc", "ad"),
        use_rewards=a.kind == "ad" or None,
        max_timestep=a.max_timestep,
        context_steps=a.num_trajectories * a.steps_per_trajectory,
        discrete=discrete,
    )


def sampler_config(
    cfg: Config, acfg: AgentConfig, mesh: Mesh, success_return: float = float("inf")
) -> SamplerConfig:
    return SamplerConfig(
        num_trajectories=cfg.agent.num_trajectories,
        steps_per_trajectory=cfg.agent.steps_per_trajectory,
        random_window_start=cfg.agent.random_window_start,
        batch_size=cfg.train.batch_size,
        tokens_per_step=acfg.step_tokens,
        block_size=cfg.model.block_size,
        seq_shards=mesh.shape["seq"],
        ring=cfg.model.attention == "ring",
        success_return=success_return,
        order="played" if cfg.agent.kind == "ad" else "sorted",
        chain="consecutive" if cfg.agent.kind == "ad" else "random",
    )


def chain_groups(cfg: Config, ds) -> list | None:
    """Episode groups a chain stays within: AD's learning histories; the task ids of a
    multi-task dataset for the other agents; None (one group) for single-task data."""
    if cfg.agent.kind == "ad":
        return ds.histories()
    ids = ds.task_ids
    if ids is None:
        return None
    return [np.flatnonzero(ids == t) for t in np.unique(ids)]


def data_statistics(cfg: Config, ds) -> dict:
    """What the agent learns from the data before training, stored in its checkpoint:
    observation mean/std, return and reward scales, the completion level (ringrl.context)."""
    obs_all = np.concatenate([ep.observations for ep in ds.episodes])
    return_scale, reward_scale = data_scales(ds.episodes)
    if cfg.agent.reward_scale is not None:
        return_scale = reward_scale = cfg.agent.reward_scale
    return {
        "obs_mean": obs_all.mean(0),
        "obs_std": obs_all.std(0),
        "return_scale": return_scale,
        "reward_scale": reward_scale,
        "success_return": completion_level(ds.returns, cfg.agent.completion_quantile),
    }


def lr_schedule(cfg: Config) -> optax.Schedule:
    o = cfg.optim
    warmup = min(o.warmup_steps, cfg.train.steps - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(cfg.train.steps, warmup + 1), end_value=o.lr * o.end_lr_ratio
    )


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with warmup + cosine decay (no decay on vectors)."""
    o = cfg.optim
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(lr_schedule(cfg), o.b1, o.b2, weight_decay=o.weight_decay, mask=decay_mask),
    )


def init_state(
    cfg: Config,
    obs_dim: int,
    act_dim: int,
    mesh: Mesh,
    stats: dict | None = None,
    discrete: bool = False,
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, rng_state, state)`` of ``(agent, optimizer)``, replicated over ``mesh``.

    ``state`` (parameters, optimizer state, dataset statistics) is what gets checkpointed; the
    dropout RNG is reseeded from ``(seed, step)`` at every step, so it needs no saving.
    ``stats``: :func:`data_statistics` (None: placeholders, restored from a checkpoint).
    """
    seed = cfg.train.seed

    def create() -> tuple[nnx.Module, nnx.Optimizer]:
        agent = AGENTS[cfg.agent.kind](
            agent_config(cfg, obs_dim, act_dim, discrete),
            cfg.model,
            rngs=nnx.Rngs(params=seed, dropout=seed),
            **(stats or {}),
        )
        return agent, nnx.Optimizer(agent, make_optimizer(cfg), wrt=nnx.Param)

    # One compiled program for the whole initialisation (the same values as running it op by
    # op, which compiles every distinct random-initialiser shape separately: seconds on CPU).
    graphdef, rng_state, state = nnx.split(nnx.jit(create)(), nnx.RngState, ...)
    replicated = NamedSharding(mesh, P())
    return graphdef, jax.device_put(rng_state, replicated), jax.device_put(state, replicated)


def make_train_step(graphdef: nnx.GraphDef, cfg: Config, mesh: Mesh):
    """``step_fn(state, rng_state, batch, step) -> (state, metrics)``, jitted, state donated."""
    schedule = lr_schedule(cfg)
    base_key = jax.random.key(cfg.train.seed)

    def step_fn(state, rng_state, batch, step):
        agent, opt = nnx.merge(graphdef, rng_state, state)
        nnx.reseed(agent, dropout=jax.random.fold_in(base_key, step))
        loss_fn = lambda m: m.loss(batch, mesh=mesh, deterministic=False)
        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(agent)
        opt.update(agent, grads)
        _, _, new_state = nnx.split((agent, opt), nnx.RngState, ...)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step)}
        return new_state, metrics

    return jax.jit(step_fn, donate_argnums=0)


def device_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return shard_batch(mesh, batch)


# ---- the training loop --------------------------------------------------------------------------


def load_episodes(cfg: Config):
    """The dataset of ``cfg.data`` (see :func:`ringrl.data.load_training_data`)."""
    from ringrl.data import load_training_data

    d = cfg.data
    return load_training_data(d.path, format=d.format, task=d.task, top_fraction=d.top_fraction)


def train(cfg: Config, run_dir: str | Path, *, progress: bool = True, dataset=None) -> int:
    """Train (or resume) ``cfg`` in ``run_dir``; 0 on success, 1 on a non-finite loss.

    Refused before anything in ``run_dir`` changes: :class:`ringrl.rundir.ConfigMismatch` when
    ``run_dir`` holds a run of another config, :class:`ringrl.rundir.RunDirLocked` while another
    trainer holds the run directory's lock, :class:`DatasetMismatch` when the dataset does not
    fit its task's environment. ``dataset``: ``cfg.data``'s dataset, already loaded (a study
    that trains many runs on one dataset loads it once).
    """
    from ringrl.rundir import RunDirLock, check_resumable

    run_dir = Path(run_dir)
    check_resumable(run_dir, cfg)  # read-only: a refused run leaves nothing behind
    run_dir.mkdir(parents=True, exist_ok=True)
    index = jax.process_index()  # one lock per process of a multi-host run
    with RunDirLock(run_dir, ".lock" if index == 0 else f".lock.{index}"):
        check_resumable(run_dir, cfg)  # again, now that no other trainer can write it
        return _train_locked(cfg, run_dir, progress, dataset)


def _train_locked(cfg: Config, run_dir: Path, progress: bool, dataset=None) -> int:
    from ringrl.checkpoint import Checkpointer
    from ringrl.metrics import MetricsLogger
    from ringrl.rundir import write_config

    t = cfg.train
    ds = dataset if dataset is not None else load_episodes(cfg)
    check_task_spaces(cfg, ds)
    mesh = make_mesh(t.mesh_data, t.mesh_seq)
    if t.batch_size % mesh.shape["data"]:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must divide by train.mesh_data")
    _check_stored_dims(run_dir, cfg, ds)
    write_config(cfg, run_dir)
    stats = data_statistics(cfg, ds)
    graphdef, rng_state, state = init_state(
        cfg, ds.obs_dim, ds.act_dim, mesh, stats, discrete=ds.discrete
    )
    acfg = agent_config(cfg, ds.obs_dim, ds.act_dim, ds.discrete)
    scfg = sampler_config(cfg, acfg, mesh, stats["success_return"])
    groups = chain_groups(cfg, ds)
    sampler = ChainSampler(
        ds.episodes, scfg, seed=t.seed, groups=groups, num_actions=ds.num_actions
    )
    _write_data_report(run_dir, cfg, ds, stats, sampler)

    ckpt = Checkpointer(run_dir / "checkpoints", keep=t.keep_checkpoints)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        pure, record = ckpt.restore(latest, nnx.to_pure_dict(state))
        nnx.replace_by_pure_dict(state, pure)
        start = int(record["sampler"]["step"])
        print(f"resuming from {ckpt.directory}/{latest} (step {start})", file=sys.stderr)
    if start >= t.steps:
        print(f"{run_dir}: already trained for {start} steps", file=sys.stderr)
        ckpt.close()
        return 0

    train_step = make_train_step(graphdef, cfg, mesh)
    npc = jax.process_count()
    local = t.batch_size // npc
    rows = range(jax.process_index() * local, (jax.process_index() + 1) * local)
    prefetch = Prefetcher(sampler, start_step=start, size=t.prefetch, rows=rows)
    logger = MetricsLogger(run_dir, start_step=start)
    tokens_per_step = t.batch_size * sampler.num_tokens
    bar = _progress(progress, start, t.steps, cfg.name)

    last_values: dict = {}  # the last logged step's loss, for the closing summary
    pending: list[tuple[int, dict]] = []  # steps dispatched but whose loss is not read yet
    last_good, window_t0, window = start, time.perf_counter(), 0
    status = 0

    def settle() -> None:
        """Read the pending losses (one step behind the device), stop on a non-finite one."""
        nonlocal window_t0, window
        for step, metrics in pending:
            values = {k: float(v) for k, v in metrics.items()}
            if not math.isfinite(values["loss"]):
                raise NonFiniteLoss(f"non-finite loss {values['loss']} at step {step}")
            window += 1
            if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
                now = time.perf_counter()
                values["tokens_per_s"] = tokens_per_step * window / max(now - window_t0, 1e-9)
                window_t0, window = now, 0
                logger.log(step + 1, values)
                last_values.update(step=step + 1, loss=values["loss"])
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_s']:.3g}"
                    )
        pending.clear()

    try:
        for step, batch in prefetch:
            if step >= t.steps:
                break
            if step == t.nan_at_step:
                batch = {**batch, "observations": np.full_like(batch["observations"], np.nan)}
            state, metrics = train_step(state, rng_state, device_batch(mesh, batch), step)
            if len(pending) >= 1:
                settle()
            pending.append((step, metrics))
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % t.ckpt_every == 0 or done == t.steps:
                settle()
                ckpt.save(done, nnx.to_pure_dict(state), {"sampler": {"step": done}})
                last_good = done
            if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                settle()
                logger.log(done, evaluate_now(cfg, graphdef, rng_state, state, ds))
            if done == t.steps:
                break
    except NonFiniteLoss as e:
        ckpt.wait()
        where = f"step {last_good} in {ckpt.directory}" if last_good else "none saved"
        print(f"error: {e}; training stopped. Last good checkpoint: {where}", file=sys.stderr)
        status = 1
    finally:
        prefetch.close()
        if bar is not None:
            bar.close()
        ckpt.close()
        logger.close()
    if status == 0:
        print(_closing_summary(run_dir, last_values), file=sys.stderr)
    return status


def _closing_summary(run_dir: Path, last: dict) -> str:
    """What a finished run reached and where its outputs are."""
    loss = f"final loss {last['loss']:.4f} at step {last['step']}" if last else "no step logged"
    extra = ", eval_during_training.png" if (run_dir / "eval_during_training.png").exists() else ""
    return (
        f"trained {run_dir}: {loss}; outputs there: config.yaml, data.json, metrics.jsonl, "
        f"tb/, checkpoints/, loss.png{extra}. Evaluate: ringrl eval {run_dir}"
    )


def dataset_task(cfg: Config, ds) -> str | None:
    """The task the dataset names (its metadata's ``task``, else ``data.task``), or None."""
    task = ds.metadata.get("task") or cfg.data.task
    return str(task) if task else None


def check_task_spaces(cfg: Config, ds) -> None:
    """Check the dataset's sizes against its task's environment, before anything compiles.

    Raises :class:`DatasetMismatch` naming the dataset file, the task and both shapes when
    they differ (or one's actions are discrete and the other's continuous). A task that cannot
    be made is an error only when training evaluates (``train.eval_every``), else a warning.
    """
    task = dataset_task(cfg, ds)
    if task is None:
        return
    where = cfg.data.path
    try:
        import envs

        env = envs.make(task)
    except Exception as e:  # unknown id, or a simulator that cannot start here
        why = (str(e).splitlines() or [""])[0] or type(e).__name__
        msg = f"{where}: its task {task!r} cannot be made ({why})"
        if cfg.train.eval_every:
            raise DatasetMismatch(
                f"{msg}; train.eval_every needs it (set data.task, or train.eval_every=0)"
            ) from None
        print(f"warning: {msg}; not checking the dataset's sizes against it", file=sys.stderr)
        return
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    import gymnasium

    def describe(continuous: bool, shape) -> str:
        return f"{shape} continuous" if continuous else f"discrete({shape})"

    continuous = isinstance(act_space, gymnasium.spaces.Box)
    env_obs = tuple(getattr(obs_space, "shape", None) or ())
    env_act = tuple(act_space.shape) if continuous else int(getattr(act_space, "n", -1))
    data_act = ds.num_actions if ds.discrete else (ds.act_dim,)
    if env_obs != (ds.obs_dim,) or continuous == ds.discrete or env_act != data_act:
        raise DatasetMismatch(
            f"{where} does not fit its task {task!r}: dataset observations ({ds.obs_dim},), "
            f"actions {describe(not ds.discrete, data_act)}; environment observations "
            f"{env_obs}, actions {describe(continuous, env_act)}"
        )


def _check_stored_dims(run_dir: Path, cfg: Config, ds) -> None:
    """A run with checkpoints resumes only on data of the sizes it was trained on."""
    from ringrl.rundir import ConfigMismatch, read_data_report

    ckpts = run_dir / "checkpoints"
    if not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        return
    report = read_data_report(run_dir)
    stored = (report.get("obs_dim"), report.get("act_dim"))
    if None not in stored and stored != (ds.obs_dim, ds.act_dim):
        raise ConfigMismatch(
            f"{run_dir} was trained on observations/actions of sizes {stored[0]}/{stored[1]}; "
            f"{cfg.data.path} has {ds.obs_dim}/{ds.act_dim}: use another --run-dir"
        )


def evaluate_now(cfg: Config, graphdef, rng_state, state, ds) -> dict[str, float]:
    """A few in-context trials of the current parameters (``train.eval_every``).

    The same reset seeds at every evaluation (so points are comparable), in a block no final
    evaluation or other run uses (:func:`ringrl.evaluate.seed_block`).
    """
    from ringrl.evaluate import run_trials, seed_block

    task = dataset_task(cfg, ds)
    if not task:
        raise ConfigError("train.eval_every needs a task: the dataset names none (set data.task)")
    t, a = cfg.train, cfg.agent
    episodes = t.eval_episodes or (2 * a.num_trajectories if a.kind in ("at", "ad") else 1)
    agent, _ = nnx.merge(graphdef, rng_state, state)
    returns, _ = run_trials(
        agent,
        task,
        trials=t.eval_trials,
        episodes=episodes,
        num_envs=t.eval_trials,
        target=float(ds.returns.max()),
        seed=seed_block(99, t.seed),
    )
    return {
        "eval_final_return": float(returns[:, -1].mean()),
        "eval_mean_return": float(returns.mean()),
        "eval_first_return": float(returns[:, 0].mean()),
    }


def _write_data_report(run_dir: Path, cfg: Config, ds, stats: dict, sampler: ChainSampler) -> None:
    """``data.json``: what the agent learned from the data, whether the data fits chains, and
    what evaluation needs without the config's working directory: the dataset's absolute path
    and its path relative to the run directory, sizes, task and return statistics."""
    from ringrl.rundir import data_locations, write_text_atomic

    N = cfg.agent.num_trajectories
    visible, targets, count = 0, 0.0, 200  # chains sampled one at a time, none kept
    for i in range(count):
        chain = sampler.sample_chain(np.random.default_rng([cfg.train.seed, 2**32 - 1, i]))
        visible += has_visible_completion(chain)
        targets += float(chain["mask"].sum())
    q = np.percentile(ds.returns, [0, 25, 50, 75, 100])
    report = {
        "dataset": str(cfg.data.path),
        **data_locations(str(cfg.data.path), run_dir, ds.metadata.get("source")),
        "obs_dim": int(ds.obs_dim),
        "act_dim": int(ds.act_dim),
        "task": dataset_task(cfg, ds),
        "dataset_best_return": float(ds.returns.max()),
        "dataset_mean_return": float(ds.returns.mean()),
        "episodes": int(ds.num_episodes),
        "steps": int(ds.num_steps),
        "returns": dict(zip(("min", "p25", "median", "p75", "max"), map(float, q), strict=True)),
        "return_scale": float(stats["return_scale"]),
        "reward_scale": float(stats["reward_scale"]),
        "success_return": float(stats["success_return"]),
        "completion_quantile": cfg.agent.completion_quantile,
        "visible_completion_fraction": visible / count,
        "action_targets_per_update": targets / count * cfg.train.batch_size,
        "episodes_per_chain": N,
        "discrete": bool(ds.discrete),
        **task_split(ds),
        "enough_episodes": bool(ds.num_episodes >= EPISODES_PER_CHAIN_EPISODE * N),
    }
    warning = few_episodes_warning(cfg.data.path, ds.num_episodes, N)
    if warning:
        print(warning, file=sys.stderr)
    write_text_atomic(run_dir / "data.json", json.dumps(report, indent=1))


EPISODES_PER_CHAIN_EPISODE = 10  # a dataset fits chains of N episodes with >= 10 N of them


def few_episodes_warning(path: str | Path, num_episodes: int, N: int) -> str | None:
    """The warning for a dataset with fewer than ``10 N`` episodes for chains of ``N > 1``
    (a chain then often holds one episode twice); None otherwise. A single-episode sample
    (N = 1: whole episodes, or DT's and BC's windows) repeats nothing, so it is not warned
    about (BC-10% keeps a tenth of the episodes by design); ``data.json`` records
    ``enough_episodes`` either way."""
    need = EPISODES_PER_CHAIN_EPISODE * N
    if N <= 1 or num_episodes >= need:
        return None
    return (
        f"warning: {path} has {num_episodes} episodes, fewer than "
        f"{EPISODES_PER_CHAIN_EPISODE} x N = {need} for chains of {N}: chains will often repeat "
        "episodes"
    )


def task_split(ds) -> dict:
    """The dataset's task split (``train_task_ids`` / ``test_task_ids`` of its metadata, and
    the task ids its episodes were played on), for evaluation on held-out instances."""
    out = {}
    for key in ("train_task_ids", "test_task_ids"):
        if key in ds.metadata:
            out[key] = [int(i) for i in np.asarray(ds.metadata[key]).reshape(-1)]
    if ds.task_ids is not None:
        out["data_task_ids"] = [int(i) for i in np.unique(ds.task_ids)]
    return out


def _progress(enabled: bool, start: int, total: int, name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)


# ---- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML preset, e.g. configs/local/walker_run/at_ra_n128.yaml")
    parser.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")
    add_override_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--host-devices",
        type=int,
        default=None,
        help="CPU only: emulate this many devices (XLA host platform device count)",
    )


def set_host_devices(n: int) -> None:
    """Emulate ``n`` CPU devices; must run before JAX initialises its backends."""
    from ringrl.cli import emulate_host_devices

    emulate_host_devices(n)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.host_devices or cfg.train.host_devices:
        set_host_devices(args.host_devices or cfg.train.host_devices)
    from ringrl.data import DatasetError
    from ringrl.rundir import RunDirLocked

    run_dir = args.run_dir or os.path.join("runs", cfg.name)
    try:
        return train(cfg, run_dir, progress=not args.no_progress)
    except (RunDirLocked, DatasetMismatch, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
    return 2
