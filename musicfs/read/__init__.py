"""The read path: handles, chunk loading and verification (memory LRU, cache, origins), read-ahead."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "pages": ["PagePusher", "PagePushStatistics"],
    "readahead": ["ReadAheadStatistics"],
    "reader": ["FileReader", "ReaderStatistics"],
    "wiring": ["build_reader"],
})
