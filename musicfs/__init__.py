"""MusicFS: a read-only FUSE view of a music library, cached in verified chunks."""

from __future__ import annotations

import importlib
from typing import Callable

__version__ = "0.1.0"


def public_face(package: str, exports: dict[str, list[str]]) -> tuple[Callable[[str], object], list[str]]:
    """A package's public face (its `__getattr__` and `__all__`): the names other packages may import from it,
    by the module that defines each. A module is loaded when one of its names is first asked for (PEP 562), so
    importing one module of a package costs only that module."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__, sorted(where)
