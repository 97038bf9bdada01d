"""ringrl quickstart --tiny: every stage runs and writes its table, summary and plots."""

import json

from ringrl.cli import main


def test_quickstart_tiny(tmp_path, capsys):
    assert main(["quickstart", "--tiny", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "AT in-context curve" in out and "DT (2 trials x 2 episodes)" in out
    assert "95% bootstrap interval over trials" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert len(s["at_curve"]) == 4 and s["task"] == "Reacher-v5"  # 2N episodes
    lo, hi = s["at"]["final_return"][1:]
    assert lo <= s["at"]["final_return"][0] <= hi
    for f in ("curve.png", "at/eval.json", "dt/eval.json", "at/eval_curve.png"):
        assert (tmp_path / f).stat().st_size > 0
