"""The watch → build → publish loop: when to check the remote, when to deploy (pipeline.publish.deployer), back-off
after failures, and one watcher per DATA_DIR."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from pipeline import heap, heartbeat, releases
from pipeline.config import Settings, redact_url
from pipeline.errors import GitError, PipelineError
from pipeline.publish import previews, triggers
from pipeline.publish.deployer import Deployer
from pipeline.publish.git_source import local_path

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF = 300.0
FETCH_ATTEMPTS = 3  # a head that cannot be fetched (or checked out) this often in a row is given up on
INTERRUPTED_ATTEMPTS = 2  # builds of one commit the instance did not survive before it is given up on


def next_due(scheduled: object) -> float | None:
    """When the first post the live release holds back is due (status.json's `scheduled`: kept across restarts)."""
    items = scheduled if isinstance(scheduled, list) else []
    dues = [item["due"] for item in items if isinstance(item, dict) and isinstance(item.get("due"), float)]
    return min(dues) if dues else None


def backoff_delay(interval: float, failures: int) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling, capped."""
    if failures <= 0:
        return interval
    return min(interval * 2 ** min(failures, 16), max(MAX_BACKOFF, interval))


class Watcher:
    """Checks the remote every POLL_INTERVAL (or when woken) and deploys a moved head; never ends on an error."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.deployer = Deployer(settings, self.stop)
        self.source, self.store = self.deployer.source, self.deployer.store
        self._transient_failures = 0
        self._fetch_failures: tuple[str, int] = ("", 0)  # (head, attempts in a row)
        self.heartbeat = heartbeat.for_watcher(settings)  # serve.py's health check reads it
        self.previews = (previews.Previews(settings, self.deployer.builder, self.store, self.deployer.notifier,
                                          self.stop)
                         if settings.previews_host else None)

    def _record_error(self, message: str, *, transient: bool) -> None:
        log.error("%s", message)
        if transient:
            self._transient_failures += 1
        with self.store.edit() as status:
            status.record_failure(message, remote=transient)

    def check_once(self) -> float:
        """One cycle: check the remote, build and publish when it moved. Returns seconds to wait."""
        settings = self.settings
        try:
            head = self.source.remote_head()
        except GitError as exc:
            self._record_error(str(exc), transient=True)
            return backoff_delay(settings.poll_interval, self._transient_failures)
        with self.store.edit() as status:
            status.checked(redact_url(settings.site_repo), settings.site_branch)
            last_attempted = status.last_attempted_commit
            due = next_due(status.scheduled)
        if head is None:
            self._record_error(
                f"branch {settings.site_branch!r} does not exist on {redact_url(settings.site_repo)}; "
                "still serving the last good release", transient=True,
            )
            return backoff_delay(settings.poll_interval, self._transient_failures)
        self._transient_failures = 0
        clean = self._clean_build_asked()
        if clean:
            log.info("a clean build was asked for: building %s from scratch", head[:12])
        elif head == last_attempted:
            if due is None or due > time.time():
                return settings.poll_interval if due is None else min(settings.poll_interval,
                                                                      max(due - time.time(), 0.05))
            log.info("a scheduled post is due: building %s again", head[:12])
        try:
            self.deployer.deploy(clean=clean)
        except GitError as exc:
            # Fetching or checking out the head failed (network, disk full, a size limit): retried a few
            # times, then recorded as that commit's failure and not tried again until the head moves.
            previous, attempts = self._fetch_failures
            attempts = attempts + 1 if previous == head else 1
            self._fetch_failures = (head, attempts)
            self.deployer.forget_build()  # not the build's fault: no interrupted build to recover
            if attempts >= FETCH_ATTEMPTS:
                self._fetch_failures = ("", 0)
                self.deployer.give_up(head, f"{exc} (tried {attempts} times; tried again when the branch moves)")
                return settings.poll_interval
            self._record_error(str(exc), transient=True)
            return backoff_delay(settings.poll_interval, self._transient_failures)
        finally:
            heap.release()  # once per deploy, whatever its end: what it needed for a moment goes back
        self._fetch_failures = ("", 0)
        return 0 if self.wake.is_set() else settings.poll_interval

    def _clean_build_asked(self) -> bool:
        """Whether the owner asked for a clean build (POST /_site/rebuild); the request is used up."""
        try:
            self.settings.layout.rebuild_file.unlink()
            return True
        except FileNotFoundError:
            return False

    def recover_interrupted(self) -> None:
        """A build the instance did not survive (out of memory, killed) is tried again once; after that its
        commit is recorded as failed, so a bad head never becomes a crash loop."""
        building = self.store.read().building
        if not building:
            return
        attempts = int(building.get("attempts", 1))
        if attempts >= INTERRUPTED_ATTEMPTS:
            self.deployer.give_up(building["commit"], f"the instance stopped during {attempts} builds of this "
                                  "commit (out of memory, or killed); it is built again when the branch moves")
        else:
            log.warning("the build of %s was interrupted; building it once more", building["commit"][:12])

    def run_forever(self) -> None:
        log.info(
            "watching %s branch %s every %g s", redact_url(self.settings.site_repo),
            self.settings.site_branch, self.settings.poll_interval,
        )
        self.heartbeat.start()
        with self._only_watcher():
            if self.stop.is_set():
                return
            self.heartbeat.expect_cycle()
            self.deployer.repair()
            if self.previews is None:
                previews.remove_all(self.settings, self.store)
            self._loop()

    @contextlib.contextmanager
    def _only_watcher(self) -> Iterator[None]:
        """One watcher per DATA_DIR: while an instance is replaced, the old and the new one share the volume;
        the new one serves what is there and waits until the old one is gone."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.layout.watcher_lock, "a") as lock:
            waiting = False
            while not self.stop.is_set():
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        log.info("another watcher uses %s; serving its releases until it is gone",
                                 self.settings.data_dir)
                        waiting = True
                    self.heartbeat.expect(0.5)  # healthy while it waits: the replacement must finish
                    self.stop.wait(0.5)
            yield

    def _loop(self) -> None:
        observer = triggers.start(self.wake, self.settings.layout.wake_file, local_path(self.settings.site_repo))
        try:
            self._guarded(self.recover_interrupted)
            while not self.stop.is_set():
                self.wake.clear()
                self.heartbeat.expect_cycle()
                delay = self._guarded(self.check_once)
                if delay is None:
                    delay = backoff_delay(self.settings.poll_interval, self._transient_failures)
                if self.previews is not None and not self.stop.is_set():
                    # After the live branch, never before it: one preview per round, so a push to the live
                    # branch waits for one preview build at most.
                    self.heartbeat.expect_cycle()
                    if self._previews_step():
                        delay = 0
                if delay > 0:
                    self.heartbeat.expect(delay)
                    self.wake.wait(delay)
        finally:
            if observer is not None:
                observer.stop()

    def _previews_step(self) -> bool:
        """One step of the previews; whatever goes wrong is theirs (logged), never the live site's."""
        assert self.previews is not None
        try:
            return self.previews.check()
        except Exception:  # noqa: BLE001 - a preview never ends the watcher nor shows on the site
            log.exception("previews: a step failed (the site and its previews stay as they are)")
            return False

    def _guarded(self, step: Callable[[], T]) -> T | None:
        """Run one step; its errors are recorded, never fatal (a full disk must not end the watcher)."""
        try:
            return step()
        except PipelineError as exc:
            self._record_error(str(exc), transient=True)
        except OSError as exc:
            log.error("%s (the live release stays)", exc)
            with contextlib.suppress(OSError):
                self._record_error(f"{exc} (the live release stays)", transient=True)
        except Exception as exc:  # noqa: BLE001 - no input may end the watcher: it is recorded, and retried
            log.exception("the pipeline failed (the live release stays)")
            with contextlib.suppress(Exception):
                self.deployer.forget_build()
                self._record_error(f"the pipeline failed: {type(exc).__name__}: {exc} (the live release stays)",
                                   transient=True)
        return None


def live_release(settings: Settings) -> releases.Release | None:
    live = releases.current_release_dir(settings.layout.current)
    return releases.read_meta(live) if live else None
