"""The allocator setting of the client and server processes: applied once, harmless to repeat."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from shared.memory import keep_freed_memory, one_malloc_arena


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_once_on_glibc() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent: the client app calls it on every message


def test_one_malloc_arena_reaches_child_processes_and_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    child = [sys.executable, "-c", "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"]
    with one_malloc_arena():
        assert subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip() == "1"
    assert os.environ["MALLOC_ARENA_MAX"] == "4"  # the caller's setting is back
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    with pytest.raises(RuntimeError), one_malloc_arena():
        raise RuntimeError("the block failed")
    assert "MALLOC_ARENA_MAX" not in os.environ  # undone after an error too
