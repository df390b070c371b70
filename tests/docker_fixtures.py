"""Fixtures for tests that go through the real Docker engine (via the Python SDK only)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from container import base_image, engine
from container.image import build_app_image
from tests.helpers import REPO_ROOT

APP_IMAGE = "srcco-de:1"
READER_IMAGE = "pequod-reader:1"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    # No skipping: without an engine these tests fail, saying why.
    return engine.ensure_engine(_progress)


@pytest.fixture(scope="session")
def app_image(docker_client: docker.DockerClient) -> str:
    """The blog's image built from this tree (Docker's cache makes this quick after test.sh built it)."""
    base = base_image.ensure_base_image(docker_client, progress=_progress)
    build_app_image(docker_client, REPO_ROOT, APP_IMAGE, base, _progress)
    return APP_IMAGE


@pytest.fixture(scope="session")
def reader_image(docker_client: docker.DockerClient, app_image: str) -> str:
    """A second application (tests/reader_image): it requires the blog's service as blog.internal:80."""
    base = base_image.ensure_base_image(docker_client, progress=_progress)
    docker_client.images.build(path=str(REPO_ROOT / "tests" / "reader_image"), tag=READER_IMAGE,
                               buildargs={"BASE_IMAGE": base}, rm=True)
    return READER_IMAGE


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[list]:
    """Every container a test creates goes on this list and is removed afterwards, also on failure."""
    created: list = []
    yield created
    for container in created:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def exec_http(container, url: str) -> str:
    """GET `url` from inside the container (its own network namespace); returns 'STATUS BODY'."""
    script = (
        "import urllib.request, urllib.error, sys\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=5); print(r.status, r.read().decode())\n"
        "except urllib.error.HTTPError as e: print(e.code, e.read().decode())\n"
        "except Exception as e: print('000', e)\n"
    )
    result = container.exec_run(["python3", "-c", script])
    return result.output.decode(errors="replace").strip()


def wait_exec_http(container, url: str, status: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        container.reload()
        if container.status not in ("created", "running"):
            raise AssertionError(f"container exited: {container.logs().decode(errors='replace')[-2000:]}")
        last = exec_http(container, url)
        if last.startswith(status):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered {status} (last: {last[:200]}); logs:\n"
                         f"{container.logs().decode(errors='replace')[-2000:]}")
