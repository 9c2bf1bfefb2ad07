"""The read path: handles, chunk loading and verification, blocks for small reads, read-ahead.

Its public face: what other packages may import from it (`from musicfs.<package> import Name`); its
modules are loaded when a name is first used (PEP 562), so importing one module of the package costs
only that module."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {  # name -> the module of this package that defines it
    "ReadAheadStatistics": "readahead",
    "FileReader": "reader", "ReaderStatistics": "reader",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .readahead import ReadAheadStatistics
    from .reader import FileReader, ReaderStatistics

def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
