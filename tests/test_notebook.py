"""The in-context notebook runs end to end (nbclient) on a tiny trained AT."""

from pathlib import Path

from ringrl.quickstart import TINY, at_overrides, collect, train_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "in_context.ipynb"


def test_notebook_executes_on_tiny_run(tmp_path, run_notebook):
    data = collect(TINY, tmp_path)
    train_run(at_overrides(TINY, data, 50), tmp_path / "at", "at")
    figures, text = run_notebook(
        NOTEBOOK,
        RINGRL_NOTEBOOK_RUN=tmp_path / "at",
        RINGRL_NOTEBOOK_TRIALS=2,
        RINGRL_NOTEBOOK_EPISODES=3,  # > N = 2: evicts the oldest episode
    )
    assert figures >= 2
    assert "attention_mass" in text
