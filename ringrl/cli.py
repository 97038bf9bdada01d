"""The ``ringrl`` console script.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported lazily so that ``ringrl --help`` stays fast and a
subcommand's heavy imports (jax, mujoco) happen only when it runs.

User mistakes (a missing or malformed config or dataset, an unknown task, a corrupt checkpoint,
an invalid option value: see :func:`user_error`) end with one line, ``error: ...``, on stderr
and exit code 2; ``ringrl --debug COMMAND ...`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from types import TracebackType

# The XLA-CPU flags (emulated host devices, collective timeouts, vector width) live with the
# rest of the platform tuning in ringrl.backend (jax-free); re-exported here for callers.
from ringrl.backend import (
    COLLECTIVE_TIMEOUTS,
    HOST_DEVICES,
    VECTOR_WIDTH_FLAG,
    emulate_host_devices,
    has_avx512,
    prefer_wide_vectors,
)

__all__ = [
    "COLLECTIVE_TIMEOUTS",
    "HOST_DEVICES",
    "VECTOR_WIDTH_FLAG",
    "emulate_host_devices",
    "has_avx512",
    "main",
    "prefer_wide_vectors",
]


def _emulate_host_devices() -> None:
    """``RINGRL_HOST_DEVICES`` (default 8) CPU devices and wide vectors on AVX-512 hosts,
    unless jax is already imported (:func:`ringrl.backend.set_cpu_flags`)."""
    from ringrl.backend import set_cpu_flags

    set_cpu_flags(HOST_DEVICES)


# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("agents.collect.cli", "make a D4RL-layout dataset by running a behaviour policy"),
    "train": ("ringrl.train", "train an agent from a config preset"),
    "eval": ("ringrl.evaluate", "roll out a trained agent in its environment"),
    "bench": ("ringrl.bench.cli", "attention / context benchmarks"),
    "quickstart": ("ringrl.quickstart", "collect, train, evaluate end to end on a small task"),
    "compare": ("ringrl.compare", "the ExoRL comparison (paper's Table 5) from the presets"),
    "scaling": ("ringrl.scaling", "return against the episodes in context, N (task families)"),
}

DESCRIPTION = """\
ringrl: agents that condition on hundreds of whole episodes at once. A trajectory-conditioned
Transformer (Agentic Transformer) reads its own past episodes as one long causal sequence, made
to fit by exact Ring Attention with Blockwise Transformers (JAX). Agents learn from offline
datasets (D4RL, ExoRL, Minari, or made by `ringrl collect`) and are evaluated by rollouts in
gymnasium MuJoCo and dm_control environments."""

EPILOG = """\
first command to try:
  ringrl quickstart --tiny   every stage (collect, train, evaluate) in about a minute
  ringrl quickstart          the real thing on cartpole-swingup (about 10 minutes on 2 CPU cores)
  ringrl COMMAND --help      a command's options, with their defaults

