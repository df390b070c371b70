"""Writing the agent's files: replaced whole, never seen half-written.

The blog has a function of the same name (pipeline/files.py); the agent keeps its own so that it imports nothing
of the blog's package (tests/test_imports.py checks it): the two deployables are released and changed apart."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` atomically: a temporary file beside it, renamed over it (readers see the old
    or the new content, never a part). `mode` applies before the rename (e.g. 0o600 for secrets)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
