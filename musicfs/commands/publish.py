"""`musicfs publish SOURCE`: the library's catalog written beside it, so another machine's first mount is READY from
it at once (library/published.py). Needs credentials that can write to the origin; a mount never writes."""

from __future__ import annotations

from ..library import publish_library
from ..origins import open_origins
from ..shared import Config


def publish(cfg: Config, keep: float | None = None) -> str:
    """Publish the catalog of `cfg`'s one source; the line to print."""
    (origin,) = open_origins(cfg.sources, cfg.origin_options)
    try:
        return publish_library(cfg, origin, keep=keep)
    finally:
        origin.close()
