"""The in-context notebook runs end to end (nbclient) on a tiny trained AT."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ringrl.quickstart import TINY, at_overrides, collect, train_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "in_context.ipynb"


def test_notebook_executes_on_tiny_run(tmp_path, monkeypatch):
    data = collect(TINY, tmp_path)
    train_run(at_overrides(TINY, data, 50), tmp_path / "at", "at")
    monkeypatch.setenv("RINGRL_NOTEBOOK_RUN", str(tmp_path / "at"))
    monkeypatch.setenv("RINGRL_NOTEBOOK_TRIALS", "2")
    monkeypatch.setenv("RINGRL_NOTEBOOK_EPISODES", "3")  # > N = 2: evicts the oldest episode
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}},
    ).execute(env=dict(os.environ))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum(o.get("output_type") == "display_data" for o in outputs) >= 2  # two figures
    text = "".join(o.get("text", "") for o in outputs)
    assert "attention_mass" in text
