"""What wakes the watcher before its next poll: a valid webhook (serve.py touches the wake file)
and, for a remote on this machine (file://, such as the host bootstrap's repository mounted into
the instance), a change of the remote's refs: a `git push` is seen at once, without polling."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


def is_ref_change(path: str, repo: str) -> bool:
    """A ref of `repo` changed (refs/…, packed-refs, HEAD); object writes and lock files do not count."""
    relative = os.path.relpath(path, repo)
    if relative.startswith("..") or relative.endswith(".lock"):
        return False
    return relative in ("packed-refs", "HEAD") or relative.startswith("refs" + os.sep)


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event, wake_file: Path, repo: str | None):
        self.wake, self.wake_file, self.repo = wake, str(wake_file), repo

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for path in (str(event.src_path), str(getattr(event, "dest_path", "") or "")):
            if path == self.wake_file or (path and self.repo and is_ref_change(path, self.repo)):
                self.wake.set()
                return


def start(wake: threading.Event, wake_file: Path, repo: str | None) -> Observer | None:
    """Watch the wake file and, when given, the local remote; None when watching is impossible."""
    observer = Observer()
    handler = _Wake(wake, wake_file, os.path.realpath(repo) if repo else None)
    try:
        wake_file.parent.mkdir(parents=True, exist_ok=True)
        observer.schedule(handler, str(wake_file.parent), recursive=False)
        if handler.repo and os.path.isdir(handler.repo):
            # The refs only (packed-refs and HEAD at the top, refs/ below): a push also writes objects,
            # in temporary directories git creates and removes, which are not worth an inotify watch.
            observer.schedule(handler, handler.repo, recursive=False)
            refs = os.path.join(handler.repo, "refs")
            if os.path.isdir(refs):
                observer.schedule(handler, refs, recursive=True)
            log.info("watching %s for pushes", handler.repo)
        observer.start()
    except OSError as exc:  # inotify limits: polling still works
        log.warning("cannot watch for wake-ups (%s); relying on polling", exc)
        return None
    return observer
