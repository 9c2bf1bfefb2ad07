"""Every failpoint in MusicFS, declared once with what it interrupts.

`musicfs failpoints list` prints this table; tests arm points by these names.
"""

from ..failpoints import declare, fail_point, fail_point_async
from .errors import MusicFSError


class InjectedFault(MusicFSError):
    """What a failpoint's `return` turns into where the code has no value to return."""


def hit(name: str, error: type[Exception] = InjectedFault) -> None:
    """Evaluate a point; `return` makes the surrounding operation fail with `error`, as fail-rs's early return."""
    if fail_point(name) is not None:
        raise error(f"failpoint {name} returned")


async def hit_async(name: str, error: type[Exception] = InjectedFault) -> None:
    """hit() for trio code: sleep and pause do not block the loop."""
    if await fail_point_async(name) is not None:
        raise error(f"failpoint {name} returned")

CAS_PUT_BEFORE_WRITE = declare("cas-put-before-write", "before a chunk's temp file is written")
CAS_PUT_AFTER_WRITE_BEFORE_INDEX = declare(
    "cas-put-after-write-before-index", "chunk file renamed into place, not yet in the CAS index"
)
CAS_QUARANTINE = declare("cas-quarantine", "before a bad chunk file is moved to quarantine")
CAS_EVICT = declare("cas-evict", "before evicted chunks are deleted and dropped from the index")
CAS_GET = declare("cas-get", "before a chunk file is read (return: an I/O error; sleep: a hung cache disk)")
CAS_INDEX_WRITE = declare("cas-index-write", "before a CAS index write (return: the index store fails)")
CAS_PROBE = declare("cas-probe", "inside a cache health probe (return: the probe fails; sleep: it hangs)")
ORIGIN_READ_CHECKED = declare("origin-read-checked", "an origin read checked the file's identity, bytes not yet read")
READER_MANIFEST_FETCH = declare("reader-manifest-fetch", "before a chunk is fetched from the origin")
PIN_FETCH = declare("pin-fetch", "before the pin worker loads a chunk of a pinned file (sleep: a slow pin fetch)")
MANIFEST_WRITE = declare("manifest-write", "before a chunk hash is recorded in a file's manifest")
DELTA_SYNC_AFTER_BATCH = declare("delta-sync-after-batch", "a scan batch is committed, checkpoint not yet advanced")
SCAN_CHECKPOINT = declare("scan-checkpoint", "before the scan checkpoint is written")
INDEX_COMMIT = declare("index-commit", "before the search index commits")
TREE_SWAP = declare("tree-swap", "a new tree is built, not yet swapped in")
HEALTH_CHECK_HANG = declare("health-check-hang", "inside an origin health probe")
DB_OPEN_CORRUPT = declare("db-open-corrupt", "when the catalog is opened (return makes it look corrupt)")
FUSE_HANDLER = declare("fuse-handler", "at the start of every FUSE request")
FUSE_READ = declare("fuse-read", "at the start of a FUSE read, inside the handler's error wrapper")
WATCHDOG_LOOP_CHECK = declare("watchdog-loop-check", "on the trio loop before each watchdog ping (sleep wedges the loop)")
