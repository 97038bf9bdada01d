"""Run directories that protect themselves: a trainer's lock, resume only on a matching config,
atomic writes, and finding a run's dataset from anywhere.

* :class:`RunDirLock`: ``fcntl.flock`` on ``<run_dir>/.lock`` (non-blocking), held for the whole
  training; the file names the holder (pid, host, start time). The kernel drops the lock when
  the holder exits, however it exits, so a killed run leaves no stale lock.
* :func:`check_resumable`: the saved ``config.yaml`` must equal the new config except in
  :data:`RESUMABLE_KEYS` (``train.steps`` may only grow), else :class:`ConfigMismatch`.
* :func:`write_text_atomic`: a temporary file next to the target, then renamed.
* :func:`resolve_dataset`: the dataset of a run from any working directory, through the paths
  stored in ``data.json`` at training (absolute and relative to the run directory).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from ringrl.config import Config, ConfigError, from_dict, to_dict

#: Config keys that may change when a run resumes (they do not change what is trained);
#: ``train.steps`` only upwards.
RESUMABLE_KEYS: frozenset[str] = frozenset(
    {
        "name",
        "train.steps",
        "train.log_every",
        "train.ckpt_every",
        "train.keep_checkpoints",
        "train.prefetch",
        "train.eval_every",
        "train.eval_trials",
        "train.eval_episodes",
        "train.host_devices",
        "model.kernel",  # the same function (to float tolerance) with any attention kernel
    }
)

LOCK_NAME = ".lock"


class RunDirLocked(RuntimeError):
    """Another process is training in this run directory (the message names it)."""


class ConfigMismatch(ConfigError):
    """The run directory's saved config differs from the new one in what is trained."""


class DatasetNotFound(FileNotFoundError):
    """A run's dataset is at none of the places tried (the message lists them)."""


# ---- writing ------------------------------------------------------------------------------------


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename:
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_config(cfg: Any, run_dir: str | Path) -> None:
    """``<run_dir>/config.yaml``, atomically."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    write_text_atomic(Path(run_dir) / "config.yaml", text)


# ---- the lock -----------------------------------------------------------------------------------


class RunDirLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/<name>`` while in use.

    ``acquire()`` raises :class:`RunDirLocked` naming the holder when another open of the file
    holds it (another process, or another trainer in this one). Use as a context manager.
    """

    def __init__(self, run_dir: str | Path, name: str = LOCK_NAME):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirLocked(
                f"{self.run_dir} is in use by another trainer ({holder}; lock {self.path}); "
                "wait for it to finish, stop it, or use another --run-dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)  # still holding the lock: no holder reads it half-cleared
            finally:
                os.close(fd)  # drops the lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"pid {info['pid']} on {info['hostname']}, started {info['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "holder unknown: it has just started"


# ---- resuming -----------------------------------------------------------------------------------


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": 3}}`` -> ``{"train.steps": 3}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same_path(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


_UNSET = object()


def config_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every dotted key of two config dicts that may not change on
    resume (:data:`RESUMABLE_KEYS` may, ``train.steps`` upwards only; ``data.path`` is the same
    when both name the same file)."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in dict.fromkeys([*b, *a]):
        va, vb = a.get(key, _UNSET), b.get(key, _UNSET)
        if key == "train.steps" and isinstance(va, int) and isinstance(vb, int):
            if vb < va:
                out.append(f"{key}: {va} -> {vb} (may only grow)")
            continue
        if key in RESUMABLE_KEYS or (key == "data.path" and _same_path(va, vb)):
            continue
        if va != vb:
            out.append(f"{key}: {_show(va)} -> {_show(vb)}")
    return out


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else repr(value)


def check_resumable(run_dir: str | Path, cfg: Any) -> None:
    """Raise :class:`ConfigMismatch` when ``<run_dir>/config.yaml`` exists and differs from
    ``cfg`` in what is trained; reads only, so a refused run leaves the directory as it was."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return
    try:
        saved = yaml.safe_load(path.read_text())
        saved = to_dict(from_dict(Config, saved if saved is not None else {}))  # + defaults
    except (yaml.YAMLError, ConfigError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigMismatch(
            f"{path}: cannot read the saved config ({first}); use another --run-dir"
        ) from None
    known = read_data_report(run_dir).get("dataset_abs")
    if known and _same_path(cfg.data.path, known):  # the same file, named from another cwd
        saved["data"]["path"] = cfg.data.path
    diffs = config_differences(saved, to_dict(cfg))
    if diffs:
        raise ConfigMismatch(
            f"{run_dir} holds a run of another config ({'; '.join(diffs)}); resuming needs the "
            f"saved config ({path}): use another --run-dir, or set these keys back"
        )


# ---- finding a run's dataset --------------------------------------------------------------------


def read_data_report(run_dir: str | Path) -> dict:
    """``<run_dir>/data.json`` (what training stored about the data), ``{}`` when absent."""
    path = Path(run_dir) / "data.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def dataset_locations(run_dir: str | Path, path: str | Path, report: dict) -> dict[str, Path]:
    """Where a run's dataset may be, in order: ``path`` as given (from the working directory),
    ``path`` relative to the run directory, the absolute path stored at training, the stored
    path relative to the run directory. Keys: the paths as tried (``str``)."""
    run_dir = Path(run_dir)
    p = Path(path)
    candidates = [p]
    if not p.is_absolute():
        candidates.append(run_dir / p)
    if report.get("dataset_abs"):
        candidates.append(Path(report["dataset_abs"]))
    if report.get("dataset_rel_to_run"):
        candidates.append(run_dir / report["dataset_rel_to_run"])
    unique: dict[str, Path] = {}
    for c in candidates:
        unique.setdefault(os.path.normpath(c), c)
    return {str(c): c for c in unique.values()}


def resolve_dataset(run_dir: str | Path, path: str | Path, report: dict | None = None) -> str:
    """The first of :func:`dataset_locations` that exists; :class:`DatasetNotFound` listing
    them all when none does."""
    report = read_data_report(run_dir) if report is None else report
    locations = dataset_locations(run_dir, path, report)
    for shown, candidate in locations.items():
        if candidate.exists():
            return shown
    raise DatasetNotFound(
        f"dataset of run {run_dir} not found; tried {', '.join(locations)}; "
        "pass its path with --data (ringrl eval) or data_path="
    )


def data_locations(cfg_path: str, run_dir: str | Path, source: Any = None) -> dict[str, str]:
    """``dataset_abs`` and ``dataset_rel_to_run`` for ``data.json`` at training: the dataset as
    the working directory sees it (or the loader's resolved ``source``, e.g. a Minari id's
    directory, when the configured path is no file), and relative to the run directory."""
    where = cfg_path
    if not Path(cfg_path).exists() and source and Path(str(source)).exists():
        where = str(source)
    absolute = os.path.abspath(where)
    out = {"dataset_abs": absolute}
    try:
        out["dataset_rel_to_run"] = os.path.relpath(absolute, os.path.abspath(run_dir))
    except ValueError:  # another drive (Windows): no relative path
        pass
    return out
