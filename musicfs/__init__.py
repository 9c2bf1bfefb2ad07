"""MusicFS: a read-only FUSE view of a music library, cached in verified chunks."""

__version__ = "0.1.0"
