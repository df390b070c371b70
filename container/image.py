"""Application images: building one from this repository, reading /pequod.xml out of one."""

from __future__ import annotations

import datetime
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from container import runtime
from container.errors import ImageBuildError, ManifestError
from container.manifest import MAX_BYTES, Manifest, parse_manifest
from container.records import Application

MANIFEST_PATH = "/pequod.xml"


def build_app_image(
    client: docker.DockerClient, context: Path, tag: str, base_image: str,
    progress: Callable[[str], None] = print,
) -> None:
    """`docker build --build-arg BASE_IMAGE=<base> -t <tag> <context>`, through the SDK, with progress."""
    started = time.monotonic()
    progress(f"image {tag}: building from {context} on {base_image}")
    try:
        for chunk in client.api.build(
            path=str(context), tag=tag, buildargs={"BASE_IMAGE": base_image}, rm=True, forcerm=True,
            decode=True, pull=False,
        ):
            if "error" in chunk:
                raise ImageBuildError(f"building {tag} failed: {chunk['error'].strip()}")
            line = chunk.get("stream", "").rstrip()
            if line.startswith(("Step ", "Successfully built", "Successfully tagged")):
                progress(f"  {line}")
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"building {tag} failed: {exc.explanation or exc}") from None
    progress(f"image {tag}: built in {time.monotonic() - started:.0f} s")


def load_application(client: docker.DockerClient, image: str) -> Application:
    """The application an image holds: name and version from its tag, the manifest from /pequod.xml."""
    name, version = runtime.app_from_image(image)
    return Application(image, name, version, manifest_from_image(client, image))


READER_LABEL = "org.pequod.manifest-reader"


def manifest_from_image(client: docker.DockerClient, image: str) -> Manifest:
    """Read and parse /pequod.xml from an image without running it."""
    source = f"{image}:{MANIFEST_PATH}"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ManifestError(f"{image}: no such image (build it first, or check the name)") from None
    # Never started; removed below. One left by a reader that was killed meanwhile is removed the next time
    # (once it is a minute old: another reader may be using a fresh one).
    for stale in client.containers.list(all=True, filters={"label": READER_LABEL, "status": "created"}):
        created = datetime.datetime.fromisoformat(stale.attrs["Created"][:26].rstrip("Z") + "+00:00")
        if (datetime.datetime.now(datetime.UTC) - created).total_seconds() > 60:
            stale.remove(force=True)
    container = client.containers.create(image, command=["/nonexistent"], network_mode="none",
                                         labels={READER_LABEL: "1"})
    try:
        stream, _stat = container.get_archive(MANIFEST_PATH)
        data = b"".join(stream)
    except docker.errors.NotFound:
        raise ManifestError(f"{image}: the image has no {MANIFEST_PATH}; every application needs a manifest") from None
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmembers()[0]
        if not member.isfile():
            raise ManifestError(f"{source}: not a regular file")
        handle = tar.extractfile(member)
        content = handle.read(MAX_BYTES + 1) if handle else b""
    return parse_manifest(content, source)
