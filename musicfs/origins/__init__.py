"""Origins: where the library's files really live."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "base": ["FileStat", "Identity", "is_safe_relative", "Origin", "SETTLE_MARGIN", "settled", "unescape_name"],
    "factory": ["check_options", "open_origins"],
    "health": ["HealthMonitor"],
    "health_records": ["OriginStatistics"],
    "registry": ["OriginRegistry", "RegistryStream"],
})
