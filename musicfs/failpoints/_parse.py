"""Parser for the fail-rs action grammar.

    spec    := entry (";" entry)*          (the FAILPOINTS variable)
    entry   := name "=" actions
    actions := action ("->" action)*
    action  := [p%][cnt*]task[(arg)]

Separators (";" and "->") only count outside parentheses, and the argument
is everything between the first "(" and the closing ")" at the end of the
action, so `return(50%)` and `print(a->b)` keep their text intact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tasks that take no argument, an optional one, or a required millisecond one.
NO_ARG_TASKS = frozenset({"off", "pause", "yield", "crash"})
OPTIONAL_ARG_TASKS = frozenset({"return", "panic", "print"})
MILLIS_TASKS = frozenset({"sleep", "delay"})

_PERCENT = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_COUNT = re.compile(r"\d+")


@dataclass
class Action:
    """One step of a chain. `count` is None for "unlimited"."""

    task: str
    arg: str | None = None
    probability: float = 1.0
    count: int | None = None


def split_outside_parens(text: str, sep: str) -> list[str]:
    """Split `text` on `sep`, ignoring separators inside parentheses.

    Raises ValueError when the parentheses do not balance, because a lost
    ")" would otherwise silently swallow the rest of the chain.
    """
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in {text!r}")
    parts.append(text[start:])
    return parts


def _bad(action: str, context: str, why: str) -> ValueError:
    return ValueError(f"bad failpoint action {action!r} in {context!r}: {why}")


def parse_action(text: str, context: str) -> Action:
    """Parse one `[p%][cnt*]task[(arg)]`; `context` is quoted in errors."""
    raw = text.strip()
    head, arg = raw, None
    if "(" in raw:
        open_at = raw.index("(")
        if not raw.endswith(")"):
            raise _bad(raw, context, "parentheses do not match")
        head, arg = raw[:open_at], raw[open_at + 1 : -1]

    probability = 1.0
    if "%" in head:
        pct, head = head.split("%", 1)
        if not _PERCENT.fullmatch(pct) or float(pct) > 100:
            raise _bad(raw, context, f"probability {pct!r} is not in 0..100")
        probability = float(pct) / 100

    count = None
    if "*" in head:
        cnt, head = head.split("*", 1)
        if not _COUNT.fullmatch(cnt):
            raise _bad(raw, context, f"count {cnt!r} is not a non-negative integer")
        count = int(cnt)

    _check_task(head, arg, raw, context)
    return Action(task=head, arg=arg, probability=probability, count=count)


def _check_task(task: str, arg: str | None, raw: str, context: str) -> None:
    if task in NO_ARG_TASKS:
        if arg is not None:
            raise _bad(raw, context, f"{task} takes no argument")
    elif task in MILLIS_TASKS:
        if arg is None or not _COUNT.fullmatch(arg):
            raise _bad(raw, context, f"{task} needs an integer millisecond argument")
    elif task not in OPTIONAL_ARG_TASKS:
        raise _bad(raw, context, f"unknown task {task!r}")


def parse_actions(name: str, actions: str) -> list[Action]:
    """Parse the right-hand side of `name=actions` into a chain."""
    context = f"{name}={actions}"
    if not name.strip():
        raise ValueError(f"bad failpoint entry {context!r}: empty name")
    try:
        pieces = split_outside_parens(actions, "->")
    except ValueError as exc:
        raise ValueError(f"bad failpoint actions in {context!r}: {exc}") from None
    return [parse_action(piece, context) for piece in pieces]


def parse_spec(spec: str) -> list[tuple[str, str, list[Action]]]:
    """Parse a whole FAILPOINTS value into (name, actions-text, chain) triples.

    Empty entries (e.g. a trailing ";") are skipped, as in fail-rs.
    """
    try:
        entries = split_outside_parens(spec, ";")
    except ValueError as exc:
        raise ValueError(f"bad FAILPOINTS value {spec!r}: {exc}") from None
    parsed = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        if "=" not in entry:
            raise ValueError(f"bad failpoint entry {entry!r}: expected name=actions")
        name, actions = (part.strip() for part in entry.split("=", 1))
        parsed.append((name, actions, parse_actions(name, actions)))
    return parsed
