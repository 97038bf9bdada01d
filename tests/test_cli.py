"""The console script's process setup: XLA flags set before jax loads."""

import pytest

from ringrl import cli


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
    monkeypatch.setattr(cli, "has_avx512", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    cli.prefer_wide_vectors()
    assert cli.os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_cpu_prefer_vector_width=512",
    ]


def test_wide_vectors_leave_other_cpus_and_a_chosen_width_alone(monkeypatch):
    monkeypatch.setattr(cli, "has_avx512", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    cli.prefer_wide_vectors()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    monkeypatch.setattr(cli, "has_avx512", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    cli.prefer_wide_vectors()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"
