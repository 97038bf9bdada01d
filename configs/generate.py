"""Generate the preset YAML files of ``configs/`` from one compact table.

    python configs/generate.py          # rewrite configs/{paper,local}/<task>/<method>.yaml
    python configs/generate.py --check  # exit 1 if a file is missing or stale

The grid is the Ring Attention paper's ExoRL comparison (Table 5): six tasks, at two scales.
``paper``: the paper's sizes (a ~350M-parameter model, 1000-step trajectories, 4 tokens per step,
N = 32 / 128 trajectories -> 128K / 512K tokens), for accelerators; its methods ``bc10``, ``dt``,
``at_me_n32`` (memory-efficient attention with an ordinary feed-forward, no rematerialisation),
``at_bpt_n32`` (blockwise attention and feed-forward, rematerialised layers), ``at_ra_n128``
(ring attention over the ``seq`` mesh axis). ``local``: shrunk to train on a 2-core CPU in
minutes; its methods ``bc10``, ``dt``, ``at_n1`` (one whole episode: the ablation that isolates
the chain), ``at_bpt_n2`` and ``at_ra_n4`` -- a name says how many trajectories a chain holds.
ME and BPT compute the same function (they differ only in memory), so the local grid keeps BPT.

Budgets (local): every AT preset sees the same number of action targets per update (batch x N
x episode length = 8,000 steps) for 100 updates (800,000 action targets), and DT and BC-10%
(64 windows of K = 20 steps) as many over their run (625 updates). The budget is set by the
grid's cost on a 2-core CPU (docs/results.md, section 7): 150 runs of 1000-step episodes, at
measured rates of 5,500-9,000 tokens/s (AT) and 16,000-18,000 (DT, BC), leave about a minute
and a half of training per run; BC-10% evaluated as well at half of its earlier 5,000 updates.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent

# ExoRL task -> (episode length, dataset made by `ringrl collect`, see docs/training.md)
TASKS = {
    "walker_stand": 1000,
    "walker_run": 1000,
    "walker_walk": 1000,
    "cheetah_run": 1000,
    "jaco_reach_top_left": 250,
    "cartpole_swingup": 1000,
}

BASE_METHODS = {
    "bc10": {
        "agent": {"kind": "bc", "num_trajectories": 1, "random_window_start": True},
        "data": {"top_fraction": 0.1},
        "model": {"attention": "vanilla"},
    },
    "dt": {  # DT paper: (return, state, action) tokens, K = 20
        "agent": {"kind": "dt", "num_trajectories": 1, "random_window_start": True,
                  "tokens_per_step": 3},
        "model": {"attention": "vanilla"},
    },
}  # fmt: skip
PAPER_METHODS = {
    **BASE_METHODS,
    "at_me_n32": {
        "agent": {"kind": "at", "num_trajectories": 32},
        "model": {"attention": "blockwise", "feedforward": "full", "remat": False},
    },
    "at_bpt_n32": {
        "agent": {"kind": "at", "num_trajectories": 32},
        "model": {"attention": "blockwise", "feedforward": "blockwise", "remat": True},
    },
    "at_ra_n128": {
        "agent": {"kind": "at", "num_trajectories": 128},
        "model": {"attention": "ring", "remat": True},
    },
}
LOCAL_METHODS = {
    **BASE_METHODS,
    "at_n1": {"agent": {"kind": "at", "num_trajectories": 1}, "model": {"attention": "blockwise"}},
    "at_bpt_n2": {
        "agent": {"kind": "at", "num_trajectories": 2},
        "model": {"attention": "blockwise", "feedforward": "blockwise", "remat": True},
    },
    "at_ra_n4": {
        "agent": {"kind": "at", "num_trajectories": 4},
        "model": {"attention": "ring", "remat": True},
    },
}
METHODS = {"paper": PAPER_METHODS, "local": LOCAL_METHODS}

DT_CONTEXT = 20  # DT paper's K for MuJoCo; also used for BC

SCALES = {
    "paper": {
        "model": {"num_layers": 24, "d_model": 1024, "num_heads": 16, "num_kv_heads": 16,
                  "dropout": 0.1, "block_size": 2048, "compute_dtype": "bfloat16"},
        "agent": {"tokens_per_step": 4},
        "optim": {"lr": 1e-4, "weight_decay": 1e-4, "warmup_steps": 10_000, "grad_clip": 0.25},
        "train": {"steps": 100_000, "batch_size": 8, "ckpt_every": 5000, "log_every": 100},
    },
    "local": {
        "model": {"num_layers": 2, "d_model": 64, "num_heads": 4, "num_kv_heads": 4,
                  "dropout": 0.1, "block_size": 128, "compute_dtype": "float32"},
        "agent": {"tokens_per_step": 4},
        "optim": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 50, "grad_clip": 0.25,
                  "end_lr_ratio": 0.1},
        "train": {"steps": 100, "batch_size": 4, "mesh_data": 1, "mesh_seq": 1,
                  "ckpt_every": 50, "log_every": 10},
    },
}  # fmt: skip

# local AT: the quickstart's recipe -- chains of whole episodes, one fused token per step, so
# that `ringrl eval` runs the in-context protocol with the KV cache; the ring over 4 emulated
# CPU devices. Batch x N is constant, so every N sees the same action targets per update.
LOCAL_TARGETS_PER_UPDATE = 8_000  # steps: batch x N x episode length
# the curve during training: halfway and at the end, 2 trials of one episode (a few seconds)
LOCAL_EVAL = {"eval_trials": 2, "eval_episodes": 1}
LOCAL_AT = {
    "agent": {"tokens_per_step": 1},
    "optim": {"warmup_steps": 10},
    "train": {"eval_every": 50, **LOCAL_EVAL},
}
LOCAL_WINDOW_BATCH = 64  # DT / BC-10%: 64 windows of 20 steps per update


def dataset_path(task: str) -> str:
    return f"data/{task}/explore.hdf5"


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def preset(scale: str, task: str, method: str) -> dict:
    cfg = merge(SCALES[scale], METHODS[scale][method])
    cfg["name"] = f"{scale}-{task}-{method}"
    episode = TASKS[task]
    agent = cfg["agent"]
    agent["max_timestep"] = episode
    if agent["kind"] in ("dt", "bc"):
        agent["steps_per_trajectory"] = DT_CONTEXT
        if scale == "local":  # as many action targets as an AT run
            updates = SCALES["local"]["train"]["steps"] * LOCAL_TARGETS_PER_UPDATE
            updates //= LOCAL_WINDOW_BATCH * DT_CONTEXT
            cfg["train"] = {**cfg["train"], "batch_size": LOCAL_WINDOW_BATCH, "steps": updates,
                            "ckpt_every": -(-updates // 4), "log_every": 25,
                            "eval_every": -(-updates // 2), **LOCAL_EVAL}  # fmt: skip
            block = DT_CONTEXT * (2 if agent["kind"] == "bc" else agent["tokens_per_step"])
            cfg["model"] = {**cfg["model"], "block_size": block}
    else:  # Agentic Transformer: chains of whole episodes
        agent["steps_per_trajectory"] = episode
        if scale == "local":
            cfg = merge(cfg, LOCAL_AT)
            agent = cfg["agent"]
            N = agent["num_trajectories"]
            batch = max(LOCAL_TARGETS_PER_UPDATE // (N * episode), 1)
            # 125: tiles N whole 1000- or 250-step episodes (and the ring's 8 zigzag chunks)
            cfg["model"] = {**cfg["model"], "block_size": 125}
            cfg["train"] = {**cfg["train"], "batch_size": batch}
    ring = cfg["model"]["attention"] == "ring"
    if scale == "local" and ring:
        cfg["train"] = {**cfg["train"], "mesh_seq": 4, "host_devices": 4}
    if scale == "paper":  # ring: sequence over all devices; otherwise: data parallel
        mesh = {"mesh_data": 1, "mesh_seq": -1} if ring else {"mesh_data": -1, "mesh_seq": 1}
        cfg["train"] = {**cfg["train"], **mesh}
    cfg["data"] = {"path": dataset_path(task), "format": "d4rl", **cfg.get("data", {})}
    order = ["name", "model", "agent", "data", "optim", "train"]
    return {k: cfg[k] for k in order}


def render() -> dict[Path, str]:
    """Every preset file and its YAML text."""
    files = {}
    for scale in SCALES:
        for task in TASKS:
            for method in METHODS[scale]:
                path = ROOT / scale / task / f"{method}.yaml"
                text = yaml.safe_dump(preset(scale, task, method), sort_keys=False)
                files[path] = f"# generated by configs/generate.py -- edit that, not this\n{text}"
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stray = [p for p in ROOT.glob("*/*/*.yaml") if p not in files]
        for p in stray:
            print(f"not generated: {p.relative_to(ROOT)}")
        stale = [p for p, t in files.items() if not p.exists() or p.read_text() != t]
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale or stray else 0
    for p in ROOT.glob("*/*/*.yaml"):
        if p not in files:
            p.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} presets under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
