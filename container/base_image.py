"""A registry-free stand-in for the Dockerfile's base image, built from Debian packages.

debootstrap --variant=minbase with python3, python3-venv, ca-certificates and git; the host's
extra CA certificates (an intercepting HTTPS proxy's, say) are installed into it and pip is told
to use the system bundle; then the tree is imported with `docker import`. Cached by tag.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from container import proc
from container.errors import ImageBuildError

BASE_IMAGE = "pequod/base:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "git")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"


def host_debian_mirror() -> str:
    """The Debian mirror this host's apt uses (so the build works where only that one is reachable)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    try:
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
    except OSError:
        pass
    try:
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[2] if parts[1].startswith("[") else parts[1]
    except OSError:
        pass
    return DEFAULT_MIRROR


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_base_image(
    client: docker.DockerClient, tag: str = BASE_IMAGE, *, mirror: str | None = None,
    progress: Callable[[str], None] = print, rebuild: bool = False,
) -> str:
    if not rebuild and image_exists(client, tag):
        progress(f"base image {tag}: present (cached)")
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed: apt-get install debootstrap debian-archive-keyring")
    mirror = mirror or host_debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pequod-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"base image {tag}: debootstrap {SUITE} from {mirror} (about 1.5 min)")
        phase = ""

        def on_line(line: str) -> None:
            # debootstrap prints a line per package and step; show one line per phase.
            nonlocal phase
            current = " ".join(line.split()[:2])
            if current != phase:
                phase = current
                progress(f"  {line}")

        try:
            proc.stream(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
                timeout=1200, on_line=on_line, error=ImageBuildError, package="debootstrap",
            )
            certs = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
            target = rootfs / HOST_CA_DIR.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            for cert in certs:
                shutil.copy2(cert, target / cert.name)
            if certs:
                progress(f"  adding {len(certs)} host CA certificate(s)")
            proc.run(["chroot", str(rootfs), "update-ca-certificates"], timeout=120, error=ImageBuildError)
        except ImageBuildError as exc:
            raise ImageBuildError(f"building the base image failed: {exc}") from None
        (rootfs / "etc" / "pip.conf").write_text(PIP_CONF)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        progress(f"base image {tag}: importing into Docker")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        repository, _, version = tag.rpartition(":")
        try:
            client.api.import_image_from_file(
                str(archive), repository=repository, tag=version,
                changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'],
            )
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"docker import of the base image failed: {exc.explanation or exc}") from None
    progress(f"base image {tag}: built in {time.monotonic() - started:.0f} s")
    return tag
