"""The import paths a recipe may name (`model.name: package.module:Class`,
`data.name: import:package.module:function`): the object, or one line saying why it cannot be had."""

from __future__ import annotations

import importlib
from typing import Any

from harness.errors import HarnessError


def import_object(path: str, where: str) -> Any:
    """`package.module:name` -> that object. `where` starts the error line (`model.name 'x:Y'`).

    A module missing altogether, a module that fails while importing (any exception, a syntax
    error included: user code runs here) and a missing name are each one HarnessError line."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # not found; or the module's own code raised, or does not parse
        # Not found is the module itself (or a package above it), not something the module imports.
        if isinstance(e, ModuleNotFoundError) and e.name and (module_name + ".").startswith(e.name + "."):
            raise HarnessError(f"{where}: cannot import it: no module named {module_name!r}; it must be on "
                               "PYTHONPATH (or importable from the working directory)") from None
        raise HarnessError(f"{where}: cannot import it: importing {module_name!r} failed: {_one_line(e)}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise HarnessError(f"{where}: cannot import it: module {module_name!r} has no attribute {attr!r}") from None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
