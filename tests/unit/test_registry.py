"""OriginRegistry: retry with backoff and jitter (4.1), failover and the primary's grace period (4.3).

Fakes only: a fake sleep records the backoff delays and a fake clock drives deadlines and the grace
period, so nothing here waits for real time.
"""

from __future__ import annotations

import threading

import pytest

from musicfs.origins.base import Origin
from musicfs.origins.health_records import HEALTHY, UNHEALTHY, UNKNOWN
from musicfs.origins.memory import PROBE, READ, MemoryOrigin, Request, serve
from musicfs.origins.registry import OriginRegistry
from musicfs.origins.s3 import classify_s3_error
from musicfs.origins.sftp_errors import classify_sftp_error
from musicfs.origins.sftp_ssh import SshTarget
from musicfs.origins.sftp_wire import FAILURE, NO_SUCH_FILE, PERMISSION_DENIED, StatusError
from musicfs.shared.errors import (
    OriginError,
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTimeout,
    OriginTransient,
    PathEscape,
    ShortRead,
)


class Flaky:
    """A MemoryOrigin handler serving `files` whose next reads and probes fail with the queued errors (then
    succeed); counts reads and probes."""

    def __init__(self, name: str, files: dict[str, bytes], mtime_ns: int = 1, etag: str = ""):
        self.serve = serve(files, mtime_ns=mtime_ns, etag=etag, name=name)
        self.errors: list[BaseException] = []  # raised one per call, in order, before any success
        self.always: BaseException | None = None  # raised by every call while set
        self.reads = 0
        self.probes = 0
        self._lock = threading.Lock()

    def __call__(self, request: Request):
        if request.op in (READ, PROBE):
            with self._lock:
                if request.op == READ:
                    self.reads += 1
                else:
                    self.probes += 1
                if self.always is not None:
                    raise self.always
                if self.errors:
                    raise self.errors.pop(0)
        return self.serve(request)


def memory_origin(name: str, files: dict[str, bytes], **identity) -> MemoryOrigin:
    """An in-memory origin (files with mtime 1 and no ETag, or `identity`'s) with a Flaky handler."""
    return MemoryOrigin(Flaky(name, files, **identity), name=name)


class FakeTime:
    """A clock the test moves, and a sleep that records its argument and moves the clock."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


FILES = {"a.flac": bytes(range(256)) * 40, "b.mp3": b"bbbb" * 1000}


def transient(n: int = 0) -> OriginTransient:
    return OriginTransient(f"injected transient #{n}", origin="o")


def registry(*origins: Origin, t: FakeTime | None = None, **kwargs) -> OriginRegistry:
    t = t or FakeTime()
    return OriginRegistry(list(origins), sleep=t.sleep, clock=t.clock, **kwargs)


# -- 4.1 retry ------------------------------------------------------------------------------------
@pytest.mark.resilience("4.1")
def test_transient_errors_are_retried_with_exponential_backoff_and_jitter():
    t = FakeTime()
    origin = memory_origin("o", FILES)
    origin.handler.errors = [transient(i) for i in range(5)]
    reg = registry(origin, t=t, retries=5, backoff=0.1, max_backoff=1.0, seed=7)
    assert reg.read("a.flac", 10, 100) == FILES["a.flac"][10:110]
    assert origin.handler.reads == 6  # five failures, then the answer
    caps = [min(1.0, 0.1 * 2**k) for k in range(5)]  # 0.1 0.2 0.4 0.8 1.0 (capped)
    assert len(t.sleeps) == 5
    for delay, cap in zip(t.sleeps, caps):
        assert cap / 2 <= delay <= cap, (delay, cap)  # exponential, jittered within [cap/2, cap]
    assert t.sleeps[3] > t.sleeps[0] * 2  # it grows
    assert len(set(t.sleeps)) == 5 and t.sleeps != caps  # jitter: not the bare caps
    assert reg.health_of(origin).retries == 5 and reg.health_of(origin).state == HEALTHY


def test_jitter_is_seeded_and_differs_between_seeds():
    def delays(seed: int) -> list[float]:
        t = FakeTime()
        origin = memory_origin("o", FILES)
        origin.handler.errors = [transient(i) for i in range(4)]
        registry(origin, t=t, retries=4, backoff=0.1, seed=seed).read("a.flac", 0, 1)
        return t.sleeps

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)


@pytest.mark.resilience("4.1")
def test_retries_are_bounded_and_the_last_error_is_raised():
    t = FakeTime()
    origin = memory_origin("o", FILES)
    origin.handler.always = ShortRead("o: short", origin="o")
    reg = registry(origin, t=t, retries=3, backoff=0.01)
    with pytest.raises(ShortRead):
        reg.read("a.flac", 0, 10)
    assert origin.handler.reads == 4 and len(t.sleeps) == 3


@pytest.mark.resilience("4.1")
@pytest.mark.parametrize("exc", [
    OriginNotFound("gone", origin="o"),
    OriginPermission("denied", origin="o"),
    PathEscape("escape", origin="o"),
    OriginFatal("misconfigured", origin="o"),
    OriginFileChanged("changed", origin="o"),
], ids=lambda e: type(e).__name__)
def test_permanent_errors_are_never_retried(exc):
    t = FakeTime()
    origin = memory_origin("o", FILES)
    origin.handler.always = exc
    reg = registry(origin, t=t, retries=5)
    with pytest.raises(type(exc)):
        reg.read("a.flac", 0, 10)
    assert origin.handler.reads == 1 and t.sleeps == []


def test_call_retries_a_timeout_but_a_read_moves_on_at_once():
    """A scan's probe or tag read may retry a timeout; a read that already waited one goes to the next replica."""
    t = FakeTime()
    origin = memory_origin("o", FILES)
    origin.handler.errors = [OriginTimeout("slow", origin="o")]
    reg = registry(origin, t=t, retries=2)
    reg.call(origin, lambda o: o.probe())
    assert origin.handler.probes == 2 and len(t.sleeps) == 1

    origin.handler.errors = [OriginTimeout("slow", origin="o")]
    with pytest.raises(OriginTimeout):
        reg.read("a.flac", 0, 10)
    assert origin.handler.reads == 1 and len(t.sleeps) == 1  # no second sleep, no retry


