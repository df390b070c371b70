"""The watch → build → publish loop."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict

from pipeline import releases, triggers
from pipeline.config import Settings, redact_url
from pipeline.errors import BuildError, GitError, PipelineError
from pipeline.git_source import GitSource, local_path
from pipeline.nikola_build import NikolaBuilder, clean_build_reason
from pipeline.status import StatusStore, utc_now

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


def backoff_delay(interval: float, failures: int) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling, capped."""
    if failures <= 0:
        return interval
    return min(interval * 2 ** min(failures, 16), max(MAX_BACKOFF, interval))


class Watcher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.source = GitSource(
            settings.site_repo, settings.site_branch, settings.source_dir, settings.git_timeout
        )
        self.builder = NikolaBuilder(settings.source_dir, settings.build_timeout, settings.build_memory_mb)
        self.store = StatusStore(settings.status_file)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._transient_failures = 0

    def _record_error(self, message: str, *, transient: bool) -> None:
        log.error("%s", message)
        if transient:
            self._transient_failures += 1
        with self.store.edit() as status:
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
        if head is None:
            self._record_error(
                f"branch {settings.site_branch!r} does not exist on {redact_url(settings.site_repo)}; "
                "still serving the last good release", transient=True,
            )
            return backoff_delay(settings.poll_interval, self._transient_failures)
        self._transient_failures = 0
        if head == last_attempted:
            return settings.poll_interval
        try:
            self.deploy()
        except GitError as exc:
            self._record_error(str(exc), transient=True)
            return backoff_delay(settings.poll_interval, self._transient_failures)
        return 0 if self.wake.is_set() else settings.poll_interval

    def deploy(self) -> None:
        """Fetch the branch, build its newest commit and publish it if the build succeeds."""
        settings = self.settings
        commit = self.source.fetch()
        previous = self.builder.previous_state()
        changes = self.source.changes(previous.commit, commit) if previous else None
        self.source.checkout(commit)
        reason = clean_build_reason(previous, changes)
        mode = "clean" if reason else "incremental"
        log.info("building %s (%s build%s)", commit[:12], mode, f": {reason}" if reason else "")
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        started_at, started = utc_now(), time.monotonic()
        record = {"commit": commit, "started_at": started_at, "mode": mode, "release": None}
        try:
            self.builder.build(commit, clean=reason is not None, log_path=settings.logs_dir / "last-build.log")
            seconds = round(time.monotonic() - started, 3)
            live = releases.current_release_dir(settings.current_link)
            meta = releases.Release(
                release=releases.release_id(commit), commit=commit, built_at=utc_now(),
                build_seconds=seconds, mode=mode,
            )
            release_dir = releases.stage(self.builder.output_dir, settings.releases_dir, meta, live)
            releases.publish(settings.current_link, release_dir)
            removed = releases.prune(settings.releases_dir, settings.current_link, settings.keep_releases)
        except BuildError as exc:
            if self.stop.is_set():
                log.info("build of %s interrupted by shutdown; it is retried on the next start", commit[:12])
                return
            self._finish(record, "failed", str(exc), exc.log_tail, started)
            log.error("build of %s failed, the live release stays: %s\n%s", commit[:12], exc, exc.log_tail)
            return
        except OSError as exc:
            # Disk full on the tmpfs and the like: nothing was swapped, the live release stays.
            self._finish(record, "failed", f"publishing failed: {exc}", "", started)
            log.error("publishing %s failed, the live release stays: %s", commit[:12], exc)
            return
        record["release"] = meta.release
        record["worker"] = "warm" if self.builder.last_warm else "cold"
        self._finish(record, "success", None, "", started)
        log.info(
            "published %s as %s in %.2f s (%s build)%s", commit[:12], meta.release, seconds, mode,
            f", pruned {len(removed)} old release(s)" if removed else "",
        )

    def _finish(self, record: dict, result: str, error: str | None, tail: str, started: float) -> None:
        record.update(
            finished_at=utc_now(), build_seconds=round(time.monotonic() - started, 3),
            result=result, error=error, log_tail=tail,
        )
        with self.store.edit() as status:
            status["builds"].insert(0, record)
            status["last_attempted_commit"] = record["commit"]
            if result == "success":
                status["consecutive_failures"] = 0
                status["last_error"] = None
            else:
                status["consecutive_failures"] += 1
                status["last_error"] = {"at": record["finished_at"], "message": error}

    def run_forever(self) -> None:
        log.info(
            "watching %s branch %s every %g s", redact_url(self.settings.site_repo),
            self.settings.site_branch, self.settings.poll_interval,
        )
        observer = triggers.start(self.wake, self.settings.wake_file, local_path(self.settings.site_repo))
        try:
            while not self.stop.is_set():
                self.wake.clear()
                try:
                    delay = self.check_once()
                except PipelineError as exc:
                    self._record_error(str(exc), transient=True)
                    delay = backoff_delay(self.settings.poll_interval, self._transient_failures)
                if delay > 0:
                    self.wake.wait(delay)
        finally:
            if observer is not None:
                observer.stop()


def rollback(settings: Settings, wanted: str | None) -> releases.Release:
    """Point `current` at an earlier kept release. It stays live until the next push."""
    store = StatusStore(settings.status_file)
    with store.edit() as status:
        live = releases.current_release_dir(settings.current_link)
        ids = releases.list_releases(settings.releases_dir)
        target = releases.rollback_target(ids, live.name if live else None, wanted)
        release_dir = settings.releases_dir / target
        releases.publish(settings.current_link, release_dir)
        meta = releases.read_meta(release_dir) or releases.Release(target, "", "", 0.0)
        status.setdefault("rollbacks", []).insert(0, {"at": utc_now(), "to": asdict(meta)})
        del status["rollbacks"][10:]
    return meta


def live_release(settings: Settings) -> releases.Release | None:
    live = releases.current_release_dir(settings.current_link)
    return releases.read_meta(live) if live else None
