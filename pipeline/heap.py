"""Giving the memory a finished deploy freed back to the system.

A deploy (git, the build worker's answers, the link report's parsing) leaves garbage and freed blocks in the
C heap; CPython frees its own arenas, but glibc keeps the rest until malloc_trim. Called once after each
deploy, so that an idle instance holds what it uses (docs/benchmarks.md, idle memory), not what its last
publish needed for a moment.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim from the process's own C library (no search: find_library forks), or None (musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release() -> None:
    """Collect garbage and return free heap pages to the system (glibc's malloc_trim; nothing elsewhere)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