def test_no_retry_sleeps_past_the_deadline():
    t = FakeTime()
    origin = memory_origin("o", FILES)
    origin.handler.always = transient()
    reg = registry(origin, t=t, retries=10, backoff=0.1, max_backoff=0.1)
    with pytest.raises(OriginTransient):
        reg.read("a.flac", 0, 10, deadline=t.now + 0.25)
    assert t.now <= 1000.25 and 1 <= len(t.sleeps) <= 4
    assert origin.handler.reads == len(t.sleeps) + 1


def test_a_short_answer_is_an_error_when_exact():
    origin = memory_origin("o", FILES)
    reg = registry(origin, retries=1)
    size = len(FILES["b.mp3"])
    assert reg.read("b.mp3", size - 10, 100) == FILES["b.mp3"][-10:]  # short at EOF is fine ...
    with pytest.raises(ShortRead):
        reg.read("b.mp3", size - 10, 100, exact=True)  # ... unless the caller knows the size


@pytest.mark.resilience("4.1")
@pytest.mark.parametrize("make, retried", [
    (lambda: _s3_client_error("SlowDown", 503), True),
    (lambda: _s3_client_error("InternalError", 500), True),
    (lambda: _s3_client_error("NoSuchKey", 404), False),
    (lambda: _s3_client_error("AccessDenied", 403), False),
    (lambda: ConnectionResetError(104, "Connection reset by peer"), True),
], ids=["s3-slowdown", "s3-500", "s3-nosuchkey", "s3-accessdenied", "s3-reset"])
def test_s3_error_classes_drive_the_retry_policy(make, retried):
    t = FakeTime()
    origin = memory_origin("s3", FILES)
    origin.handler.errors = [classify_s3_error(make(), "s3", "a.flac")]
    reg = registry(origin, t=t, retries=2)
    if retried:
        assert reg.read("a.flac", 0, 4) == FILES["a.flac"][:4]
        assert origin.handler.reads == 2 and len(t.sleeps) == 1
    else:
        with pytest.raises(OriginError):
            reg.read("a.flac", 0, 4)
        assert origin.handler.reads == 1 and t.sleeps == []


@pytest.mark.resilience("4.1")
@pytest.mark.parametrize("make, retried", [
    (lambda: SshTarget("nas").failure("Connection closed by 10.0.0.2 port 22\n", 255, "sftp"), True),
    (lambda: StatusError(FAILURE, "Failure"), True),
    (lambda: StatusError(NO_SUCH_FILE, "No such file"), False),
    (lambda: StatusError(PERMISSION_DENIED, "Permission denied"), False),
], ids=["sftp-ssh-gone", "sftp-failure", "sftp-enoent", "sftp-eacces"])
def test_sftp_error_classes_drive_the_retry_policy(make, retried):
    t = FakeTime()
    origin = memory_origin("sftp", FILES)
    origin.handler.errors = [classify_sftp_error(make(), "sftp", "a.flac")]
    reg = registry(origin, t=t, retries=2)
    if retried:
        assert reg.read("a.flac", 0, 4) == FILES["a.flac"][:4]
        assert origin.handler.reads == 2
    else:
        with pytest.raises(OriginError):
            reg.read("a.flac", 0, 4)
        assert origin.handler.reads == 1 and t.sleeps == []


