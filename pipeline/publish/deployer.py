"""One deploy: fetch the branch, refuse what cannot be built, build, stage, swap, prune, and record the result.

The watcher (pipeline.publish.watcher) decides when; this module does it, and records every end of a build (success,
failure, a commit given up on) in status.json and, when configured, as a notification.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from pipeline import releases, tree
from pipeline.config import Settings, redact_url
from pipeline.errors import BuildError, short
from pipeline.publish import links, notify
from pipeline.publish.builds import BuildLimits, NikolaBuilder, clean_build_reason
from pipeline.publish.git_source import GitSource, TreeFacts
from pipeline.status import StatusStore, utc_iso, utc_now

log = logging.getLogger(__name__)

MAX_TREE_DEPTH = 32  # directories a pushed file may be nested in (Nikola's own walks recurse)
MAX_PATH_BYTES = 1024  # a pushed file's path: far from PATH_MAX (4096) wherever the tree is checked out


def refused(facts: TreeFacts, max_file_mb: int) -> str | None:
    """Why a fetched tree is not built (a file too large, nested too deep, a path too long), or None."""
    if facts.size > max_file_mb << 20:
        return (f"{tree.shown(facts.largest)} is {facts.size / (1 << 20):.1f} MB, larger than "
                f"MAX_FILE_MB={max_file_mb}; remove it from the branch (or raise MAX_FILE_MB)")
    if facts.depth > MAX_TREE_DEPTH:
        return (f"{tree.shown(facts.deepest)} is nested {facts.depth} directories deep, more than "
                f"the {MAX_TREE_DEPTH} a site may use; flatten it")
    if facts.length > MAX_PATH_BYTES:
        return (f"{tree.shown(facts.longest[:200])}… has a path of {facts.length} bytes, more than the "
                f"{MAX_PATH_BYTES} a site may use; shorten it")
    return None


class Deployer:
    """Deploys the branch's head; `stop` set means a failed build is a shutdown, not the commit's fault."""

    def __init__(self, settings: Settings, stop: threading.Event):
        self.settings = settings
        self.stop = stop
        layout = settings.layout
        self.source = GitSource(settings.site_repo, settings.site_branch, layout.export, settings.git_timeout,
                                layout.git_dir)
        limits = BuildLimits(memory_mb=settings.build_memory_mb, file_mb=settings.max_file_mb)
        self.builder = NikolaBuilder(layout.source, settings.build_timeout, limits, layout.build_tmp,
                                     layout.build_state, layout.export, settings.builder_socket)
        self.builder.log_copy = layout.logs / "last-build.log"
        self.store = StatusStore(layout.status)
        self.notifier = (notify.Notifier(settings.notify_url, settings.notify_secret, self._notified)
                         if settings.notify_url else None)
        self.links = links.LinkReport(settings.links_broken_fail)  # the link report of each release
        self.spare: releases.Spare | None = None  # a copy of the live release for the next staging

    def _notified(self, ok: bool, message: str) -> None:
        """A notification's final outcome, for the status and the deploy page."""
        with contextlib.suppress(OSError), self.store.edit() as status:
            status.notified(ok, message)

    def forget_build(self) -> None:
        """Drop the marker of a build in progress (see Watcher.recover_interrupted)."""
        with self.store.edit() as status:
            status.forget_build()

    def give_up(self, commit: str, message: str) -> None:
        """Record `commit` as failed without building it: it is not tried again until the branch moves."""
        log.error("giving up on %s, the live release stays: %s", commit[:12], message)
        now = utc_now()
        subject, author = self.source.commit_info(commit)
        self._finish({"commit": commit, "subject": subject, "author": author, "started_at": now, "mode": None,
                      "release": None}, "failed", message, "", time.monotonic())

    def repair(self) -> None:
        for what in self.settings.layout.repair():
            log.warning("repaired %s", what)

    def deploy(self, clean: bool = False) -> None:
        """Fetch the branch, build its newest commit and publish it if the build succeeds. A commit whose tree is
        that of a kept release is published from that release, without a build (a revert), unless `clean`: a
        clean build, whatever the state of the last."""
        settings = self.settings
        commit = self.source.fetch()
        refused = self._refused(self.source.tree_facts(commit))
        if refused is not None:
            self.source.drop_fetched()
            self.give_up(commit, refused)
            return
        tree_id = self.source.tree_id(commit)
        kept = None if clean else releases.same_tree(settings.layout.releases, tree_id)
        if kept is not None:
            self._publish_kept(commit, tree_id, kept)
            return
        previous = self.builder.previous_state()
        changes = self.source.changes(previous.commit, commit) if previous else None
        with self.store.edit() as status:  # kept until the build ends: see Watcher.recover_interrupted()
            status.start_build(commit)
        reason = "a clean build was asked for" if clean else clean_build_reason(previous, changes)
        checkout_started = time.monotonic()
        self.source.checkout(commit)  # the publisher's export; the build's work tree is made from it (work_tree)
        checkout_seconds = time.monotonic() - checkout_started
        log.info("building %s%s", commit[:12], f" (a clean build: {reason})" if reason else "")
        settings.layout.logs.mkdir(parents=True, exist_ok=True)
        started_at, started = utc_now(), time.monotonic()
        subject, author = self.source.commit_info(commit)
        record = {"commit": commit, "subject": subject, "author": author, "started_at": started_at,
                  "mode": "clean" if reason else "incremental", "release": None,
                  "phases": {"checkout": round(checkout_seconds, 3)}}
        published = self._build_and_publish(
            record, reason=reason, changes=None if changes is None else [path for _status, path in changes],
            started=started, tree_id=tree_id)
        if published is None:
            return
        meta, release_dir, removed = published
        record["release"] = meta.release
        record["worker"] = "warm" if self.builder.last_warm else "cold"
        record["site"] = self.builder.last_site
        self._finish(record, "success", None, "", started,
                     scheduled=[{"due": due, "at": utc_iso(due), "source": source, "title": title}
                                for due, source, title in self.builder.last_scheduled])
        log.info(
            "published %s as %s in %.2f s (%s build)%s", commit[:12], meta.release, meta.build_seconds, meta.mode,
            f", pruned {len(removed)} old release(s)" if removed else "",
        )
        self.links.after_swap(release_dir)  # after the swap: the report never delays push → live
        self._new_spare(release_dir)

    def _refused(self, facts: TreeFacts) -> str | None:
        return refused(facts, self.settings.max_file_mb)

    def _publish_kept(self, commit: str, tree_id: str, kept: Path) -> None:
        """Publish `commit` from the kept release `kept` of the same tree: its files as they are (hard links), a
        release of its own. Nikola's state is left as the last build left it (the next build starts from it)."""
        settings = self.settings
        started_at, started = utc_now(), time.monotonic()
        subject, author = self.source.commit_info(commit)
        record = {"commit": commit, "subject": subject, "author": author, "started_at": started_at,
                  "mode": "kept", "release": None, "from_release": kept.name}
        meta = releases.Release(release=releases.release_id(commit), commit=commit, built_at=utc_now(),
                                build_seconds=0.0, mode="kept", tree=tree_id)
        try:
            release_dir = releases.stage(kept, settings.layout.releases, meta, kept)
            self.links.before_swap(release_dir)
            releases.publish(settings.layout.current, release_dir)
            removed = releases.prune(settings.layout.releases, settings.layout.current, settings.keep_releases)
        except Exception as exc:  # noqa: BLE001 - a full volume, a broken link with LINKS_BROKEN_FAIL…
            self._finish(record, "failed", f"publishing the kept release {kept.name} failed: {exc}", "", started)
            return
        record["release"] = meta.release
        self._finish(record, "success", None, "", started, scheduled=[])
        log.info("published %s as %s from the kept release %s of the same tree (no build)%s", commit[:12],
                 meta.release, kept.name, f", pruned {len(removed)} old release(s)" if removed else "")
        self.links.after_swap(release_dir)
        self._new_spare(release_dir)

    def _new_spare(self, live: Path) -> None:
        """Start copying the release just published (its folders; its files as hard links) for the next build's
        staging to bring up to date (releases.Spare): made while nothing is built, it costs the next push
        nothing; one of a release that is no longer live when the next build ends is not used."""
        if self.spare is not None:
            self.spare.discard()
        self.spare = releases.Spare(self.settings.layout.releases, live)

    def _build_and_publish(self, record: dict, *, reason: str | None, changes: list[str] | None,
                           started: float, tree_id: str = "") -> tuple[releases.Release, Path, list] | None:
        """Build the checked-out commit, stage it as a release and swap it live: (its metadata, its directory,
        the releases pruned), or None when the build or the publish failed (recorded) or was interrupted."""
        settings = self.settings
        commit = record["commit"]
        spare, self.spare = self.spare, None  # made after the last publish: see _new_spare
        try:
            try:
                self.builder.build(commit, reason=reason, log_path=settings.layout.build_log, changes=changes)
            finally:
                record["mode"] = "clean" if self.builder.last_reason else "incremental"
            if self.builder.last_reason and self.builder.last_reason != reason:
                log.info("%s was built clean: %s", commit[:12], self.builder.last_reason)
            seconds = round(time.monotonic() - started, 3)
            live = releases.current_release_dir(settings.layout.current)
            meta = releases.Release(
                release=releases.release_id(commit), commit=commit, built_at=utc_now(),
                build_seconds=seconds, mode=record["mode"], tree=tree_id,
                holds_back=bool(self.builder.last_scheduled),
            )
            phases = record.setdefault("phases", {})
            phases.update(self.builder.last_phases)
            phases["builder"] = round(time.monotonic() - started, 3)
            staging = time.monotonic()
            output = self.builder.open_output(self.builder.last_output)
            try:
                release_dir = releases.stage(output, settings.layout.releases, meta, live, spare)
            finally:
                os.close(output)
            self.links.before_swap(release_dir)  # only with LINKS_BROKEN_FAIL: raises links.BrokenLinks
            phases["stage"] = round(time.monotonic() - staging, 3)
            swapping = time.monotonic()
            releases.publish(settings.layout.current, release_dir)
            phases["swap"] = round(time.monotonic() - swapping, 3)
            removed = releases.prune(settings.layout.releases, settings.layout.current, settings.keep_releases)
        except BuildError as exc:
            if self.stop.is_set():
                log.info("build of %s interrupted by shutdown; it is retried on the next start", commit[:12])
                self.forget_build()
                return None
            self._failed(record, str(exc), exc.log_tail, started)
            return None
        except tree.TreeError as exc:
            self._failed(record, f"the build output cannot be published: {exc}", "", started)
            return None
        except OSError as exc:
            # A full volume and the like: nothing was swapped, the live release stays, nothing half-copied is
            # left (stage() removes its temporary directory).
            self._failed(record, f"publishing failed: {exc}", "", started)
            return None
        except Exception as exc:  # noqa: BLE001 - whatever a build's output does to us is that build's failure
            log.exception("publishing %s failed", commit[:12])
            self._failed(record, f"publishing failed: {type(exc).__name__}: {exc}", "", started)
            return None
        finally:
            if spare is not None:
                spare.discard()
            self.repair()
        return meta, release_dir, removed

    def _failed(self, record: dict, message: str, tail: str, started: float) -> None:
        self.builder.forget()  # whatever the build left of Nikola's state is not trusted by the next one
        self._finish(record, "failed", message, tail, started)
        log.error("build of %s failed, the live release stays: %s%s", record["commit"][:12], message,
                  f"\n{tail}" if tail else "")

    def _finish(self, record: dict, result: str, error: str | None, tail: str, started: float,
                scheduled: list[dict] | None = None) -> None:
        """Record a build's end; `scheduled`: what a successful build holds back until due."""
        record.update(
            finished_at=utc_now(), build_seconds=round(time.monotonic() - started, 3),
            result=result, error=None if error is None else short(error), log_tail=tail,
        )
        with self.store.edit() as status:
            recovered = status.finish_build(record, error, scheduled, time.time())
        if self.notifier is not None:
            self.notifier.send({
                "event": notify.event_for(result, recovered), "site": redact_url(self.settings.site_repo),
                "branch": self.settings.site_branch, "commit": record["commit"], "subject": record.get("subject"),
                "author": record.get("author"), "release": record.get("release"),
                "duration_seconds": record["build_seconds"], "error": error, "log_tail": tail,
                "at": record["finished_at"],
            })
