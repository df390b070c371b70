"""Writing the blog's files: replaced whole, never seen half-written (the standard library only).

The agent has its own copy (container/files.py): it imports nothing of the blog's package."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write `text` (or bytes) to `path` atomically: a temporary file beside it, renamed over it (readers see
    the old or the new content, never a part). `mode` applies before the rename (what the publisher's files
    are meant to have, see layout.repair; 0o600 for secrets)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
