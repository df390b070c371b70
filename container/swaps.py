"""The frontend forgets an instance's pages at its swap, not up to a second later.

A provided service may name its release link in the manifest (`<provide release-link="/workdir/current">`):
a symlink in a persistent volume that the instance replaces with rename(2) when it publishes (a push, a
rollback, a scheduled post coming due). The volume is mounted on the host (container/volume.py), so the
agent watches the link's folder there with inotify; when the link is replaced, it tells HAProxy at once
through its runtime API (Frontend.forget: the swaps map). The backend's cache key holds that time, so from
then on the cache looks only for answers stored after the swap (what it held before expires within 1 s,
unread), and hot pages come from the cache again at once. No reload.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from container import volume
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
    def __init__(self, name: str, link: Link, swapped: Callable[[str], None]):
        self.name, self.link, self.swapped = name, link, swapped

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("moved", "created"):
            return
        target = str(getattr(event, "dest_path", "") or event.src_path)
        if os.path.basename(target) == self.link.name:
            try:
                self.swapped(self.name)
            except Exception:  # noqa: BLE001 - the watch goes on; the cache's max-age (1 s) still bounds this one
                log.exception("telling the frontend of %s's swap failed", self.name)


class SwapWatch:
    """inotify watches of the release links' folders, kept in line with the applications by sync()."""

    def __init__(self, swapped: Callable[[str], None]):
        self.swapped = swapped
        self.observer = Observer()
        self.observer.daemon = True
        self.watches: dict[str, tuple[Link, int, ObservedWatch]] = {}  # backend → (link, the folder's device, watch)
        self.started = False

    def sync(self, wanted: dict[str, Link]) -> None:
        """Watch exactly these links. A folder whose filesystem changed (the volume mounted after the watch was
        placed, or mounted again) is watched anew; a folder that is not there yet is tried again next time."""
        for name in list(self.watches):
            watched, watched_device, watch = self.watches[name]
            if wanted.get(name) != watched or _device(watched.folder) != watched_device:
                self.observer.unschedule(watch)
                del self.watches[name]
        for name, link in wanted.items():
            if name in self.watches:
                continue
            device = _device(link.folder)
            if device is None:
                continue
            try:
                watch = self.observer.schedule(_Swapped(name, link, self.swapped), str(link.folder), recursive=False)
            except OSError as exc:  # inotify limits: the cache's max-age (1 s) still bounds what it keeps
                log.warning("cannot watch %s for swaps (%s); its cached pages expire within 1 s", link.folder, exc)
                continue
            self.watches[name] = (link, device, watch)
        if not self.started:
            self.observer.start()
            self.started = True

    def stop(self) -> None:
        if self.started:
            self.observer.stop()
            self.observer.join(5)


def _device(folder: Path) -> int | None:
    try:
        return os.stat(folder).st_dev
    except OSError:
        return None
