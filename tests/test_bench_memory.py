"""``ringrl bench memory`` at its tiny size: BPT's compiled step needs less than ME's."""

import json

from ringrl.bench.cli import BENCHES
from ringrl.bench.memory_me_bpt import parse, run


def test_tiny_memory_benchmark_bpt_below_me_and_labels_the_extrapolation(tmp_path, capsys):
    assert BENCHES["memory"][0] == "ringrl.bench.memory_me_bpt"
    path = tmp_path / "memory.json"
    rc, rows = run(parse(["--tiny", "--json", str(path)]))
    assert rc == 0
    got = {(r["config"], r["layers"], r["how"]): r for r in rows}
    for layers in (1, 2):  # compiled
        me, bpt = got["ME", layers, "compiled"], got["BPT", layers, "compiled"]
        assert bpt["temp_bytes"] < me["temp_bytes"]
        assert bpt["saved_bytes"] < me["saved_bytes"]
        assert bpt["saved_wide_bytes"] == 0 < me["saved_wide_bytes"]  # no 4d-wide residuals
    extrapolated = got["ME", 4, "extrapolated from compiled 1, 2"]
    t1, t2 = (got["ME", layers, "compiled"]["temp_bytes"] for layers in (1, 2))
    assert extrapolated["temp_bytes"] == t1 + 3 * (t2 - t1)
    assert "4 (extrapolated from compiled 1, 2)" in capsys.readouterr().out
    assert json.loads(path.read_text())["rows"] == json.loads(json.dumps(rows))
    assert path.with_suffix(".png").stat().st_size > 0
