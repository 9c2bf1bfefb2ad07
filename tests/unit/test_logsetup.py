"""logsetup: error storms become a count (3.2), unhandled exceptions are logged once with thread name and traceback."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading

import pytest

from musicfs.shared import logsetup
from musicfs.shared.logsetup import (
    SUMMARY_ATTR,
    RateLimitFilter,
    install_exception_hooks,
    setup_logging,
    teardown_logging,
    uninstall_exception_hooks,
)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def summaries(self) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, SUMMARY_ATTR, None) is not None]


@pytest.fixture
def limited(request):
    """A logger whose (only own) handler carries a RateLimitFilter on a fake clock; records still propagate."""
    clock = FakeClock()
    logger = logging.getLogger(f"musicfs.test.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    stream = io.StringIO()
    text = logging.StreamHandler(stream)
    text.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    records = Records()

    class Both(logging.Handler):  # one handler, so the filter sees each record once
        def emit(self, record):
            text.emit(record)
            records.emit(record)

    handler = Both(logging.DEBUG)
    filt = RateLimitFilter(window=10.0, burst=5, clock=clock).attach(handler)
    logger.addHandler(handler)
    try:
        yield logger, filt, clock, records, stream
    finally:
        logger.removeHandler(handler)
        logsetup._FILTERS.discard(filt)


@pytest.mark.resilience("3.2")
@pytest.mark.expected_log(r"cannot read")
def test_error_storm_is_logged_with_an_exact_count(limited):
    logger, filt, clock, records, stream = limited
    for i in range(1000):
        logger.error("cannot read %s: %s", f"/music/{i}.flac", "EIO")
        clock.now += 0.001  # 1000 errors in one second
    assert len(records.records) == 5  # the burst, and nothing else yet
    assert records.messages()[0] == "cannot read /music/0.flac: EIO"

    clock.now += 10  # the window is over: the next record that reaches the handler brings the count
    logger.info("rescan finished")
    lines = stream.getvalue().splitlines()
    assert len(lines) <= 5 + 1 + 1  # burst + one summary + the info line
    (summary,) = records.summaries()
    assert getattr(summary, SUMMARY_ATTR) == 995
    assert summary.levelno == logging.ERROR and summary.name == logger.name
    # the last suppressed line as it read, never the raw template
    assert summary.getMessage() == "cannot read /music/999.flac: EIO (and 995 more like this in 1s)"
    assert lines[5] == f"ERROR {logger.name}: cannot read /music/999.flac: EIO (and 995 more like this in 1s)"
    assert "%s" not in stream.getvalue()
    assert lines[6].endswith("rescan finished")
    assert filt.flush() == 0  # nothing left over: the count was reported once


@pytest.mark.expected_log(r"cannot read", r"disk full")
def test_pending_counts_are_flushed_at_shutdown(limited):
    logger, filt, clock, records, _ = limited
    for _ in range(12):
        logger.error("cannot read %s", "x")
    for _ in range(7):
        logger.error("disk full")
    assert logsetup.flush_summaries() >= 2  # the module-level flush reaches every installed filter
    counts = {s.args[0]: getattr(s, SUMMARY_ATTR) for s in records.summaries()}
    assert counts == {"cannot read x": 7, "disk full": 2}
    assert filt.tracked == 0


@pytest.mark.expected_log(r"origin .* failed", r"chunk .* corrupt")
def test_different_templates_levels_and_loggers_are_independent(limited):
    logger, filt, clock, records, _ = limited
    other = logging.getLogger(logger.name + ".other")  # propagates to the same handler
    for i in range(10):
        logger.error("origin %s failed", i)
        logger.error("chunk %s corrupt", i)
        logger.warning("origin %s failed", i)
        other.error("origin %s failed", i)
    assert len(records.records) == 4 * 5
    filt.flush()
    summaries = records.summaries()
    assert len(summaries) == 4 and all(getattr(s, SUMMARY_ATTR) == 5 for s in summaries)
    assert {(s.name, s.levelno, s.args[0]) for s in summaries} == {
        (logger.name, logging.ERROR, "origin 9 failed"), (logger.name, logging.ERROR, "chunk 9 corrupt"),
        (logger.name, logging.WARNING, "origin 9 failed"), (other.name, logging.ERROR, "origin 9 failed")}


def test_info_and_debug_are_never_limited(limited):
    logger, filt, clock, records, _ = limited
    for i in range(1000):
        logger.info("read %s", i)
        logger.debug("chunk %s", i)
    assert len(records.records) == 2000
    assert filt.tracked == 0 and filt.flush() == 0


@pytest.mark.expected_log(r"origin down", r"other problem")
def test_window_rollover_on_a_fake_clock(limited):
    logger, filt, clock, records, _ = limited
    filt.burst = 2
    for _ in range(5):
        logger.warning("origin down")  # t=0: 2 pass, 3 counted
    clock.now += 5
    logger.warning("origin down")  # t=5: same window, counted (4)
    assert len(records.records) == 2
    clock.now += 5  # t=10: a new window; the old count comes out first, then this record passes
    logger.warning("origin down")
    assert [getattr(r, SUMMARY_ATTR, None) for r in records.records] == [None, None, 4, None]
    assert records.records[2].getMessage() == "origin down (and 4 more like this in 5s)"
    for _ in range(3):
        logger.warning("origin down")  # t=10: one passes (2nd of the burst), two counted
    clock.now += 11
    logger.info("unrelated")  # any record that reaches the handler flushes expired windows
    assert [getattr(r, SUMMARY_ATTR, None) for r in records.records[4:]] == [None, 2, None]
    clock.now += 100
    logger.warning("other problem")  # nothing pending: no summary, just the record
    assert getattr(records.records[-1], SUMMARY_ATTR, None) is None and len(records.records) == 8


@pytest.mark.expected_log(r"failed on item")
def test_tracked_keys_are_bounded_and_eviction_loses_no_count(limited):
    logger, _, clock, records, _ = limited
    handler = logger.handlers[0]
    filt = RateLimitFilter(window=10.0, burst=1, clock=clock, max_keys=10).attach(handler)
    handler.removeFilter(handler.filters[0])  # only the small one
    try:
        for i in range(2000):  # the anti-pattern: a template per item (f-string) -> 2000 keys
            for _ in range(3):
                logger.error(f"failed on item {i}")
            assert filt.tracked <= 10
        filt.flush()
        assert sum(getattr(s, SUMMARY_ATTR) for s in records.summaries()) == 2000 * 2  # every one counted
        assert len(records.records) - len(records.summaries()) == 2000
    finally:
        logsetup._FILTERS.discard(filt)


@pytest.mark.expected_log(r"worker failed")
def test_counts_are_exact_under_threads(limited):
    logger, filt, clock, records, _ = limited

    def storm():
        for _ in range(500):
            logger.error("worker failed: %s", "boom")

    threads = [threading.Thread(target=storm) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    filt.flush()
    passed = [r for r in records.records if getattr(r, SUMMARY_ATTR, None) is None]
    assert len(passed) == 5
    assert sum(getattr(s, SUMMARY_ATTR) for s in records.summaries()) == 8 * 500 - 5


# -- setup_logging ----------------------------------------------------------------------------------------
@pytest.fixture
def clean_logging():
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        teardown_logging()
        root.setLevel(level)


@pytest.mark.expected_log(r"musicfs.test.setup: something broke")
def test_setup_logging_plain_format_has_timestamps(clean_logging, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    setup_logging("INFO", stream=stream)  # a second call replaces the handler, never doubles lines
    log = logging.getLogger("musicfs.test.setup")
    log.debug("hidden")
    log.error("something broke: %s", 42)
    (line,) = stream.getvalue().splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR musicfs.test.setup: something broke: 42$", line)
    ours = [h for h in logging.getLogger().handlers if getattr(h, logsetup._OURS, False)]
    assert len(ours) == 1 and any(isinstance(f, RateLimitFilter) for f in ours[0].filters)
    assert sys.excepthook is not sys.__excepthook__  # the hooks came with it
    teardown_logging()
    assert not [h for h in logging.getLogger().handlers if getattr(h, logsetup._OURS, False)]


@pytest.mark.expected_log(r"musicfs.test.journal: disk")
def test_setup_logging_under_systemd_has_priorities_and_no_timestamps(clean_logging, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()  # no file descriptor: the environment is trusted
    setup_logging("DEBUG", stream=stream)
    log = logging.getLogger("musicfs.test.journal")
    log.info("mounted")
    log.warning("disk %s", "slow")
    log.error("disk %s", "gone")
    assert stream.getvalue().splitlines() == [
        "<6>INFO musicfs.test.journal: mounted",
        "<4>WARNING musicfs.test.journal: disk slow",
        "<3>ERROR musicfs.test.journal: disk gone",
    ]


def test_journal_stream_of_another_file_means_plain(tmp_path, monkeypatch):
    with open(tmp_path / "log", "w") as fh:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # what a child inherits while its stderr goes elsewhere
        assert not logsetup.under_journal(fh)
        st = __import__("os").fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.under_journal(fh)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logsetup.under_journal(fh)


# -- unhandled exceptions ------------------------------------------------------------------------------
@pytest.fixture
def hooked():
    logger = logging.getLogger("musicfs.test.hooks")
    records = Records()
    logger.addHandler(records)
    install_exception_hooks(logger)
    try:
        yield records
    finally:
        uninstall_exception_hooks()
        logger.removeHandler(records)


def _boom():
    raise RuntimeError("boom in a worker")


@pytest.mark.expected_log(r"unhandled exception in thread tag-reader-3")
def test_thread_exception_is_logged_once_with_name_and_traceback(hooked, capfd):
    install_exception_hooks(logging.getLogger("musicfs.test.hooks"))  # installing twice changes nothing
    t = threading.Thread(target=_boom, name="tag-reader-3")
    t.start()
    t.join()
    (record,) = hooked.records
    assert record.getMessage() == "unhandled exception in thread tag-reader-3"
    assert record.levelno == logging.ERROR
    assert record.exc_info[0] is RuntimeError
    trace = logging.Formatter().formatException(record.exc_info)
    assert "Traceback" in trace and "in _boom" in trace and "RuntimeError: boom in a worker" in trace
    assert "Exception in thread" not in capfd.readouterr().err  # the default hook did not print it too


def test_system_exit_in_a_thread_stays_silent(hooked):
    t = threading.Thread(target=sys.exit, args=(3,))
    t.start()
    t.join()
    assert hooked.records == []


@pytest.mark.expected_log(r"unhandled exception in thread MainThread")
def test_sys_excepthook_logs_once_with_traceback(hooked):
    try:
        {}["missing"]
    except KeyError:
        sys.excepthook(*sys.exc_info())
    (record,) = hooked.records
    assert record.getMessage() == "unhandled exception in thread MainThread"
    assert record.levelno == logging.CRITICAL
    assert "KeyError: 'missing'" in logging.Formatter().formatException(record.exc_info)


def test_keyboard_interrupt_goes_to_the_previous_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: seen.append(exc[0]))
    logger = logging.getLogger("musicfs.test.hooks.kbd")
    records = Records()
    logger.addHandler(records)
    install_exception_hooks(logger)
    try:
        sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    finally:
        uninstall_exception_hooks()
        logger.removeHandler(records)
    assert seen == [KeyboardInterrupt]
    assert records.records == []


@pytest.mark.expected_log(r"fuse read: EIO")
def test_a_summary_reads_like_the_lines_it_stands_for_through_setup_logging():
    """The handler setup_logging installs prints the summary formatted (issue 13: it printed `fuse %s: %s`)."""
    stream = io.StringIO()
    logsetup.setup_logging("INFO", stream, burst=1)
    try:
        log = logging.getLogger("musicfs.test_summary")
        for _ in range(48):
            log.warning("fuse %s: %s", "read", "EIO")
        logsetup.flush_summaries()
    finally:
        logsetup.teardown_logging()
    text = stream.getvalue()
    assert "fuse read: EIO (and 47 more like this in" in text, text
    assert "%s" not in text


@pytest.mark.expected_log(r"botocore.credentials: Refreshing temporary credentials failed")
def test_botocore_info_is_quiet_at_the_default_level_and_shown_at_debug():
    stream = io.StringIO()
    botocore = logging.getLogger("botocore.credentials")
    try:
        logsetup.setup_logging("INFO", stream)
        botocore.info("Found credentials in environment variables.")
        botocore.warning("Refreshing temporary credentials failed")
        assert "Found credentials" not in stream.getvalue()
        assert "Refreshing temporary credentials failed" in stream.getvalue()
        logsetup.setup_logging("DEBUG", stream)
        botocore.info("Found credentials in shared credentials file")
        assert "Found credentials in shared credentials file" in stream.getvalue()
    finally:
        logsetup.teardown_logging()
        logging.getLogger("botocore").setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)


@pytest.mark.expected_log(r"cannot open")
def test_credentials_in_a_source_url_never_reach_the_log():
    stream = io.StringIO()
    logsetup.setup_logging("INFO", stream)
    try:
        log = logging.getLogger("musicfs.test_redact")
        log.error("cannot open %s", "s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@music/lib")
        log.info("mounted sftp://me:hunter2@nas/srv on /mnt")
        try:
            raise OSError("s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@music/lib: refused")
        except OSError:
            log.exception("cannot open %s", "the origin")
    finally:
        logsetup.teardown_logging()
        logging.getLogger().setLevel(logging.WARNING)
    text = stream.getvalue()
    assert "s3://***@music/lib" in text and "sftp://me:***@nas/srv" in text
    for secret in ("AKIAEXAMPLE", "wJalr", "hunter2"):
        assert secret not in text, text
