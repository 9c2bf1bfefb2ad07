"""Logging for the daemon and the CLI: one handler, storm control, and hooks for unhandled exceptions.

- `setup_logging(level)`: timestamps on a terminal or in a file; none under systemd (journald stamps each
  line) but a `<N>` syslog priority prefix instead, so `journalctl -p warning` works.
- `RateLimitFilter`: an error storm becomes a few lines plus one line with the exact count of the rest
  (RESILIENCE 3.2). No count is lost: a pending count is emitted when its window ends (at the next record
  that reaches the handler) and by `flush_summaries()` at shutdown (also registered with atexit).
- `install_exception_hooks(logger)`: an exception nobody caught, in the main thread or any other thread,
  is logged once with its traceback and the thread's name (RESILIENCE 2.2, thread part).
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

from .redaction import RedactFilter

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

SUMMARY_ATTR = "ratelimit_suppressed"  # set on summary records: the number of records they stand for
_OURS = "_musicfs_handler"  # marks the handler setup_logging installed, so a second call replaces it

# syslog priorities for the "<N>" prefix journald understands (SyslogLevelPrefix=, on by default)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


# -- rate limiting ----------------------------------------------------------------------------------------
@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0
    last: logging.LogRecord | None = None  # the last suppressed record (its place in the code)
    last_time: float = 0.0


class RateLimitFilter(logging.Filter):
    """Let the first `burst` records of a kind through per `window` seconds; count the rest.

    A kind is (logger name, level, message template): `record.msg` before formatting, so
    "cannot read %s" is one kind whatever the path. Only WARNING and above are limited.
    The count of suppressed records comes out as one summary record of the same logger and level:
    "<the last suppressed message> (and N more like this in Ws)". It is emitted through `sink` (the handler
    this filter is attached to; see `attach`) when the window ends and another record reaches the
    filter, when the key is evicted, or on `flush()`. At most `max_keys` kinds are tracked.
    """

    def __init__(self, window: float = 10.0, burst: int = 5, clock: Callable[[], float] = time.monotonic,
                 *, max_keys: int = 1000, sink: Callable[[logging.LogRecord], object] | None = None):
        super().__init__()
        if window <= 0 or burst < 0 or max_keys < 1:
            raise ValueError("window > 0, burst >= 0 and max_keys >= 1 are required")
        self.window = window
        self.burst = burst
        self.max_keys = max_keys
        self.sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        # insertion order == window start order (windows start at `clock()`, which never goes back),
        # so the expired windows are always at the front
        self._windows: collections.OrderedDict[tuple, _Window] = collections.OrderedDict()
        _FILTERS.add(self)

    def attach(self, handler: logging.Handler) -> "RateLimitFilter":
        handler.addFilter(self)
        self.sink = handler.handle
        return self

    @property
    def tracked(self) -> int:
        return len(self._windows)

    @staticmethod
    def key(record: logging.LogRecord) -> tuple:
        msg = record.msg if isinstance(record.msg, str) else f"<{type(record.msg).__name__}>"
        return record.name, record.levelno, msg

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY_ATTR, None) is not None:
            return True  # our own summary, on its way through the handler
        now = self._clock()
        allow = True
        with self._lock:
            due = self._expire(now)
            if record.levelno >= logging.WARNING:
                key = self.key(record)
                win = self._windows.get(key)
                if win is None:
                    while len(self._windows) >= self.max_keys:
                        old_key, old = self._windows.popitem(last=False)
                        due.append((old_key, old))
                    win = self._windows[key] = _Window(start=now)
                if win.passed < self.burst:
                    win.passed += 1
                else:
                    win.suppressed += 1
                    win.last, win.last_time = record, now
                    allow = False
        self._emit(due, now)
        return allow

    def flush(self) -> int:
        """Emit every pending count now (at shutdown); returns how many summaries went out."""
        now = self._clock()
        with self._lock:
            due = list(self._windows.items())
            self._windows.clear()
        return self._emit(due, now)

    def _expire(self, now: float) -> list[tuple[tuple, _Window]]:
        due = []
        while self._windows:
            key, win = next(iter(self._windows.items()))
            if now - win.start < self.window:
                break
            self._windows.popitem(last=False)
            due.append((key, win))
        return due

    def _emit(self, due: Iterable[tuple[tuple, _Window]], now: float) -> int:
        sent = 0
        for key, win in due:
            if not win.suppressed:
                continue
            record = self.summary_record(key, win, now)
            sink = self.sink or logging.getLogger(record.name).handle
            try:
                sink(record)
            except Exception:  # a broken handler must not turn logging into a crash
                pass
            sent += 1
        return sent

    def summary_record(self, key: tuple, win: _Window, now: float) -> logging.LogRecord:
        name, levelno, template = key
        # the span the suppressed records came in: from the window's start to the last of them,
        # in tenths of a second rounded up ("1s", "0.3s"), never more than the window
        span = min(self.window, max(0.1, math.ceil(round(win.last_time - win.start, 6) * 10) / 10))
        last = win.last
        # the last suppressed line as it would have read (never the raw "%s" template)
        text = template
        if last is not None:
            try:
                text = last.getMessage()
            except Exception:  # its arguments do not fit its template: the template says what kind it was
                pass
        record = logging.LogRecord(
            name, levelno, last.pathname if last else "", last.lineno if last else 0,
            "%s (and %d more like this in %ss)", (text, win.suppressed, f"{span:g}"), None,
            func=last.funcName if last else None)
        setattr(record, SUMMARY_ATTR, win.suppressed)
        return record


_FILTERS: "weakref.WeakSet[RateLimitFilter]" = weakref.WeakSet()


def flush_summaries() -> int:
    """Emit the pending counts of every rate-limit filter (call at shutdown; also runs at exit)."""
    return sum(f.flush() for f in list(_FILTERS))


def _flush_at_exit() -> None:
    # At exit a handler's stream may already be closed (tests, pipes): a lost summary beats a traceback.
    logging.raiseExceptions = False
    flush_summaries()


# -- formatting -----------------------------------------------------------------------------------------
class JournalFormatter(logging.Formatter):
    """No timestamp (the journal adds one) and a syslog priority prefix on every line of a record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = next((p for level, p in _PRIORITY if record.levelno >= level), 7)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def under_journal(stream) -> bool:
    """True when `stream` is the journal stream systemd gave us (JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True  # not a real file (tests): trust the environment
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)  # else: a child whose stderr was redirected elsewhere


# -- setup ----------------------------------------------------------------------------------------------
_atexit_registered = False


def setup_logging(level: str, stream=None, *, window: float = 10.0, burst: int = 5) -> logging.Handler:
    """One stderr handler on the root logger (replacing a previous one of ours, leaving others alone)."""
    global _atexit_registered
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        _release(old)
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    setattr(handler, _OURS, True)
    handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if under_journal(stream) else logging.Formatter(PLAIN_FORMAT))
    RateLimitFilter(window, burst).attach(handler)
    handler.addFilter(RedactFilter())  # after the rate limit, which keys on the raw template
    root.addHandler(handler)
    root.setLevel(level)
    quiet_chatty_libraries(level)
    install_exception_hooks(logging.getLogger("musicfs"))
    if not _atexit_registered:
        atexit.register(_flush_at_exit)
        _atexit_registered = True
    return handler


# Libraries whose INFO lines are connection chatter (botocore's "Found credentials in environment variables."):
# only their warnings and errors are shown unless the level is DEBUG.
CHATTY_LOGGERS = ("botocore",)


def quiet_chatty_libraries(level) -> None:
    """WARNING and above from CHATTY_LOGGERS at any level but DEBUG; everything at DEBUG."""
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if numeric == logging.DEBUG else logging.WARNING)


def teardown_logging() -> None:
    """Flush pending counts, remove the handler setup_logging installed and put the hooks back."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        _release(old)
        root.removeHandler(old)
    uninstall_exception_hooks()


