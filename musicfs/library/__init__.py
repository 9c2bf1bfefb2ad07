"""One library's metadata: the SQLite catalog, the scanner and tags, the tree, the search index, pins, opened together."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "blocks": ["aligned", "Block", "BLOCK_SIZE", "cover", "cut", "merge"],
    "catalog": ["Catalog", "FileRow", "FileVersion"],
    "catalog_files": ["CATALOG_NAME", "open_checked"],
    "pins": ["PinSet", "PinsStatistics"],
    "published": ["PublishedStatistics"],
    "publisher": ["publish_library"],
    "scanner": ["ScanCancelled"],
    "search": ["check_files", "SearchIndex"],
    "storage": ["index_docs", "Library"],
    "tree": ["build_tree", "FIRST_INO", "Node", "ROOT_INO", "VirtualTree"],
})
