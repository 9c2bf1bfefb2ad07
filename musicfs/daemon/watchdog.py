"""Watchdog: WATCHDOG=1 at half of WATCHDOG_USEC, only after the loop and the FUSE path answered."""

from __future__ import annotations

import errno
import itertools
import logging
import os

import trio

from ..failpoints import fail_point
from ..shared import points
from .notify import Notifier

log = logging.getLogger(__name__)

PROBE_NAME = ".musicfs-watchdog-probe"


def fuse_answers(mountpoint: str, serial: int) -> bool:
    """A lookup that the kernel cannot answer from its cache: it must reach our handlers."""
    try:
        os.stat(os.path.join(mountpoint, f"{PROBE_NAME}-{serial}"))
    except FileNotFoundError:
        return True
    except OSError as exc:
        return exc.errno == errno.ENOENT
    return True


async def watchdog(notifier: Notifier, mountpoint: str, interval: float) -> None:
    """Runs on the trio loop: if the loop is wedged, this task never runs and no ping goes out."""
    for serial in itertools.count():
        await trio.sleep(interval)
        fail_point(points.WATCHDOG_LOOP_CHECK)  # sync on purpose: `sleep` here wedges the whole loop
        ok = False
        with trio.move_on_after(interval):
            ok = await trio.to_thread.run_sync(fuse_answers, mountpoint, serial, abandon_on_cancel=True)
        if ok:
            notifier.send(WATCHDOG=1)
        else:
            log.error("watchdog: the mount did not answer within %.1fs; not pinging systemd", interval)
