"""What the host agent (container/) and the blog (pipeline/, serve.py) both need: the standard library only.

It lives in pipeline/ because both deployables ship that package (the image has pipeline/ and serve.py, the
agent's install the whole distribution); a module of its own keeps the agent from importing the blog's
modules for it (tests/test_imports.py checks that the agent imports nothing else of pipeline/)."""

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
