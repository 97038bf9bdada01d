"""``ringrl bench gpu`` runs off a GPU (tiny sizes, Pallas interpret mode) and prints its tables."""

import json

from ringrl.bench import gpu


def test_gpu_bench_runs_tiny_on_cpu_and_writes_every_part(tmp_path, capsys):
    path = tmp_path / "gpu.json"
    argv = ["--seqs", "128", "--head-dims", "32", "--train-tokens", "256", "--reps", "1"]
    assert gpu.main([*argv, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no GPU: tiny sizes" in out
    assert "| cudnn | 32 | 128 | n/a (no GPU) |" in out
    result = json.loads(path.read_text())
    assert result["tiny"] and not result["on_gpu"]
    kernels = {r["kernel"] for r in result["attention"]}
    assert kernels == {"pallas", "xla", "cudnn"}
    assert all(r["tflops"] > 0 for r in result["attention"] if r["seconds"] is not None)
    (ring,) = result["ring"]
    assert ring["shard"] == 128 // 8 and ring["predicted_seconds"] > 0
    (train,) = result["train"]
    assert train["tokens"] >= 256 and train["mfu"] is None  # no MFU without a GPU's peak


def test_attention_flops_follow_flash_attentions_convention():
    # causal forward 4 B H S^2 D / 2; forward + backward 3.5 x that
    assert gpu.attention_flops(1, 1024, 16, 128) == 3.5 * 4 * 16 * 1024**2 * 128 / 2
