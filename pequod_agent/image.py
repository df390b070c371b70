"""Application images: building one from this repository, reading /pequod.xml out of one."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from pequod_agent.errors import ImageBuildError, ManifestError
from pequod_agent.manifest import MAX_BYTES, Manifest, parse_manifest

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


def manifest_from_image(client: docker.DockerClient, image: str) -> Manifest:
    """Read and parse /pequod.xml from an image without running it."""
    source = f"{image}:{MANIFEST_PATH}"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ManifestError(f"{image}: no such image (build it first, or check the name)") from None
    container = client.containers.create(image, command=["/nonexistent"], network_mode="none")
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
