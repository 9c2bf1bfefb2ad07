"""Failpoints for MusicFS, modelled on TiKV's fail-rs.

Code marks an interesting spot with ``fail_point("name")`` (or
``await fail_point_async("name")`` in trio code). The point does nothing
until a test or the ``FAILPOINTS`` environment variable arms it:

    FAILPOINTS="name=actions;name2=actions"
    actions := action ("->" action)*
    action  := [p%][cnt*]task[(arg)]

``p`` is a percentage (``50%``, ``12.5%``; 0..100) and ``cnt`` an integer
count. The actions of a chain are tried in order and the first one that
fires wins: it fires when its probability draw succeeds and its count is
not used up; only a firing action's count drops, and an exhausted action is
skipped. If nothing fires, the point does nothing.

Tasks (case-sensitive):

    off            do nothing
    return[(v)]    fail_point() returns v ("" without an argument)
    sleep(ms)      sleep ms milliseconds (trio.sleep in the async flavour)
    delay(ms)      same as sleep (a busy-wait in fail-rs)
    panic[(msg)]   raise FailPointPanic(msg)
    print[(msg)]   log msg at INFO on the "musicfs.failpoints" logger
    pause          block until the point is reconfigured or removed
    yield          give up the CPU / a trio checkpoint
    crash          SIGKILL this process (for crash-consistency tests)

Arguments are taken by their parentheses, so ``return(50%)`` returns "50%"
and separators inside parentheses are not separators. A malformed spec
raises ValueError quoting the bad text.

Points may be declared with ``declare(name, description)`` so the set of
points in the code base can be listed; arming undeclared names is allowed.
"""

from ._eval import FailPointPanic, fail_point, fail_point_async
from ._registry import (
    FailScenario,
    cfg,
    declare,
    declared,
    paused_count,
    remove,
    set_seed,
    setup_from_env,
    teardown,
    wait_paused,
)
from ._registry import list_armed as list  # noqa: A001 - fail-rs's name

__all__ = [
    "FailPointPanic",
    "FailScenario",
    "cfg",
    "declare",
    "declared",
    "fail_point",
    "fail_point_async",
    "list",
    "paused_count",
    "remove",
    "set_seed",
    "setup_from_env",
    "teardown",
    "wait_paused",
]
