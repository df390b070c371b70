"""Persistent filesystems (`<persistent>` in the manifest): a fixed-size ext4 image per application and
mount point, kept in the state dir and loop-mounted on the host, then bind-mounted into the instance.

The image's size is a hard limit: a push cannot fill the host's disk, only its own volume. Volumes
outlive instances (a new or restarted instance finds the last good release at once) and agent
restarts; `--teardown` unmounts them, `--teardown --purge` deletes them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from container import proc
from container.errors import VolumeError
from container.manifest import PersistentFilesystem

log = logging.getLogger(__name__)

DIRECTORY = "volumes"
MOUNT_OPTIONS = "loop,nodev,nosuid,noexec"




def paths(state_dir: Path, application: str, fs: PersistentFilesystem) -> tuple[Path, Path]:
    """(image file, host mount directory) of one application's volume."""
    name = application + fs.mountpoint.replace("/", "-")
    base = state_dir / DIRECTORY
    return base / f"{name}.ext4", base / name


def mounted(directory: Path) -> bool:
    target = str(directory)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(line.split()[4] == target for line in handle)


def ensure(state_dir: Path, application: str, fs: PersistentFilesystem, uid: int | None) -> Path:
    """Create (first time) and mount the volume; return the host directory to bind-mount. Idempotent."""
    image, directory = paths(state_dir, application, fs)
    directory.mkdir(parents=True, exist_ok=True)
    if mounted(directory):
        return directory
    if not image.exists():
        log.info("creating the %d MB volume %s for %s", fs.size_mb, fs.mountpoint, application)
        tmp = image.with_name(image.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.truncate(fs.size_mb * 1024 * 1024)
        owner = ["-E", f"root_owner={uid}:{uid}"] if uid is not None else []
        # One inode per 4 KiB (mkfs's default is one per 16 KiB): a static site is many small files and
        # directories, and each kept release has a directory tree of its own (its unchanged files are
        # hard links); with the default, a 5,000-post blog ran out of inodes with most of its space free.
        proc.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "4096", "-L", f"pequod-{application}"[:16], *owner,
                  str(tmp)],
                 timeout=120, error=VolumeError, package="e2fsprogs")
        os.replace(tmp, image)
    elif image.stat().st_size != fs.size_mb * 1024 * 1024:
        log.warning("volume %s of %s is %d MB, the manifest asks for %d MB: kept as it is (remove it with "
                    "--teardown --purge to recreate it)", fs.mountpoint, application,
                    image.stat().st_size // (1024 * 1024), fs.size_mb)
    proc.run(["mount", "-o", MOUNT_OPTIONS, str(image), str(directory)], error=VolumeError, package="mount")
    if uid is None:
        directory.chmod(0o1777)
    return directory


def release(state_dir: Path, application: str, fs: PersistentFilesystem, purge: bool = False) -> list[str]:
    """Unmount one application's volume (a removed site's); with `purge`, delete its data too."""
    image, directory = paths(state_dir, application, fs)
    done = []
    if directory.is_dir() and mounted(directory):
        proc.run(["umount", str(directory)], error=VolumeError, package="mount")
        done.append(f"volume mount {directory}")
    if purge:
        for path in (image, directory):
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                done.append(f"volume {path}")
    return done


def check_disk(state_dir: Path, volumes: list[tuple[str, PersistentFilesystem]]) -> None:
    """Refuse volumes the disk cannot hold at their full size (no overbooking of disk either): the images are
    sparse, so what counts is what each may still grow by, against the free space of the state dir's disk."""
    growth = 0
    for application, fs in volumes:
        image, _ = paths(state_dir, application, fs)
        try:
            allocated = image.stat().st_blocks * 512
        except OSError:
            allocated = 0
        growth += max(0, fs.size_mb * 1024 * 1024 - allocated)
    base = state_dir if state_dir.exists() else state_dir.parent
    found = os.statvfs(base)
    free = found.f_bavail * found.f_frsize
    if growth > free:
        raise VolumeError(f"the volumes need {growth // 2**20} MB more than the disk of {state_dir} has free "
                          f"({free // 2**20} MB): free space, or run fewer sites or applications")


def unmount_all(state_dir: Path, purge: bool = False) -> list[str]:
    """Unmount every volume (the data stays in its image unless `purge`); returns what was done."""
    base = state_dir / DIRECTORY
    done: list[str] = []
    if not base.is_dir():
        return done
    for directory in sorted(p for p in base.iterdir() if p.is_dir()):
        if mounted(directory):
            proc.run(["umount", str(directory)], error=VolumeError, package="mount")
            done.append(f"volume mount {directory}")
    if purge:
        for image in sorted(base.glob("*.ext4")):
            done.append(f"volume {image}")
        shutil.rmtree(base)
    return done
