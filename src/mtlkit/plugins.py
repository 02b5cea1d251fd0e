"""User components named by a config: the modules to import before the run is built.

A config's ``imports:`` lists Python modules (``my_package.components``) or files
(``components.py``, relative to the working directory) that register components with the
registries (``@WEIGHTINGS.register("mine")``, ``@ARCHITECTURES.register(...)``, ...); importing
them makes those names usable in the same config. Importing runs the module's code: use
configs you trust, as you would a script.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from mtlkit.errors import ConfigError


def import_plugins(names: Iterable[str]) -> list[ModuleType]:
    """Import each module or ``.py`` file in ``names`` (once); a ConfigError names the entry
    of ``imports`` that cannot be imported, and why."""
    return [_import_one(str(name)) for name in names]


def _import_one(name: str) -> ModuleType:
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise ConfigError(f"field 'imports': file {name} does not exist")
        module_name = f"mtlkit_user_{path.stem}_{abs(hash(str(path))):x}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"field 'imports': {name} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise ConfigError(
                f"field 'imports': importing {name} failed: {type(err).__name__}: {err}"
            ) from err
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"field 'imports': no module named '{err.name}' (while importing '{name}'); "
            "install it, or name a .py file instead"
        ) from None
    except Exception as err:
        raise ConfigError(
            f"field 'imports': importing '{name}' failed: {type(err).__name__}: {err}"
        ) from err
