"""Every failpoint in MusicFS, declared once with what it interrupts.

`musicfs failpoints list` prints this table; tests arm points by these names.
"""

from .failpoints import declare

CAS_PUT_BEFORE_WRITE = declare("cas-put-before-write", "before a chunk's temp file is written")
CAS_PUT_AFTER_WRITE_BEFORE_INDEX = declare(
    "cas-put-after-write-before-index", "chunk file renamed into place, not yet in the CAS index"
)
CAS_QUARANTINE = declare("cas-quarantine", "before a bad chunk file is moved to quarantine")
CAS_EVICT = declare("cas-evict", "before evicted chunks are deleted and dropped from the index")
READER_MANIFEST_FETCH = declare("reader-manifest-fetch", "before a chunk is fetched from the origin")
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
