"""The one description of DATA_DIR, shared by the watcher, `serve.py` and `run.sh` (which passes only
DATA_DIR):

    DATA_DIR/
      current -> releases/<id>     the live release (swapped with rename(2))
      releases/<id>/, <id>.json    kept releases and their metadata
      releases/.spare.tmp/         a copy of the live release for the next staging (releases.Spare)
      source.git/                  the site's repository, outside the work tree (a build cannot touch it)
      build/                       shared with the builder; a volume of its own under the agent, so a
                                   build that fills it never fills the releases' volume
        export/                    the commit's files, checked out by the publisher (no build writes here)
        build-state.json           what the work tree was last built from, and when (the publisher's)
        builder/                   the builder's own (under the agent its own volume, of the builder's
                                   user, mounted at /builder: BUILDER_SOCKET's folder): all a build may write
          socket                   where the builder's worker waits for the publisher (BUILDER_SOCKET)
          source/                  the work tree: the commit's files copied from export/, Nikola's state
          .source.folders          the inode of each folder of Nikola's state before the last build ran (the worker's)
          tmp/                     the build's HOME and TMPDIR, emptied before every build
          last-build.log           the last build's whole log (the publisher reads its end only)
          preview/source/          the previews' work tree (pipeline.publish.previews: every preview is built in it)
          preview-build.log        the last preview build's whole log
        preview-build-state.json   what the previews' work tree was last built from
        preview-export/            a preview's commit, checked out from preview-source.git (beside the live one)
      previews/<label>/            a branch's preview (pipeline.publish.previews): current -> releases/<id>
      preview-source.git/          the previews' repository (the live one's never holds a preview's branch)
      status.json                  deploy status and history
      logs/last-build.log          the end of the last build's log
      wake                         touched by a valid webhook: the watcher checks the remote at once
      rebuild                      written by POST /_site/rebuild: a clean build of the head, then published
      .watcher.lock                one watcher per DATA_DIR
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT = Path("/workdir")


@dataclass(frozen=True)
class Layout:
    root: Path
    builder_root: Path | None = None  # the builder's volume, when it is not build/builder (BUILDER_SOCKET's folder)

    @classmethod
    def from_env(cls) -> Layout:
        return cls(Path(os.environ.get("DATA_DIR") or DEFAULT))

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def build_root(self) -> Path:
        return self.root / "build"

    @property
    def export(self) -> Path:
        return self.build_root / "export"

    @property
    def builder(self) -> Path:
        return self.builder_root or self.build_root / "builder"

    @property
    def builder_socket(self) -> Path:
        return self.builder / "socket"

    @property
    def source(self) -> Path:
        return self.builder / "source"

    @property
    def build_log(self) -> Path:
        return self.builder / "last-build.log"

    @property
    def git_dir(self) -> Path:
        return self.root / "source.git"

    @property
    def build_tmp(self) -> Path:
        return self.builder / "tmp"

    @property
    def build_state(self) -> Path:
        return self.build_root / "build-state.json"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    @property
    def preview_git_dir(self) -> Path:
        """The previews' own repository and checkout: a branch's tree never touches the live site's."""
        return self.root / "preview-source.git"

    @property
    def preview_export(self) -> Path:
        return self.build_root / "preview-export"

    @property
    def preview_source(self) -> Path:
        return self.builder / "preview" / "source"

    @property
    def preview_build_log(self) -> Path:
        return self.builder / "preview-build.log"

    @property
    def preview_build_state(self) -> Path:
        return self.build_root / "preview-build-state.json"

    def repair(self) -> list[str]:
        """Give the publisher back what it owns, whatever changed it (a build cannot, but a crash or an
        administrator might have): the data directory and its parts readable, writable and searchable by their
        owner, the releases readable by all. Returns what was repaired."""
        repaired = []
        wanted = [(self.root, 0o755), (self.releases, 0o755), (self.build_root, 0o755), (self.export, 0o755),
                  (self.logs, 0o755), (self.git_dir, 0o755), (self.previews, 0o755), (self.status, 0o644),
                  (self.watcher_lock, 0o644),
                  (self.build_state, 0o644)]

        def fix(path: Path, mode: int) -> None:
            try:
                st = os.lstat(path)
            except OSError:
                return
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & mode == mode:
                return
            with contextlib.suppress(OSError):
                os.chmod(path, stat.S_IMODE(st.st_mode) | mode, follow_symlinks=False)
                repaired.append(f"{path} had mode {stat.S_IMODE(st.st_mode):o}")

        for path, mode in wanted:
            fix(path, mode)
        with contextlib.suppress(OSError):
            for path in self.releases.iterdir():  # after releases/ itself is searchable again
                fix(path, 0o755 if path.is_dir() else 0o644)
        return repaired

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def wake_file(self) -> Path:
        return self.root / "wake"

    @property
    def rebuild_file(self) -> Path:
        """Written by `POST /_site/rebuild`: the watcher builds the head again, clean, and publishes it."""
        return self.root / "rebuild"

    @property
    def watcher_lock(self) -> Path:
        return self.root / ".watcher.lock"

    def wake(self) -> None:
        wake(self.wake_file)


def wake(wake_file: Path) -> None:
    """Ask the watcher to check the remote at once: it watches this file (see pipeline.publish.triggers)."""
    wake_file.write_text(f"{time.time():.3f}\n")