def _s3_client_error(code: str, status: int):
    import botocore.exceptions

    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


# -- 4.3 failover ------------------------------------------------------------------------------------
@pytest.mark.resilience("4.3")
@pytest.mark.expected_log(r"origin primary failed for a\.flac .*; trying backup")
def test_a_read_fails_over_to_the_next_origin_and_marks_the_primary_unhealthy():
    t = FakeTime()
    primary, backup = memory_origin("primary", {}), memory_origin("backup", FILES)
    primary.handler.always = transient()
    reg = registry(primary, backup, t=t, retries=2)
    assert reg.read("a.flac", 5, 50) == FILES["a.flac"][5:55]
    assert primary.handler.reads == 3 and backup.handler.reads == 1  # retried on the primary first, then failed over
    assert reg.health_of(primary).state == UNHEALTHY and "injected transient" in reg.health_of(primary).last_error
    assert reg.health_of(backup).state == HEALTHY
    assert reg.health_of(primary).failovers == 1


@pytest.mark.expected_log(r"origin primary failed for a\.flac")
def test_a_file_missing_on_the_primary_is_read_from_the_replica_without_blaming_the_primary():
    primary, backup = memory_origin("primary", {}), memory_origin("backup", FILES)
    reg = registry(primary, backup)
    assert reg.read("a.flac", 0, 10) == FILES["a.flac"][:10]
    assert reg.health_of(primary).state == UNKNOWN  # a missing file says nothing about the origin's health


def test_a_changed_file_is_not_read_from_another_replica():
    primary, backup = memory_origin("primary", FILES), memory_origin("backup", FILES)
    primary.handler.always = OriginFileChanged("changed", origin="primary")
    reg = registry(primary, backup)
    with pytest.raises(OriginFileChanged):
        reg.read("a.flac", 0, 10)
    assert backup.handler.reads == 0


@pytest.mark.resilience("4.3")
@pytest.mark.expected_log(r"origin primary failed for", r"origin primary is unhealthy")
def test_the_primary_is_preferred_again_only_after_a_grace_period_of_health():
    t = FakeTime()
    primary, backup = memory_origin("primary", FILES), memory_origin("backup", FILES)
    reg = registry(primary, backup, t=t, grace=30.0)
    reg.monitored = True  # as with a HealthMonitor running: unhealthy origins are skipped
    assert reg.read("a.flac", 0, 4) and (primary.handler.reads, backup.handler.reads) == (1, 0)

    primary.handler.always = transient()
    reg.read("a.flac", 0, 4)  # fails over
    assert reg.health_of(primary).state == UNHEALTHY and backup.handler.reads == 1
    primary.handler.reads = 0
    reg.read("a.flac", 0, 4)
    assert primary.handler.reads == 0 and backup.handler.reads == 2  # a known-dead primary is not even tried

    primary.handler.always = None
    reg.record_ok(primary, probe=True)  # the health monitor sees it answer again
    assert reg.health_of(primary).state == HEALTHY
    t.now += 29.0
    reg.read("a.flac", 0, 4)
    assert primary.handler.reads == 0 and backup.handler.reads == 3  # still within the grace period: stay on the replica
    assert reg.active is backup
    t.now += 2.0
    reg.read("a.flac", 0, 4)
    assert primary.handler.reads == 1 and backup.handler.reads == 3  # healthy for longer than the grace: back to the primary
    assert reg.active is primary
    assert [o.active for o in reg.statistics()] == [True, False]


@pytest.mark.expected_log(r"origin (primary|backup) is unhealthy")
def test_a_settling_primary_is_still_used_when_the_replica_fails():
    t = FakeTime()
    primary, backup = memory_origin("primary", FILES), memory_origin("backup", FILES)
    reg = registry(primary, backup, t=t, grace=30.0)
    reg.monitored = True
    reg.record_failure(primary, transient(), probe=True)
    reg.record_ok(primary, probe=True)
    reg.record_failure(backup, transient(), probe=True)
    assert reg.order() == [primary]
    assert reg.read("a.flac", 0, 4) == FILES["a.flac"][:4]


@pytest.mark.expected_log(r"origin o is unhealthy", r"every origin is down")
def test_offline_only_while_monitored_and_every_origin_is_down():
    origin = memory_origin("o", FILES)
    reg = registry(origin)
    reg.record_failure(origin, transient(), probe=True)
    assert not reg.offline  # nobody would notice a recovery: reads keep trying
    assert reg.read("a.flac", 0, 3) == FILES["a.flac"][:3]
    assert reg.health_of(origin).state == HEALTHY  # a good read counts as a sign of health
    reg.monitored = True
    reg.record_failure(origin, transient(), probe=True)
    assert reg.offline and reg.active is None
    assert reg.statistics()[0].state == UNHEALTHY


