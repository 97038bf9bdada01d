"""The console script: process setup (XLA flags set before jax loads), one-line errors for
user mistakes (exit code 2, ``--debug`` for the traceback), help, version and benchmarks."""

import argparse
import importlib.metadata
import sys
import types

import pytest

from ringrl import backend, cli


@pytest.fixture
def cpuinfo(tmp_path):
    def write(flags: str) -> str:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        return str(path)

    return write


def test_avx512_is_read_from_the_cpu_flags(cpuinfo, tmp_path):
    assert cli.has_avx512(cpuinfo("avx2 avx512f avx512bw"))
    assert not cli.has_avx512(cpuinfo("avx2 fma"))
    assert not cli.has_avx512(str(tmp_path / "missing"))


def test_wide_vectors_are_preferred_on_avx512_hosts(monkeypatch):
    monkeypatch.setattr(backend, "has_avx512", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    backend.prefer_wide_vectors()
    assert cli.os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_cpu_prefer_vector_width=512",
    ]


def test_wide_vectors_leave_other_cpus_and_a_chosen_width_alone(monkeypatch):
    monkeypatch.setattr(backend, "has_avx512", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    backend.prefer_wide_vectors()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    monkeypatch.setattr(backend, "has_avx512", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    backend.prefer_wide_vectors()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"


# ---- one-line errors -----------------------------------------------------------------------
def error_line(capsys) -> str:
    """The command's stderr, which must be exactly one line ``error: ...``."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def command(monkeypatch):
    """Register a ``ringrl fake`` command whose run() calls the given function."""

    def register(body) -> None:
        module = types.ModuleType("fake_command")
        module.add_arguments = lambda parser: None
        module.run = lambda args: body()
        monkeypatch.setitem(sys.modules, "fake_command", module)
        monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "a test command"))

    return register


def test_missing_config_file_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nosuch.yaml"
    assert cli.main(["train", str(missing)]) == 2
    line = error_line(capsys)
    assert str(missing) in line and "YAML config" in line


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  steps: [1, 2\n")
    assert cli.main(["train", str(bad)]) == 2
    line = error_line(capsys)
    assert f"{bad}: line 4" in line and "invalid YAML" in line and "line 3" in line
    assert "<unicode string>" not in line


def test_yaml_syntax_error_in_an_override_names_the_override(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    assert cli.main(["train", "--set", "train.steps=[1", str(config)]) == 2
    assert "override 'train.steps=[1'" in error_line(capsys)


def test_missing_dataset_is_one_line_naming_the_path(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  path: {tmp_path / 'missing.hdf5'}\n")
    assert cli.main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert str(tmp_path / "missing.hdf5") in error_line(capsys)


def test_malformed_dataset_is_one_line_naming_the_file(tmp_path, capsys):
    data = tmp_path / "garbage.hdf5"
    data.write_text("not an HDF5 file")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  path: {data}\n")
    assert cli.main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert str(data) in line and "HDF5" in line


def test_unknown_eval_task_is_one_line_naming_it(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path), "--task", "Nosuch-v9"]) == 2
    line = error_line(capsys)
    assert "--task Nosuch-v9" in line and "dm_control/walker-run-v0" in line


def test_corrupt_checkpoint_is_one_line_naming_the_checkpoint(tmp_path, command, capsys):
    import numpy as np

    from ringrl.checkpoint import Checkpointer

    state = {"w": np.arange(4096, dtype=np.float32)}
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(7, state, {"step": 7})
    ckpt.close()
    for f in (tmp_path / "checkpoints" / "7" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000 and not f.name.startswith("_"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncate the array data

    def restore():
        reader = Checkpointer(tmp_path / "checkpoints")
        reader.restore(7, state)

    command(restore)
    assert cli.main(["fake"]) == 2
    line = error_line(capsys)
    assert f"{tmp_path / 'checkpoints' / '7'}: cannot read the checkpoint" in line


def test_a_locked_run_directory_is_a_user_error(command, capsys):
    rundir = pytest.importorskip("ringrl.rundir")
    if not hasattr(rundir, "RunDirLocked"):
        pytest.skip("no RunDirLocked yet")

    def locked():
        raise rundir.RunDirLocked("runs/x: in use by pid 123")

    command(locked)
    assert cli.main(["fake"]) == 2
    assert error_line(capsys) == "error: runs/x: in use by pid 123"


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback(command):
    def bug():
        raise ValueError("internal")

    command(bug)
    with pytest.raises(ValueError, match="internal"):
        cli.main(["fake"])


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "train", str(tmp_path / "nosuch.yaml")])


# ---- help, version -------------------------------------------------------------------------
def test_version_is_the_installed_distributions(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"ringrl {importlib.metadata.version('ringrl')}\n"


def test_help_says_what_ringrl_is_and_what_to_try_first(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Ring Attention" in out and "ringrl quickstart --tiny" in out
    for name in cli.COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", ["collect", "eval", "compare", "quickstart"])
def test_every_option_has_help_and_shows_its_default(name, capsys):
    parser, _ = cli.build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[name]._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{name} {action.option_strings} has no help"
    assert cli.main([name, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"usage: ringrl {name}" in out
    assert "(default: " in out


def test_collect_help_shows_list_and_float_defaults_as_typed(capsys):
    assert cli.main(["collect", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "MLP widths (default: 256 256)" in out and "(default: 0.333333)" in out


# ---- benchmarks ----------------------------------------------------------------------------
def test_bench_help_shows_its_own_usage_line(capsys):
    assert cli.main(["bench", "data", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: ringrl bench data ")


def test_unknown_benchmark_names_the_known_ones(capsys):
    assert cli.main(["bench", "nosuch"]) == 2
    line = error_line(capsys)
    assert "unknown benchmark 'nosuch'; known: attention, context" in line


def test_scripts_answer_a_missing_path_with_one_line_and_exit_2(capsys, load_file):
    from ringrl.cli import run_script

    module = load_file("scripts/completion_flags.py")
    assert run_script(module.main, ["nosuch.hdf5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuch.hdf5" in err[0]


def test_execute_notebook_answers_a_missing_notebook_or_bad_env_with_one_line(
    capsys, tmp_path, load_file
):
    from pathlib import Path

    module = load_file("scripts/execute_notebook.py")
    assert module.main(["nosuch.ipynb", "--out", str(tmp_path)]) == 2
    assert "nosuch.ipynb" in capsys.readouterr().err
    notebook = str(Path(__file__).resolve().parents[1] / "notebooks" / "long_histories.ipynb")
    assert module.main([notebook, "--out", str(tmp_path), "--env", "NOEQUALS"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOEQUALS" in err[0] and "KEY=VALUE" in err[0]
