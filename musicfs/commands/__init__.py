"""The command line: mount, scan, search, status, fsck, pin/unpin/pins, demo."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "cli": ["main"],
})