errors in what you give a command (files, options) end with one line and exit code 2;
ringrl --debug COMMAND ... shows the full traceback instead."""


class UsageError(Exception):
    """A mistake in a command's arguments or inputs; the message says what and what was
    expected. :func:`main` prints it on one line and returns 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's help ends with its default, unless the default
    is None, False or empty, or the help already speaks of its default."""

    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("max_help_position", 30)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not text
            or "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        return f"{text} (default: {_show_default(default)})"


def _show_default(value: object) -> str:
    """A default as typed on the command line (``256 256`` for a list, ``0.333333`` for 1/3),
    escaped for argparse's %-formatting."""
    if isinstance(value, list | tuple):
        text = " ".join(_show_default(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text.replace("%", "%%")


def _clean_docstring(doc: str | None) -> str | None:
    """A module docstring for the terminal: no reST markup (````x````, ``:class:`x```)."""
    if not doc:
        return None
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "").strip()


def version() -> str:
    """The installed distribution's version (``ringrl.__version__`` when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ringrl")
    except PackageNotFoundError:
        from ringrl import __version__

        return __version__


# ---- user errors ---------------------------------------------------------------------------

#: Exception classes that mean a user mistake, by module; looked up in ``sys.modules`` when an
#: exception is caught, so nothing is imported for them and a class that does not exist (yet)
#: is simply skipped. (Plain ValueError is not among them: it is also what bugs raise.)
USER_ERROR_CLASSES: dict[str, tuple[str, ...]] = {
    "ringrl.config": ("ConfigError",),
    "ringrl.data.episode": ("DatasetError",),
    "ringrl.rundir": ("RunDirLocked", "ConfigMismatch", "DatasetNotFound"),
    "ringrl.train": ("RunDirLocked", "ConfigMismatch"),
    "ringrl.evaluate": ("TaskIdsError",),
    "ringrl.scaling": ("StudyError",),
    "yaml": ("YAMLError",),
    "gymnasium.error": ("Error",),  # e.g. an unknown environment id
}
OS_USER_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
CHECKPOINT_MODULE = os.path.join("ringrl", "checkpoint.py")
CHECKPOINT_READS = ("__init__", "latest_step", "restore")  # Checkpointer methods that read
CONFIG_MODULE = os.path.join("ringrl", "config.py")


def user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [UsageError, *OS_USER_ERRORS]
    for module_name, names in USER_ERROR_CLASSES.items():
        module = sys.modules.get(module_name)
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def _frames(tb: TracebackType | None):
    """The frames an exception passed through, outermost first."""
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _local_in(tb: TracebackType | None, filename: str, function: str, name: str) -> object:
    """Local ``name`` of the innermost frame of ``function`` in ``filename`` (None if none)."""
    value = None
    for frame in _frames(tb):
        code = frame.f_code
        if code.co_name == function and code.co_filename.endswith(filename):
            value = frame.f_locals.get(name, value)
    return value


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yaml_message(e: Exception, tb: TracebackType | None) -> str:
    """``FILE: line L, column C: invalid YAML: PROBLEM (CONTEXT at line ...)``."""
    path = _local_in(tb, CONFIG_MODULE, "load_config", "path")
    override = _local_in(tb, CONFIG_MODULE, "parse_override", "text")
    mark = getattr(e, "problem_mark", None)
    if override is not None:
        where = f"override {override!r}"
    elif path is not None:
        where = str(path)
    elif mark is not None and not str(mark.name).startswith("<"):
        where = str(mark.name)
    else:
        where = "YAML"
    if mark is not None:
        where += f": line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(e, "problem", None) or str(e)
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        at = f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
        problem += f" ({context}{at if context_mark is not None else ''})"
    return f"{where}: invalid YAML: {problem}"


def user_error(e: BaseException, tb: TracebackType | None = None) -> str | None:
    """The one-line message for an exception that is a user mistake, else None.

    A user mistake is an exception of :func:`user_error_types` (files not found, invalid
    configs and datasets, YAML syntax errors, unknown environment ids, a run directory in use
    ...), or any exception raised while a checkpoint is read (truncated or corrupt files).
    """
    tb = tb if tb is not None else e.__traceback__
    if isinstance(e, user_error_types()):
        yaml = sys.modules.get("yaml")
        if yaml is not None and isinstance(e, yaml.YAMLError):
            return _one_line(_yaml_message(e, tb))
        if isinstance(e, OSError) and e.filename is not None and str(e).startswith("[Errno"):
            message = f"{e.filename}: {e.strerror or type(e).__name__}"
            if _local_in(tb, CONFIG_MODULE, "load_config", "path") is not None:
                message += " (expected a YAML config file)"
            return _one_line(message)
        return _one_line(str(e) or type(e).__name__)
    for function in CHECKPOINT_READS:
        checkpointer = _local_in(tb, CHECKPOINT_MODULE, function, "self")
        if checkpointer is not None:
            where = str(getattr(checkpointer, "directory", "checkpoint"))
            step = _local_in(tb, CHECKPOINT_MODULE, function, "step")
            where = os.path.join(where, str(step)) if step is not None else where
            root = e
            while root.__cause__ is not None:  # orbax wraps the reader's error, which says more
                root = root.__cause__
            first = (str(root).strip().splitlines() or [""])[0]
            return _one_line(
                f"{where}: cannot read the checkpoint (truncated or corrupt?): "
                f"{type(root).__name__}: {_one_line(first, 300)} (ringrl --debug ... for details)"
            )
    return None


# ---- the command line ----------------------------------------------------------------------

_debug = False  # set by --debug for the whole command (nested calls of main included)


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The ``ringrl`` parser and ``{command: module}`` of the commands available (``only``:
    just that command's, so that one command does not import every other's modules)."""
    parser = argparse.ArgumentParser(
        prog="ringrl", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ringrl {version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (before COMMAND: ringrl --debug train ...)",
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    available = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue  # subcommand not built yet
            raise
        p = sub.add_parser(
            name,
            help=help_text,
            description=_clean_docstring(module.__doc__) or help_text,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        available[name] = module
    return parser, available


def _check_args(args: argparse.Namespace) -> None:
    """Checks of arguments that the commands' own code reports with a plain ValueError."""
    if args.command == "eval" and getattr(args, "task", None):
        import envs

        try:
            envs.resolve(args.task)
        except ValueError as e:
            raise UsageError(f"--task {args.task}: {e}") from e


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "bench":  # benchmarks parse their own options
        from ringrl.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv == ["--version"]:  # without importing every command's modules
        print(f"ringrl {version()}")
        return 0
    parser, available = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, argparse's own usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    _check_args(args)
    return int(available[args.command].run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """``ringrl [--debug] COMMAND ...``; returns the exit code (2 for a user mistake)."""
    global _debug
    _emulate_host_devices()
    argv = list(sys.argv[1:] if argv is None else argv)
    outer = _debug
    while argv and argv[0] == "--debug":
        argv.pop(0)
        _debug = True
    try:
        return _dispatch(argv)
    except Exception as e:
        message = None if _debug else user_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        _debug = outer


def run_script(script_main, argv: list[str] | None = None) -> int:
    """A script's ``main(argv)`` with the command line's handling of user mistakes: one line on
    stderr and exit code 2 (``RINGRL_DEBUG=1`` for the traceback)."""
    try:
        return int(script_main(argv) or 0)
    except Exception as e:
        message = None if os.environ.get("RINGRL_DEBUG") else user_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
