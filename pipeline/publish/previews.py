"""Previews: every branch of the site's repository but SITE_BRANCH, built by the same builder (same sandbox,
same limits) into releases of their own and served by the site's own server at LABEL--PREVIEWS_HOST
(pipeline.preview_hosts; docs/previews.md).

    DATA_DIR/previews/<label>/current -> releases/<id>    a preview's live release
    DATA_DIR/previews/<label>/releases/                    its releases (KEEP kept)
    builder/preview/source/                                the previews' work tree: every preview is built
                                                           in it, incrementally from the last preview built

status.json: `previews` (label → branch, commit, address, state, last error and log tail, release) and
`preview_branches` (branch → its commit and when that commit was first seen: the least recently pushed
previews retire first). Nothing here touches the live release, its history or its failures: a preview's
failure is the preview's only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import preview_hosts, releases, tree
from pipeline.config import Settings, redact_url
from pipeline.errors import BuildError, GitError, short
from pipeline.publish.builds import NikolaBuilder, clean_build_reason
from pipeline.publish.deployer import refused
from pipeline.publish.git_source import GitSource
from pipeline.status import StatusStore, utc_now

log = logging.getLogger(__name__)

KEEP = 2  # releases kept per preview: the live one and the one before
BUILD_TIMEOUT = 300.0  # at most, for a preview (BUILD_TIMEOUT when less): the live branch waits for one
ATTEMPTS = 3  # a preview that cannot be fetched or checked out is tried this often before it counts as failed


class Previews:
    """The previews of one site; `check()` is one step of the watcher's loop (after the live branch's)."""

    def __init__(self, settings: Settings, live_builder: NikolaBuilder, store: StatusStore, notifier: Any = None,
                 stop: threading.Event | None = None):
        assert settings.previews_host is not None
        self.settings = settings
        self.stop = stop or threading.Event()  # set: a build that fails is a shutdown, tried again at the next start
        self.host = settings.previews_host
        self.site = self.host.split(".", 1)[0]
        layout = settings.layout
        self.layout = layout
        self.store = store
        self.notifier = notifier
        self.lister = self._source(settings.site_branch)
        self.builder = NikolaBuilder(layout.preview_source, min(settings.build_timeout, BUILD_TIMEOUT),
                                     live_builder.limits, layout.build_tmp, layout.preview_build_state,
                                     layout.preview_export)
        self.builder.worker = live_builder.worker  # one connection to the builder: a second would end its worker

    def _source(self, branch: str) -> GitSource:
        """A branch in the previews' own repository and checkout: nothing of a branch ever reaches the live
        site's (a tree that git cannot check out or clean again stops previews, never the site)."""
        return GitSource(self.settings.site_repo, branch, self.layout.preview_export, self.settings.git_timeout,
                         self.layout.preview_git_dir)

    def check(self) -> bool:
        """Bring the previews in line with the branches: remove the previews of deleted or retired branches,
        then build one moved branch. Returns whether more is left to build (the loop comes back at once, after
        looking at the live branch first)."""
        try:
            branches = self.lister.remote_branches()
        except GitError as exc:
            log.warning("previews: %s", exc)
            return False
        status = self.store.read()
        known, wanted = preview_hosts.choose(branches, status.preview_branches or {},
                                             self.settings.site_branch, self.settings.previews_max, time.time())
        labels = preview_hosts.labels(wanted, self.site)
        previews = status.previews or {}
        gone = {label: item.get("branch") if isinstance(item, dict) else None for label, item in previews.items()
                if not isinstance(item, dict) or labels.get(item.get("branch")) != label}
        if gone or known != status.preview_branches:
            with self.store.edit() as status:
                status.set_previews(known, gone)
        for label in gone:  # also when another branch takes the label: never the previous branch's release
            remove(self.layout.previews / label)
        remove_previews(self.layout.previews, set(labels.values()), "its branch was deleted or retired")
        for branch in gone.values():
            if isinstance(branch, str) and branch not in known:
                self._source(branch).forget_branch()  # deleted: its objects may go
        pending = sorted((branch for branch in wanted
                          if not self._done(previews.get(labels[branch]), known[branch]["commit"])),
                         key=lambda branch: (known[branch]["pushed"], branch))  # the longest waiting first
        if not pending:
            return False
        self.build(pending[0], labels[pending[0]], known[pending[0]]["commit"], previews.get(labels[pending[0]]))
        return len(pending) > 1

    @staticmethod
    def _done(item: Any, commit: str) -> bool:
        """Whether a preview is built for `commit`, or failed on it (tried again when the branch moves)."""
        return isinstance(item, dict) and item.get("commit") == commit and item.get("state") in ("live", "failed")

    def build(self, branch: str, label: str, commit: str, before: Any = None) -> None:
        """Fetch, build and publish `branch` as the preview `label`; its end recorded in status.json. `before`:
        the preview's record until now (its attempts at this commit)."""
        started = time.monotonic()
        source = self._source(branch)
        scheme = "https" if self.settings.previews_https else "http"
        attempts = int(before.get("attempts", 0)) if isinstance(before, dict) and before.get("commit") == commit \
            else 0
        record: dict[str, Any] = {"branch": branch, "commit": commit, "label": label,
                                  "address": preview_hosts.address(label, self.host, scheme), "state": "building",
                                  "started_at": utc_now(), "error": None, "log_tail": "", "attempts": attempts + 1}
        self._record(label, record)
        log.info("previews: building %s (%s) for %s", branch, commit[:12], record["address"])
        try:
            fetched = source.fetch()
            record["commit"] = fetched
            record["subject"], record["author"] = source.commit_info(fetched)
            reason = refused(source.tree_facts(fetched), self.settings.max_file_mb)
            if reason is not None:
                raise BuildError(reason, "")
            previous = self.builder.previous_state()
            changes = source.changes(previous.commit, fetched) if previous else None
            reason = clean_build_reason(previous, changes)
            source.checkout(fetched)
            self.builder.build(fetched, reason=reason, log_path=self.layout.preview_build_log,
                               changes=None if changes is None else [path for _status, path in changes])
            folder = self.layout.previews / label
            meta = releases.Release(release=releases.release_id(fetched), commit=fetched, built_at=utc_now(),
                                    build_seconds=round(time.monotonic() - started, 3),
                                    mode="clean" if self.builder.last_reason else "incremental",
                                    tree=source.tree_id(fetched))
            base = (releases.current_release_dir(folder / "current")
                    or releases.current_release_dir(self.layout.current))  # unchanged files are hard links
            output = self.builder.open_output(self.builder.last_output)
            try:
                release_dir = releases.stage(output, folder / "releases", meta, base)
            finally:
                os.close(output)
            releases.publish(folder / "current", release_dir)
            releases.prune(folder / "releases", folder / "current", KEEP)
            record.update(state="live", release=meta.release, mode=meta.mode)
        except BuildError as exc:
            self.builder.forget()
            if self.stop.is_set():
                log.info("previews: the build of %s was interrupted by shutdown; it is built at the next start", branch)
                return
            record.update(state="failed", error=short(str(exc)), log_tail=exc.log_tail)
        except GitError as exc:  # the network, the remote: tried again a few times, as for the site
            record.update(state="failed" if record["attempts"] >= ATTEMPTS else "waiting",
                          error=short(f"the preview could not be fetched: {exc}"))
        except (tree.TreeError, OSError) as exc:
            self.builder.forget()
            record.update(state="failed", error=short(f"the preview could not be built: {exc}"))
        except Exception as exc:  # noqa: BLE001 - whatever a branch does is that preview's failure only
            log.exception("previews: %s failed", branch)
            self.builder.forget()
            record.update(state="failed", error=short(f"the preview failed: {type(exc).__name__}: {exc}"))
        finally:
            self.layout.repair()
        record.update(finished_at=utc_now(), build_seconds=round(time.monotonic() - started, 3))
        self._record(label, record)
        if record["state"] == "live":
            log.info("previews: %s is live at %s (%.2f s)", branch, record["address"], record["build_seconds"])
        else:
            log.error("previews: %s failed (the site and the other previews stay): %s", branch, record["error"])
        if self.notifier is not None and record["state"] != "waiting":
            self.notifier.send({
                "event": "preview.succeeded" if record["state"] == "live" else "preview.failed",
                "site": redact_url(self.settings.site_repo), "branch": branch, "commit": record["commit"],
                "subject": record.get("subject"), "author": record.get("author"), "preview": record["address"],
                "duration_seconds": record["build_seconds"], "error": record["error"],
                "log_tail": record["log_tail"], "at": record["finished_at"],
            })

    def _record(self, label: str, record: dict[str, Any]) -> None:
        with self.store.edit() as status:
            status.set_preview(label, record)


def remove(folder: Path) -> None:
    """One preview: its `current` link first (the server answers 404 from then on), then its releases."""
    with contextlib.suppress(FileNotFoundError):
        (folder / "current").unlink()
    with contextlib.suppress(OSError):
        tree.remove_tree(folder)


def remove_previews(folder: Path, kept: set[str], why: str) -> None:
    """Every preview in `folder` but the `kept` labels' (see remove), each logged with `why`."""
    for name in [path.name for path in folder.iterdir()] if folder.is_dir() else []:
        if name not in kept:
            log.info("previews: removing %s (%s)", name, why)
            remove(folder / name)


def remove_all(settings: Settings, store: StatusStore) -> None:
    """Without PREVIEWS_HOST: no preview of an earlier configuration stays served or listed."""
    remove_previews(settings.layout.previews, set(), "previews are off")
    status = store.read()
    if status.previews is not None or status.preview_branches is not None:
        with store.edit() as status:
            status.set_previews(None)
