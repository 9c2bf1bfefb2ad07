"""Row 6.10 in-process: on glibc the malloc arenas can be capped and free heap handed back (memory.py); the
figures under load are bench/memory_soak.py's."""

from __future__ import annotations

import ctypes.util

import pytest

from musicfs.shared import memory


@pytest.mark.resilience("6.10")
@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="no C library to load")
def test_arenas_are_capped_and_free_heap_goes_back_on_glibc():
    assert memory.cap_arenas(memory.ARENAS) is True
    blocks = [bytearray(256 << 10) for _ in range(400)]  # 100 MiB in mmap-sized and smaller pieces
    del blocks
    assert isinstance(memory.trim_heap(), bool)
