"""Errors a user can act on.

Every error that is the user's to fix derives from :class:`MtlkitError`; the CLI prints its
message without a traceback and exits with status 2. Anything else is an internal error (exit 1).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MtlkitError(Exception):
    """Base class of the errors caused by bad input (config, data, arguments)."""


class ConfigError(MtlkitError, ValueError):
    """A config value is invalid; the message names the field at fault."""


class RegistryError(ConfigError, KeyError):
    """An unknown component name; the message lists the names available."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TaskDataError(MtlkitError, ValueError):
    """A batch, target or output does not fit its task; the message names task and field."""


class NonFiniteLossError(MtlkitError, FloatingPointError):
    """A task's loss became NaN or inf; the message names the task and the step."""


class DatasetError(MtlkitError, ValueError):
    """A dataset or split is unusable (empty, malformed, missing optional package)."""


class MissingExtraError(MtlkitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{package}': pip install 'mtlkit[{extra}]'"
        )


def require(package: str, extra: str, purpose: str) -> ModuleType:
    """Import ``package`` (a module path, e.g. ``"matplotlib.pyplot"``), or raise
    :class:`MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(package.split(".")[0], extra, purpose) from None
