"""The verified chunk store on local disk: files named by hash, index, quota and eviction, health, and the reader's facade."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "cas": ["CasStore"],
    "index": ["INDEX_NAME"],
    "outside": ["CacheUsage", "cache_usage", "index_file", "indexed_chunks", "quarantine_stray", "quarantine_usage",
                "temp_leftovers"],
    "chunk_cache": ["CacheStatistics", "ChunkCache"],
})
