"""One library's metadata: the SQLite catalog, the scanner and tags, the tree, the search index, pins, opened together.

Its public face: what other packages may import from it (`from musicfs.<package> import Name`); its
modules are loaded when a name is first used (PEP 562), so importing one module of the package costs
only that module."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {  # name -> the module of this package that defines it
    "aligned": "blocks", "Block": "blocks", "BLOCK_SIZE": "blocks", "cover": "blocks", "cut": "blocks",
    "merge": "blocks",
    "Catalog": "catalog", "CATALOG_NAME": "catalog", "FileRow": "catalog", "open_checked": "catalog",
    "PinSet": "pins", "PinsStatistics": "pins",
    "ScanCancelled": "scanner",
    "check_files": "search", "SearchIndex": "search",
    "index_docs": "storage", "Library": "storage",
    "build_tree": "tree", "FIRST_INO": "tree", "Node": "tree", "ROOT_INO": "tree", "VirtualTree": "tree",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .blocks import BLOCK_SIZE, Block, aligned, cover, cut, merge
    from .catalog import CATALOG_NAME, Catalog, FileRow, open_checked
    from .pins import PinSet, PinsStatistics
    from .scanner import ScanCancelled
    from .search import SearchIndex, check_files
    from .storage import Library, index_docs
    from .tree import FIRST_INO, ROOT_INO, Node, VirtualTree, build_tree

def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
