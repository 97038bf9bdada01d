"""Typed configs: strict keys and types, overrides, presets."""

from pathlib import Path

import pytest

from ringrl.config import Config, ConfigError, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_carry_the_paper_values():
    cfg = Config()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps) == (1e-4, 1e-4, 10_000)
    assert (cfg.optim.grad_clip, cfg.model.dropout) == (0.25, 0.1)
    assert cfg.agent.reward_scale is None  # order-one scales from the data, not the paper's 0.001


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["train.steps=7", "optim.lr=3e-4", "model.attention=ring"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 3e-4 and cfg.model.attention == "ring"
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # an int is a fine float
    assert load_config(None, ["data.task=null"]).data.task is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.stepz=3", "train.stepz"),
        ("modle.num_layers=3", "modle"),
        ("train.steps=many", "train.steps"),
        ("train.steps=1.5", "train.steps"),
        ("model.remat=3", "model.remat"),
        ("model.dropout=yes", "model.dropout"),
        ("agent.kind=ppo", "agent.kind"),
        ("model.attention=flash", "model.attention"),
        ("train=3", "train"),
        ("model.num_layers.x=1", "model.num_layers"),
    ],
)
def test_unknown_or_ill_typed_keys_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_a_yaml_file_round_trips(tmp_path):
    cfg = load_config(None, ["name=x", "agent.num_trajectories=32"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="model.widht"):
        load_config(tmp_path / "bad.yaml")


def test_presets_are_generated_up_to_date_and_all_load(load_file):
    gen = load_file("configs/generate.py")
    files = gen.render()
    assert len(files) == 2 * 6 * 5
    on_disk = set((ROOT / "configs").glob("*/*/*.yaml"))
    assert on_disk == set(files), "run: python configs/generate.py"
    for path, text in files.items():
        assert path.read_text() == text, f"{path} is stale: run python configs/generate.py"
        cfg = load_config(path)
        method = path.stem
        assert cfg.name.endswith(f"{path.parent.name}-{method}")
        if method == "bc10":
            assert cfg.agent.kind == "bc" and cfg.data.top_fraction == 0.1
        if method.startswith("at_ra"):
            assert cfg.model.attention == "ring" and cfg.agent.kind == "at"
    paper = load_config(ROOT / "configs/paper/walker_run/at_ra_n128.yaml")
    assert paper.agent.num_trajectories * paper.agent.steps_per_trajectory == 128_000
    assert paper.agent.tokens_per_step == 4


def test_local_at_presets_chain_whole_episodes_that_tile_the_ring_without_padding():
    from ringrl.ops.layouts import padded_steps

    for path in sorted((ROOT / "configs/local").glob("*/at_*.yaml")):
        cfg = load_config(path)
        a, m, t = cfg.agent, cfg.model, cfg.train
        assert a.steps_per_trajectory == a.max_timestep, path  # whole episodes
        steps = a.num_trajectories * a.steps_per_trajectory
        ring = m.attention == "ring"
        assert padded_steps(steps, a.tokens_per_step, m.block_size, t.mesh_seq, ring) == steps


def test_model_section_is_the_transformers_own_config():
    from ringrl.model import TransformerConfig

    cfg = load_config(None, ["model.num_layers=2", "model.kernel=xla"])
    assert type(cfg.model) is TransformerConfig
    assert (cfg.model.num_layers, cfg.model.kernel) == (2, "xla")


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.num_heads=3", "model.d_model"),
        ("model.compute_dtype=float16", "model.compute_dtype"),
        ("model.causal=false", "model.causal"),
    ],
)
def test_model_section_checks_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
