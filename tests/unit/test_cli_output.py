"""The CLI's output to a reader that goes away (`musicfs search x | head -3`): a quiet exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from musicfs.commands.cli import EX_BROKEN_PIPE
from musicfs.library.search import IndexDoc, SearchIndex

TRACKS = 5000  # ~1 MiB of paths: far more than a pipe holds, so the writer is still writing when head exits


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    docs = [IndexDoc(10 + i, f"Aurora Quartet/Northern Lights {i // 20}/{i % 20:02d} - {'Polar Dawn ' * 15}{i}.flac",
                     "Aurora Quartet", f"Northern Lights {i // 20}", f"Polar Dawn {i}", "Ambient") for i in range(TRACKS)]
    assert SearchIndex(str(state / "index")).rebuild(docs) == TRACKS
    return state


def search_cmd(state_dir) -> list[str]:
    return [sys.executable, "-m", "musicfs", "search", "aurora", "--state-dir", str(state_dir),
            "--limit", str(TRACKS)]


def test_search_into_a_pipe_closed_before_it_writes_exits_quietly(state_dir):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        result = subprocess.run(search_cmd(state_dir), stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == EX_BROKEN_PIPE == 141
    assert result.stderr == b"", result.stderr.decode()


def test_search_piped_into_head_exits_quietly(state_dir):
    search = subprocess.Popen(search_cmd(state_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-3"], stdin=search.stdout, capture_output=True, timeout=60)
    search.stdout.close()  # only head holds the read end: when it exits, the pipe is closed
    _, err = search.communicate(timeout=60)
    assert head.returncode == 0 and len(head.stdout.splitlines()) == 3
    assert search.returncode == EX_BROKEN_PIPE, err.decode()
    assert err == b""


def test_search_to_a_reader_that_reads_everything_exits_0(state_dir):
    result = subprocess.run(search_cmd(state_dir), capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stderr == b""
    assert len(result.stdout.splitlines()) == TRACKS
