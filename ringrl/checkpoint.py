"""Orbax checkpoints of the training state plus a small JSON record (sampler step, metadata).

Each checkpoint is a step directory written atomically (temporary directory, then rename), so a
run killed at any moment leaves only complete checkpoints behind; the last ``keep`` are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save / restore ``(state pytree, json record)`` pairs under ``directory``."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, record: dict) -> None:
        """Start saving (asynchronously); ``wait()`` blocks until it is on disk."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """The state saved at ``step``, with the shapes, dtypes and shardings of ``template``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.record)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
