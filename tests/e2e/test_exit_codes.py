"""The README's exit-code table is true: each mistake below is run through the real CLI and must exit with a code
the table gives for its command, and every code of the table that a mistake can show here is shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def table() -> dict[int, set[str]]:
    """code -> the commands its rows name ("all" for every command)."""
    text = README.read_text()
    section = text[text.index("## Exit codes"):]
    rows: dict[int, set[str]] = {}
    for code, commands in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M):
        rows.setdefault(int(code), set()).update(a or b for a, b in re.findall(r"`(\w+)`|(all)", commands))
    return rows


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A user with one scanned (not mounted) library of real audio."""
    home = tmp_path_factory.mktemp("home")
    assert run(home, "demo", str(home / "lib"), "--tracks", "2").returncode == 0
    assert run(home, "scan", str(home / "lib")).returncode == 0
    (home / "bad.toml").write_text('cache_size = "zz"\n')
    (home / "empty").mkdir()
    return home


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache")}
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=home)


MISTAKES = [  # (what the user typed, the code it must give)
    (("search", "Aurora"), 0),  # the demo's first artist: something matches
    (("search", "zzzzqqq"), 1),
    (("mount", "{home}/empty", "{home}/mnt"), 1),  # no audio in the source
    (("status", "--state-dir", "{home}/nosuch"), 1),
    (("forget", "{home}/nosuch"), 2),
    (("mount", "s4://music/library", "{home}/mnt"), 2),
    (("mount", "s3:/music/library", "{home}/mnt"), 2),
    (("scan", "{home}/lib", "--cache-size", "banana"), 2),
    (("pin", "{home}"), 2),  # not inside a mount
    (("status",), 3),  # the only library is not running
    (("pins",), 3),
    (("fsck", "--state-dir", "{home}/nosuch"), 8),
    (("scan", "{home}/lib", "--config", "{home}/bad.toml"), 78),
]


@pytest.mark.parametrize("typed,code", MISTAKES, ids=[" ".join(t) for t, _ in MISTAKES])
def test_each_mistake_exits_with_a_code_the_readme_gives_for_its_command(home, typed, code):
    args = [a.format(home=home) for a in typed]
    result = run(home, *args)
    assert result.returncode == code, (args, result.stdout[-500:], result.stderr[-1500:])
    rows = table()
    assert code in rows and (args[0] in rows[code] or "all" in rows[code]), \
        f"README's exit-code table has no row {code} for `{args[0]}`"
    assert "Traceback" not in result.stderr


def test_every_code_of_the_table_but_the_hard_to_cause_ones_is_shown_above():
    shown = {code for _, code in MISTAKES}
    hard = {4: "fsck leaves problems: needs damage fsck cannot repair",
            130: "Ctrl-C before the daemon takes over"}
    assert set(table()) - shown == set(hard), set(table()) - shown
