"""The mount daemon: the builder, supervisor, FUSE operations, control socket, notify, watchdog, metrics, mounts."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "main": ["run"],
    "mounts": ["check_mountpoint", "free_dying_holder", "mount_entry"],
})
