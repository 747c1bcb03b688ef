"""Package exports imported on first use (PEP 562's module `__getattr__`).

`probe` itself re-exports `open_run`, `Run`, `RunError`, `TABLES` and `DOCS` this way, so that `import
probe` does not import pyarrow: the jobs' entry points choose Arrow's allocator first, which pyarrow
reads once, when it is imported (probe/allocator.py). The job packages (analyses.ablate,
.importance, .steer) re-export their library from submodules that import torch (~1-2 s); importing
them lazily lets `python -m analyses.X --help`, which runs the package's `__init__` first, answer at
once. `from analyses.ablate import ablate` or `from probe import open_run` still works and imports
what it needs then.

    __getattr__, __dir__, __all__ = exports(__name__, {".run": ("ablate", ...), ".select": ("Ablation", ...)})
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def exports(package: str, modules: dict[str, tuple[str, ...]]):
    """(`__getattr__`, `__dir__`, the exported names) for `package`: each name in `modules`
    ({relative submodule: names}) is imported from its submodule on first access and then kept as
    the package's attribute."""
    where = {name: mod for mod, names in modules.items() for name in names}

    def __getattr__(name: str):
        mod = where.get(name)
        if mod is None:
            # a submodule the docs name (`probe.schema`): imported on first access too, as after an
            # explicit import (it was an AttributeError until then; a researcher's tour)
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(mod, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, list(where)
