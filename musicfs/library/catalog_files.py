"""The catalog's file in a library's state folder: made private, opened checked, a damaged one moved aside."""

from __future__ import annotations

import errno
import logging
import os

from ..shared import (
    CatalogCorrupt,
    CatalogError,
    move_aside,
    not_writable,
)
from .catalog import Catalog

log = logging.getLogger(__package__ + ".catalog")  # one component, one logger: the catalog's


CATALOG_NAME = "catalog.db"


SQLITE_COMPANIONS = ("-wal", "-shm")


def make_state_dir(state_dir: str) -> None:
    """Create the state folder if needed; CatalogError naming it (and why) when that fails."""
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        parent = os.path.dirname(os.path.abspath(state_dir))
        why = not_writable(parent) if isinstance(exc, (PermissionError,)) or exc.errno == errno.EROFS else None
        raise CatalogError(f"cannot create the state folder {state_dir}: "
                           f"{f'{parent} is {why}' if why else exc.strerror}") from exc


def open_checked(state_dir: str, full: bool = False) -> tuple[Catalog, str]:
    """Open the catalog after an integrity check (integrity_check when `full`, else quick_check).

    Returns (catalog, "") when it is sound, or (a fresh empty catalog, what was wrong) after moving the
    damaged one aside: its rows are rebuilt by rescanning the origins. An error that is not damage (the
    disk, permissions) raises CatalogError: refusing to start beats throwing away a good catalog.
    """
    make_state_dir(state_dir)
    path = os.path.join(state_dir, CATALOG_NAME)
    try:
        cat = Catalog(path)
    except CatalogCorrupt as exc:
        damage = str(exc)
    else:
        try:
            problems = cat.quick_check(full)
        except BaseException:
            cat.close()
            raise
        if not problems:
            log.info("catalog %s: %s ok", path, "integrity_check" if full else "quick_check")
            return cat, ""
        cat.close()
        damage = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    if not os.path.exists(path):
        log.warning("catalog %s could not be opened (%s) and is not there to move aside; creating a new one",
                    path, damage)
        return Catalog(path), damage
    try:
        dest = move_aside(path, SQLITE_COMPANIONS)
    except OSError as exc:
        raise CatalogError(f"{path} is damaged ({damage}) and cannot be moved aside: {exc.strerror}") from exc
    log.warning("catalog %s is damaged (%s): moved to %s; a new catalog is rebuilt by rescanning the origins",
                path, damage, dest)
    return Catalog(path), damage
