"""Generate the preset YAML files of ``configs/`` from one compact table.

    python configs/generate.py          # rewrite configs/{paper,local}/<task>/<method>.yaml
    python configs/generate.py --check  # exit 1 if a file is missing or stale

The grid is the Ring Attention paper's ExoRL comparison (Table 5): six tasks x five methods,
at two scales. ``paper``: the paper's sizes (a ~350M-parameter model, 1000-step trajectories,
4 tokens per step, N = 32 / 128 trajectories -> 128K / 512K tokens), for accelerators.
``local``: the same structure shrunk to train on a 2-core CPU in minutes.

Methods: ``bc10`` (BC on the top 10% episodes), ``dt`` (Decision Transformer, K = 20),
``at_me_n32`` (Agentic Transformer, memory-efficient = blockwise attention without layer
rematerialisation), ``at_bpt_n32`` (blockwise parallel transformer: blockwise attention and
feed-forward, rematerialised), ``at_ra_n128`` (ring attention over the ``seq`` mesh axis).
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

METHODS = {
    "bc10": {
        "agent": {"kind": "bc", "num_trajectories": 1, "random_window_start": True},
        "data": {"top_fraction": 0.1},
        "model": {"attention": "vanilla"},
    },
    "dt": {
        "agent": {"kind": "dt", "num_trajectories": 1, "random_window_start": True},
        "model": {"attention": "vanilla"},
    },
    "at_me_n32": {
        "agent": {"kind": "at", "num_trajectories": 32},
        "model": {"attention": "blockwise", "remat": False},
    },
    "at_bpt_n32": {
        "agent": {"kind": "at", "num_trajectories": 32},
        "model": {"attention": "blockwise", "remat": True},
    },
    "at_ra_n128": {
        "agent": {"kind": "at", "num_trajectories": 128},
        "model": {"attention": "ring", "remat": True},
    },
}

DT_CONTEXT = 20  # DT paper's K for MuJoCo; also used for BC

SCALES = {
    "paper": {
        "model": {"num_layers": 24, "d_model": 1024, "num_heads": 16, "num_kv_heads": 16,
                  "dropout": 0.1, "block_size": 2048, "compute_dtype": "bfloat16"},
        "agent": {"tokens_per_step": 4, "reward_scale": 0.001},
        "optim": {"lr": 1e-4, "weight_decay": 1e-4, "warmup_steps": 10_000, "grad_clip": 0.25},
        "train": {"steps": 100_000, "batch_size": 8, "ckpt_every": 5000, "log_every": 100},
    },
    "local": {
        "model": {"num_layers": 2, "d_model": 64, "num_heads": 4, "num_kv_heads": 4,
                  "dropout": 0.1, "block_size": 128, "compute_dtype": "float32"},
        "agent": {"tokens_per_step": 4, "reward_scale": 0.001, "steps_per_trajectory": 25},
        "optim": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 50, "grad_clip": 0.25},
        "train": {"steps": 300, "batch_size": 4, "mesh_data": 1, "mesh_seq": 1,
                  "ckpt_every": 100, "log_every": 10},
    },
}  # fmt: skip

# local: the quickstart's recipe (`ringrl quickstart`, which learns on cartpole swingup in ~6 min
# of training): chains of whole episodes, one fused token per step, so that `ringrl eval` runs
# the in-context protocol with the KV cache. Fewer episodes per chain (ring still holds the
# most), ring over 4 emulated CPU devices.
LOCAL_TRAJECTORIES = {32: 2, 128: 4}
LOCAL_AT = {
    "agent": {"tokens_per_step": 1},
    "model": {"block_size": 125},  # 1000- and 250-step episodes split into 8 zigzag chunks
    "optim": {"warmup_steps": 40, "end_lr_ratio": 0.1},
    "train": {"steps": 400},
}


def dataset_path(task: str) -> str:
    return f"data/{task}/explore.hdf5"


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def preset(scale: str, task: str, method: str) -> dict:
    cfg = merge(SCALES[scale], METHODS[method])
    cfg["name"] = f"{scale}-{task}-{method}"
    episode = TASKS[task]
    agent = cfg["agent"]
    agent["max_timestep"] = episode
    if agent["kind"] in ("dt", "bc"):
        agent["steps_per_trajectory"] = DT_CONTEXT
    else:  # Agentic Transformer: chains of whole episodes
        agent["steps_per_trajectory"] = episode
        if scale == "local":
            cfg = merge(cfg, LOCAL_AT)
            agent = cfg["agent"]
            agent["num_trajectories"] = LOCAL_TRAJECTORIES[agent["num_trajectories"]]
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
            for method in METHODS:
                path = ROOT / scale / task / f"{method}.yaml"
                text = yaml.safe_dump(preset(scale, task, method), sort_keys=False)
                files[path] = f"# generated by configs/generate.py -- edit that, not this\n{text}"
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [p for p, t in files.items() if not p.exists() or p.read_text() != t]
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} presets under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
