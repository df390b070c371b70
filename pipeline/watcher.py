"""The watch → build → publish loop."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from pipeline import heartbeat, links, metrics, notify, releases, tree, triggers
from pipeline.config import Settings, redact_url
from pipeline.errors import BuildError, GitError, PipelineError
from pipeline.git_source import GitSource, local_path
from pipeline.nikola_build import BuildLimits, NikolaBuilder, clean_build_reason
from pipeline.status import StatusStore, utc_iso, utc_now

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF = 300.0
FETCH_ATTEMPTS = 3  # a head that cannot be fetched (or checked out) this often in a row is given up on
MAX_TREE_DEPTH = 32  # directories a pushed file may be nested in (Nikola's own walks recurse)
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
    def __init__(self, settings: Settings):
        self.settings = settings
        layout = settings.layout
        self.source = GitSource(settings.site_repo, settings.site_branch, layout.source, settings.git_timeout,
                                layout.git_dir)
        limits = BuildLimits(memory_mb=settings.build_memory_mb, file_mb=settings.max_file_mb)
        self.builder = NikolaBuilder(layout.source, settings.build_timeout, limits, layout.build_tmp,
                                     layout.build_state)
        self.store = StatusStore(layout.status)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._transient_failures = 0
        self._fetch_failures: tuple[str, int] = ("", 0)  # (head, attempts in a row)
        self.notifier = (notify.Notifier(settings.notify_url, settings.notify_secret, self._notified)
                         if settings.notify_url else None)
        self.heartbeat = heartbeat.for_watcher(settings)  # serve.py's health check reads it
        self.links = links.LinkReport(settings.links_broken_fail)  # the link report of each release

    def _notified(self, ok: bool, message: str) -> None:
        """A notification's final outcome, for the status and the deploy page."""
        with contextlib.suppress(OSError), self.store.edit() as status:
            notes = status.setdefault("notifications", {"delivered": 0, "failed": 0, "last_error": None})
            if ok:
                notes["delivered"] = int(notes.get("delivered", 0)) + 1
            else:
                notes["failed"] = int(notes.get("failed", 0)) + 1
                notes["last_error"] = {"at": utc_now(), "message": message}

    def _record_error(self, message: str, *, transient: bool) -> None:
        log.error("%s", message)
        if transient:
            self._transient_failures += 1
        with self.store.edit() as status:
            if transient:
                metrics.count_remote_failure(status)
            status["last_error"] = {"at": utc_now(), "message": message}
            status["consecutive_failures"] += 1

    def check_once(self) -> float:
        """One cycle: check the remote, build and publish when it moved. Returns seconds to wait."""
        settings = self.settings
        try:
            head = self.source.remote_head()
        except GitError as exc:
            self._record_error(str(exc), transient=True)
            return backoff_delay(settings.poll_interval, self._transient_failures)
        with self.store.edit() as status:
            status["last_check"] = utc_now()
            status["remote"] = redact_url(settings.site_repo)
            status["branch"] = settings.site_branch
            last_attempted = status["last_attempted_commit"]
            due = next_due(status.get("scheduled"))
        if head is None:
            self._record_error(
                f"branch {settings.site_branch!r} does not exist on {redact_url(settings.site_repo)}; "
                "still serving the last good release", transient=True,
            )
            return backoff_delay(settings.poll_interval, self._transient_failures)
        self._transient_failures = 0
        if head == last_attempted:
            if due is None or due > time.time():
                return settings.poll_interval if due is None else min(settings.poll_interval,
                                                                      max(due - time.time(), 0.05))
            log.info("a scheduled post is due: building %s again", head[:12])
        try:
            self.deploy()
        except GitError as exc:
            # Fetching or checking out the head failed (network, disk full, a size limit): retried a few
            # times, then recorded as that commit's failure and not tried again until the head moves.
            previous, attempts = self._fetch_failures
            attempts = attempts + 1 if previous == head else 1
            self._fetch_failures = (head, attempts)
            self._forget_build()  # not the build's fault: no interrupted build to recover
            if attempts >= FETCH_ATTEMPTS:
                self._fetch_failures = ("", 0)
                self._give_up(head, f"{exc} (tried {attempts} times; tried again when the branch moves)")
                return settings.poll_interval
            self._record_error(str(exc), transient=True)
            return backoff_delay(settings.poll_interval, self._transient_failures)
        self._fetch_failures = ("", 0)
        return 0 if self.wake.is_set() else settings.poll_interval

    def _forget_build(self) -> None:
        with self.store.edit() as status:
            status.pop("building", None)

    def _give_up(self, commit: str, message: str) -> None:
        log.error("giving up on %s, the live release stays: %s", commit[:12], message)
        now = utc_now()
        subject, author = self.source.commit_info(commit)
        self._finish({"commit": commit, "subject": subject, "author": author, "started_at": now, "mode": None,
                      "release": None}, "failed", message, "", time.monotonic())

    def recover_interrupted(self) -> None:
        """A build the instance did not survive (out of memory, killed) is tried again once; after that its
        commit is recorded as failed, so a bad head never becomes a crash loop."""
        building = self.store.read().get("building")
        if not building:
            return
        attempts = int(building.get("attempts", 1))
        if attempts >= INTERRUPTED_ATTEMPTS:
            self._give_up(building["commit"], f"the instance stopped during {attempts} builds of this commit (out "
                          "of memory, or killed); it is built again when the branch moves")
        else:
            log.warning("the build of %s was interrupted; building it once more", building["commit"][:12])

    def deploy(self) -> None:
        """Fetch the branch, build its newest commit and publish it if the build succeeds."""
        settings = self.settings
        commit = self.source.fetch()
        facts = self.source.tree_facts(commit)
        if facts.size > settings.max_file_mb << 20:
            self.source.drop_fetched()
            self._give_up(commit, f"{tree.shown(facts.largest)} is {facts.size / (1 << 20):.1f} MB, larger than "
                          f"MAX_FILE_MB={settings.max_file_mb}; remove it from the branch (or raise MAX_FILE_MB)")
            return
        if facts.depth > MAX_TREE_DEPTH:
            self.source.drop_fetched()
            self._give_up(commit, f"{tree.shown(facts.deepest)} is nested {facts.depth} directories deep, more than "
                          f"the {MAX_TREE_DEPTH} a site may use; flatten it")
            return
        previous = self.builder.previous_state()
        changes = self.source.changes(previous.commit, commit) if previous else None
        with self.store.edit() as status:  # kept until the build ends: see recover_interrupted()
            earlier = status.get("building") or {}
            status["building"] = {"commit": commit, "started_at": utc_now(),
                                  "attempts": int(earlier.get("attempts", 0)) + 1 if earlier.get("commit") == commit
                                  else 1}
        self.builder.prepare()  # room for the checkout, whatever the last build left
        self.source.checkout(commit)
        reason = clean_build_reason(previous, changes)
        mode = "clean" if reason else "incremental"
        log.info("building %s (%s build%s)", commit[:12], mode, f": {reason}" if reason else "")
        settings.layout.logs.mkdir(parents=True, exist_ok=True)
        started_at, started = utc_now(), time.monotonic()
        subject, author = self.source.commit_info(commit)
        record = {"commit": commit, "subject": subject, "author": author, "started_at": started_at, "mode": mode,
                  "release": None}
        try:
            self.builder.build(commit, clean=reason is not None, log_path=settings.layout.logs / "last-build.log",
                               changes=None if changes is None else [path for _status, path in changes])
            seconds = round(time.monotonic() - started, 3)
            live = releases.current_release_dir(settings.layout.current)
            meta = releases.Release(
                release=releases.release_id(commit), commit=commit, built_at=utc_now(),
                build_seconds=seconds, mode=mode,
            )
            output = self.builder.open_output(self.builder.last_output)
            try:
                release_dir = releases.stage(output, settings.layout.releases, meta, live)
            finally:
                os.close(output)
            self.links.before_swap(release_dir)  # only with LINKS_BROKEN_FAIL: raises links.BrokenLinks
            releases.publish(settings.layout.current, release_dir)
            removed = releases.prune(settings.layout.releases, settings.layout.current, settings.keep_releases)
        except BuildError as exc:
            if self.stop.is_set():
                log.info("build of %s interrupted by shutdown; it is retried on the next start", commit[:12])
                self._forget_build()
                return
            self._failed(record, str(exc), exc.log_tail, started)
            return
        except tree.TreeError as exc:
            self._failed(record, f"the build output cannot be published: {exc}", "", started)
            return
        except OSError as exc:
            # A full volume and the like: nothing was swapped, the live release stays, nothing half-copied is
            # left (stage() removes its temporary directory).
            self._failed(record, f"publishing failed: {exc}", "", started)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a build's output does to us is that build's failure
            log.exception("publishing %s failed", commit[:12])
            self._failed(record, f"publishing failed: {type(exc).__name__}: {exc}", "", started)
            return
        finally:
            self._repair()
        record["release"] = meta.release
        record["worker"] = "warm" if self.builder.last_warm else "cold"
        record["site"] = self.builder.last_site
        self._finish(record, "success", None, "", started,
                     scheduled=[{"due": due, "at": utc_iso(due), "source": source, "title": title}
                                for due, source, title in self.builder.last_scheduled])
        log.info(
            "published %s as %s in %.2f s (%s build)%s", commit[:12], meta.release, seconds, mode,
            f", pruned {len(removed)} old release(s)" if removed else "",
        )
        self.links.after_swap(release_dir)  # after the swap: the report never delays push → live

    def _failed(self, record: dict, message: str, tail: str, started: float) -> None:
        self.builder.forget()  # whatever the build left of Nikola's state is not trusted by the next one
        self._finish(record, "failed", message, tail, started)
        log.error("build of %s failed, the live release stays: %s%s", record["commit"][:12], message,
                  f"\n{tail}" if tail else "")

    def _repair(self) -> None:
        for what in self.settings.layout.repair():
            log.warning("repaired %s", what)

    def _finish(self, record: dict, result: str, error: str | None, tail: str, started: float,
                scheduled: list[dict] | None = None) -> None:
        """Record a build's end; `scheduled`: what a successful build holds back until due."""
        record.update(
            finished_at=utc_now(), build_seconds=round(time.monotonic() - started, 3),
            result=result, error=error, log_tail=tail,
        )
        with self.store.edit() as status:
            previous = status["builds"][0] if status["builds"] else {}
            recovered = result == "success" and previous.get("result") == "failed"
            status.pop("building", None)
            metrics.count_build(status, result, record["build_seconds"], time.time())
            status["builds"].insert(0, record)
            status["last_attempted_commit"] = record["commit"]
            if result == "success":
                status["consecutive_failures"] = 0
                status["last_error"] = None
                status["scheduled"] = scheduled or []
            else:
                status["consecutive_failures"] += 1
                status["last_error"] = {"at": record["finished_at"], "message": error}
                # A post that came due and could not be built waits for the next push (no rebuild loop).
                status["scheduled"] = [item for item in status.get("scheduled") or []
                                       if isinstance(item, dict) and float(item.get("due", 0)) > time.time()]
        if self.notifier is not None:
            self.notifier.send({
                "event": notify.event_for(result, recovered), "site": redact_url(self.settings.site_repo),
                "branch": self.settings.site_branch, "commit": record["commit"], "subject": record.get("subject"),
                "author": record.get("author"), "release": record.get("release"),
                "duration_seconds": record["build_seconds"], "error": error, "log_tail": tail,
                "at": record["finished_at"],
            })

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
            self._repair()
            self._remove_legacy()
            self._loop()

    def _remove_legacy(self) -> None:
        """The work tree and build files of earlier versions, on the releases' volume: rebuilt under build/."""
        for name in self.settings.layout.LEGACY:
            path = self.settings.data_dir / name
            if path.exists() or path.is_symlink():
                log.info("removing %s (the work tree now lives in %s)", path, self.settings.layout.build_root)
                with contextlib.suppress(OSError):
                    tree.remove_tree(path)

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
                if delay > 0:
                    self.heartbeat.expect(delay)
                    self.wake.wait(delay)
        finally:
            if observer is not None:
                observer.stop()

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
                self._forget_build()
                self._record_error(f"the pipeline failed: {type(exc).__name__}: {exc} (the live release stays)",
                                   transient=True)
        return None


def live_release(settings: Settings) -> releases.Release | None:
    live = releases.current_release_dir(settings.layout.current)
    return releases.read_meta(live) if live else None
