"""ringrl: Transformers over hundreds of episodes, with exact Ring Attention."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("ringrl")  # the installed distribution's (pyproject.toml)
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