def _release(handler: logging.Handler) -> None:
    for f in list(handler.filters):
        if isinstance(f, RateLimitFilter):
            f.flush()
            handler.removeFilter(f)
            _FILTERS.discard(f)


# -- unhandled exceptions -------------------------------------------------------------------------------
_saved_hooks: tuple | None = None  # (sys.excepthook, threading.excepthook) before ours


def install_exception_hooks(logger: logging.Logger) -> None:
    """Log an uncaught exception once, with traceback and thread name, instead of printing it.

    KeyboardInterrupt at the top level goes to the previous hook (a plain ^C, no traceback in the log);
    SystemExit in a thread stays silent, as in the default hook. Installing twice replaces the logger.
    """
    global _saved_hooks
    if _saved_hooks is None:
        _saved_hooks = (sys.excepthook, threading.excepthook)
    previous_sys, previous_thread = _saved_hooks

    def sys_hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous_sys(exc_type, exc, tb)
            return
        try:
            logger.critical("unhandled exception in thread %s", threading.current_thread().name,
                            exc_info=(exc_type, exc, tb))
        except Exception:
            previous_sys(exc_type, exc, tb)

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "<unknown>"
        try:
            logger.error("unhandled exception in thread %s", name,
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        except Exception:
            previous_thread(args)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook


def uninstall_exception_hooks() -> None:
    global _saved_hooks
    if _saved_hooks is not None:
        sys.excepthook, threading.excepthook = _saved_hooks
        _saved_hooks = None
