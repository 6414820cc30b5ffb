"""The allocator setting of the client and server processes: applied once, harmless to repeat."""

from __future__ import annotations

import platform

import pytest

from shared.memory import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_once_on_glibc() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent: the client app calls it on every message