@pytest.mark.resilience("4.3")
@pytest.mark.expected_log(r"origin primary failed for a\.flac")
def test_a_replica_with_identities_of_its_own_is_read_when_its_size_matches():
    primary = memory_origin("primary", FILES, mtime_ns=111, etag="etag-on-s3")
    replica = memory_origin("replica", FILES, mtime_ns=222, etag="")  # e.g. SFTP: another mtime, no ETag
    reg = registry(primary, replica)
    expect = primary.stat("a.flac")  # the catalog's identity: from the scanned origin
    primary.handler.always = transient()
    assert reg.read("a.flac", 0, 8, expect) == FILES["a.flac"][:8]
    assert replica.handler.reads == 1


@pytest.mark.expected_log(r"origin primary failed for a\.flac")
def test_a_replica_whose_copy_has_another_size_is_not_used():
    primary = memory_origin("primary", FILES, mtime_ns=111, etag="e")
    replica = memory_origin("replica", {"a.flac": FILES["a.flac"] + b"more"}, mtime_ns=111, etag="e")
    reg = registry(primary, replica)
    expect = primary.stat("a.flac")
    primary.handler.always = transient()
    with pytest.raises(OriginFileChanged, match=r"its copy differs from the catalog.s copy \(size"):
        reg.read("a.flac", 0, 8, expect)
    assert replica.handler.reads == 0
    assert reg.health_of(replica).state == UNKNOWN  # its copy differs; the replica itself is fine


@pytest.mark.expected_log(r"origin primary is unhealthy")
def test_first_healthy_is_a_query_that_leaves_the_identity_origin_alone():
    primary, replica = memory_origin("primary", FILES), memory_origin("replica", FILES)
    reg = registry(primary, replica)
    assert reg.identity_origin is primary
    primary.handler.always = transient()
    assert reg.first_healthy() is replica
    assert reg.identity_origin is primary  # failing over to scan or read does not re-key the catalog
    assert reg.health_of(primary).state == UNHEALTHY and reg.health_of(replica).state == HEALTHY
    assert reg.first_healthy() is replica and reg.identity_origin is primary  # asked again: still nothing moves


@pytest.mark.expected_log(r"origin primary failed for a\.flac", r"catalog identities are now")
def test_the_identity_origin_moves_only_when_adopted_and_none_checks_every_origin_as_a_replica():
    primary = memory_origin("primary", FILES, mtime_ns=111, etag="e")
    replica = memory_origin("replica", FILES, mtime_ns=222, etag="")
    reg = registry(primary, replica)
    expect = primary.stat("a.flac")
    primary.handler.always = transient()
    assert reg.first_healthy() is replica and reg.identity_origin is primary
    assert reg.read("a.flac", 0, 8, expect) == FILES["a.flac"][:8]  # the replica, checked by size
    primary.handler.always = None
    reg.adopt_identities(None)  # a scan of another origin is re-keying the catalog
    assert reg.read("a.flac", 0, 8, expect) == FILES["a.flac"][:8]
    assert reg.read("a.flac", 0, 8, replica.stat("a.flac")) == FILES["a.flac"][:8]
    reg.adopt_identities(replica)  # its scan committed
    assert reg.identity_origin is replica
    with pytest.raises(OriginFileChanged):
        reg.read("a.flac", 0, 8, expect)  # the catalog now says 222: the replica itself refuses 111


@pytest.mark.expected_log(r"origin (primary|backup) failed for (a|missing)\.flac")
def test_statistics_count_requests_by_result_bytes_retries_and_failovers_per_origin():
    primary, backup = memory_origin("primary", FILES), memory_origin("backup", FILES)
    reg = registry(primary, backup, t=FakeTime())
    primary.handler.errors = [transient(), transient(), transient()]  # one retry too many: fails over
    assert reg.read("a.flac", 0, 4) == FILES["a.flac"][:4]
    with pytest.raises(OriginNotFound):
        reg.read("missing.flac", 0, 4)
    first, second = reg.statistics()
    assert (first.name, first.state, first.retries, first.failovers) == ("primary", UNHEALTHY, 2, 1)
    assert (second.name, second.failovers, second.active) == ("backup", 1, True)  # the primary is down now
    assert second.bytes_fetched == 4 and first.bytes_fetched == 0
    assert second.results == {"ok": 1, "not_found": 1} and second.requests == 2
    assert first.results == {"transient": 1, "not_found": 1} and first.requests == 2
