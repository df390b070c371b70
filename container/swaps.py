"""The frontend forgets an instance's pages at its swap, not up to a second later.

A provided service may name its release link in the manifest (`<provide release-link="/workdir/current">`):
a symlink in a persistent volume that the instance replaces with rename(2) when it publishes (a push, a
rollback, a scheduled post coming due). The volume is mounted on the host (container/volume.py), so the
agent watches the link's folder there with inotify; when the link is replaced, it tells HAProxy at once
through its runtime API (Frontend.forget: the swaps map). The backend's cache key holds that time, so from
then on the cache looks only for answers stored after the swap (what it held before expires unread), and hot
pages come from the cache again at once. No reload. Each round of the agent also looks at the links, so a lost
notice is made good within a round (SwapWatch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from container import volume
from container.frontend import RELEASED_LIFE
from container.records import Application

log = logging.getLogger("container")


@dataclass(frozen=True)
class Link:
    """Where an instance's release link is on the host: its folder (in the mounted volume) and its name."""
    folder: Path
    name: str


def links(apps: tuple[Application, ...], state_dir: Path) -> dict[str, Link]:
    """backend name → the release link of the instance behind it, for each provided service that names one."""
    found = {}
    for app in apps:
        for provide in app.manifest.provides:
            if provide.release_link is None or provide.release_volume is None:
                continue
            fs = next(fs for fs in app.manifest.volumes if fs.mountpoint == provide.release_volume)
            mounted = volume.paths(state_dir, app.name, fs)[1]
            inside = os.path.relpath(provide.release_link, provide.release_volume)
            backend = f"{provide.name}.{app.name}" if app.site is not None else provide.name
            found[backend] = Link((mounted / inside).parent, Path(inside).name)
    return found


class _Swapped(FileSystemEventHandler):
    def __init__(self, name: str, watch: SwapWatch):
        self.name, self.watch = name, watch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("moved", "created"):
            return
        target = str(getattr(event, "dest_path", "") or event.src_path)
        link = self.watch.wanted.get(self.name)
        if link is not None and os.path.basename(target) == link.name:
            self.watch.check(self.name, link, at_once=True)


class SwapWatch:
    """The release links watched, kept in line with the applications by sync(): inotify on their folders tells
    of a swap at once; sync() itself, called each round of the agent, looks at each link too, so a swap whose
    notice was lost (no watch could be placed, the agent was restarting) or could not be told (the frontend
    did not answer) is told within a round. A link first seen is taken for a swap when it was put in place
    within the cache's life of its pages (the agent may have missed it), so the frontend forgets what it may
    still hold from before. `swapped(backend)` tells the frontend; False when it could not."""

    def __init__(self, swapped: Callable[[str], bool]):
        self.swapped = swapped
        self.observer = Observer()
        self.observer.daemon = True
        self.watches: dict[str, tuple[Link, int, ObservedWatch]] = {}  # backend → (link, the folder's device, watch)
        self.wanted: dict[str, Link] = {}
        self.seen: dict[str, tuple[int, int, int, int]] = {}  # backend → its link (device, inode, ctime, mtime) told
        self.unwatched: set[str] = set()  # backends whose watch could not be placed (said once)
        self._lock = threading.Lock()
        self.started = False

    def sync(self, wanted: dict[str, Link]) -> None:
        """Watch exactly these links and look at each. A folder whose filesystem changed (the volume mounted after
        the watch was placed, or mounted again) is watched anew; a folder that is not there yet is tried again
        next time."""
        self.wanted = dict(wanted)
        for name in list(self.watches):
            if name not in self.watches:
                continue  # went with another backend's watch of the same folder
            watched, watched_device, watch = self.watches[name]
            if wanted.get(name) != watched or _device(watched.folder) != watched_device:
                with contextlib.suppress(KeyError):
                    self.observer.unschedule(watch)
                for other in [other for other, (_, _, each) in self.watches.items() if each == watch]:
                    del self.watches[other]  # backends watching the same folder share the watch: placed again below
        with self._lock:
            for name in [name for name in self.seen if name not in wanted]:
                del self.seen[name]
        for name, link in wanted.items():
            self.check(name, link)
            if name in self.watches:
                continue
            device = _device(link.folder)
            if device is None:
                continue
            try:
                watch = self.observer.schedule(_Swapped(name, self), str(link.folder), recursive=False)
            except OSError as exc:  # inotify limits: each round still looks at the link (and tries again)
                if name not in self.unwatched:
                    self.unwatched.add(name)
                    log.warning("cannot watch %s for swaps (%s); they are seen within a round of the agent instead",
                                link.folder, exc)
                continue
            self.unwatched.discard(name)
            self.watches[name] = (link, device, watch)
        if not self.started:
            self.observer.start()
            self.started = True

    def check(self, name: str, link: Link, at_once: bool = False) -> None:
        """Tell of a swap if the link is not the one last told of (`at_once`: inotify saw it replaced). The link's
        ctime is when it was put in place (rename(2) sets it; its mtime may be older)."""
        with self._lock:  # one look at a time: the observer's thread and the agent's round
            try:
                st = os.lstat(link.folder / link.name)
            except OSError:
                return  # not published yet
            now = (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns)
            before = self.seen.get(name)
            if before == now:
                return
            if before is None and not at_once and time.time() - st.st_ctime > RELEASED_LIFE:
                self.seen[name] = now  # put in place before anything the cache still holds
                return
            try:
                told = self.swapped(name)
            except Exception:  # noqa: BLE001 - the watch goes on, and tries again next round
                log.exception("telling the frontend of %s's swap failed", name)
                told = False
            if told:
                self.seen[name] = now

    def stop(self) -> None:
        if self.started:
            self.observer.stop()
            self.observer.join(5)


def _device(folder: Path) -> int | None:
    try:
        return os.stat(folder).st_dev
    except OSError:
        return None
