"""Release directories, the atomic `current` symlink, pruning and rollback.

Layout under DATA_DIR:
    releases/<id>/       one built site, never modified after it is published
    releases/<id>.json   its metadata (commit, built_at, build_seconds, mode)
    current -> releases/<id>   swapped with rename(2), so readers see one release or the other
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.layout import Layout
from pipeline.status import StatusStore, utc_now


@dataclass(frozen=True)
class Release:
    release: str
    commit: str
    built_at: str
    build_seconds: float
    mode: str = "clean"


def release_id(commit: str, now: float | None = None) -> str:
    """`<UTC time to the millisecond>-<commit>`: ids sort by time, also for two publishes in one second."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}Z-{commit[:12]}"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


COMPRESSIBLE = (".html", ".css", ".js", ".xml", ".json", ".svg", ".txt", ".md", ".rss", ".atom", ".map")
COMPRESS_MIN_BYTES = 512


def precompress(path: Path) -> bool:
    """Write `path`.gz beside a text file when that saves at least 10 %; deterministic (no name, no time
    in the header) and given the file's mtime, so an unchanged file's .gz is shared like the file."""
    if not path.name.endswith(COMPRESSIBLE):
        return False
    st = path.stat()
    gz = path.with_name(path.name + ".gz")
    if st.st_size < COMPRESS_MIN_BYTES or gz.exists():
        return False
    data = path.read_bytes()
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    if len(packed) > 0.9 * len(data):
        return False
    gz.write_bytes(packed)
    os.utime(gz, ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


def stage(output_dir: Path, releases_dir: Path, meta: Release, previous: Path | None) -> Path:
    """Copy a build's output into a new release directory and return it.

    Files identical (size and mtime, which copy2 preserves) to the previous release are
    hard-linked instead of copied (with their precompressed .gz): releases are never modified, so
    sharing is safe, and keeping five releases then costs little more than one on a memory-backed
    /workdir. Text files get a gzip copy beside them (`name.gz`) that serve.py sends to clients
    accepting gzip.
    """
    releases_dir.mkdir(parents=True, exist_ok=True)
    final = releases_dir / meta.release
    tmp = releases_dir / f".{meta.release}.tmp"
    meta_file = releases_dir / f"{meta.release}.json"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _copy_tree(output_dir, tmp, previous)
        meta_file.write_text(json.dumps(asdict(meta), indent=2) + "\n")
        os.replace(tmp, final)
    except BaseException:
        # A full volume, say: nothing half-copied is left behind.
        shutil.rmtree(tmp, ignore_errors=True)
        meta_file.unlink(missing_ok=True)
        raise
    return final


def _copy_tree(output_dir: Path, tmp: Path, previous: Path | None) -> None:
    _copy_dir(str(output_dir), str(tmp), None if previous is None else str(previous))


def _copy_dir(src_dir: str, dst_dir: str, old_dir: str | None) -> None:
    """One directory of _copy_tree, then its subdirectories (one stat per file, from the directory scan)."""
    os.makedirs(dst_dir, exist_ok=True)
    with os.scandir(src_dir) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    names = {entry.name for entry in entries}
    for entry in entries:
        name, dst = entry.name, os.path.join(dst_dir, entry.name)
        if entry.is_symlink():  # checked by the build: it points inside the output
            os.symlink(os.readlink(entry.path), dst)
            continue
        if entry.is_dir():
            _copy_dir(entry.path, dst, None if old_dir is None else os.path.join(old_dir, name))
            continue
        if old_dir is not None:
            old = os.path.join(old_dir, name)
            try:
                if _same_file(entry.stat(follow_symlinks=False), os.stat(old, follow_symlinks=False)):
                    os.link(old, dst)
                    if name + ".gz" not in names:  # the output's own .gz wins over the one made for the old file
                        with contextlib.suppress(OSError):
                            os.link(old + ".gz", dst + ".gz")
                    continue
            except OSError:
                pass
        shutil.copy2(entry.path, dst)
        precompress(Path(dst))


def current_release_dir(current_link: Path) -> Path | None:
    """The live release directory, or None when nothing has been published yet."""
    try:
        target = current_link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return target if target.is_dir() else None


def read_meta(release_dir: Path) -> Release | None:
    try:
        data = json.loads((release_dir.parent / f"{release_dir.name}.json").read_text())
        return Release(**data)
    except (OSError, ValueError, TypeError):
        return None


def publish(current_link: Path, release_dir: Path) -> None:
    """Point `current` at `release_dir` in one atomic rename."""
    tmp_link = current_link.with_name(f".{current_link.name}.{os.getpid()}.tmp")
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(os.path.relpath(release_dir, current_link.parent), tmp_link)
    os.replace(tmp_link, current_link)


def list_releases(releases_dir: Path) -> list[str]:
    """Release ids, oldest first (ids start with a UTC timestamp)."""
    if not releases_dir.is_dir():
        return []
    return sorted(p.name for p in releases_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def prune(releases_dir: Path, current_link: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` releases; never the live one. Returns what was removed."""
    live = current_release_dir(current_link)
    ids = list_releases(releases_dir)
    removed = []
    for name in ids[:-keep] if keep > 0 else ids:
        if live is not None and live.name == name:
            continue
        shutil.rmtree(releases_dir / name, ignore_errors=True)
        (releases_dir / f"{name}.json").unlink(missing_ok=True)
        removed.append(name)
    for leftover in releases_dir.glob(".*.tmp"):  # an interrupted stage()
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def rollback_target(ids: list[str], live: str | None, wanted: str | None) -> str:
    """Which release a rollback goes to: `wanted`, or the one before the live one."""
    if wanted is not None:
        if wanted not in ids:
            raise ValueError(f"no release {wanted!r}; kept releases: {', '.join(ids) or 'none'}")
        return wanted
    if live not in ids:
        raise ValueError("no live release to roll back from")
    index = ids.index(live)
    if index == 0:
        raise ValueError(f"{live} is the oldest kept release; nothing to roll back to")
    return ids[index - 1]


def rollback(layout: Layout, wanted: str | None) -> Release:
    """Point `current` at an earlier kept release. It stays live until the next push. Raises ValueError
    (naming the kept releases) for an unknown one."""
    store = StatusStore(layout.status)
    with store.edit() as status:
        live = current_release_dir(layout.current)
        ids = list_releases(layout.releases)
        target = rollback_target(ids, live.name if live else None, wanted)
        release_dir = layout.releases / target
        publish(layout.current, release_dir)
        meta = read_meta(release_dir) or Release(target, "", "", 0.0)
        status.setdefault("rollbacks", []).insert(0, {"at": utc_now(), "to": asdict(meta)})
        del status["rollbacks"][10:]
    return meta
