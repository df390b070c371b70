from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import REPO_ROOT, Process, SiteRepo, free_port, python_env, wait_for

pytest_plugins = ["tests.docker_fixtures", "tests.agent_fixtures"]


@pytest.fixture
def site_repo(tmp_path: Path) -> SiteRepo:
    return SiteRepo(tmp_path / "remote")


class RunningSite:
    """run.sh started for real against a git remote."""

    def __init__(self, process: Process, port: int, data_dir: Path):
        self.process = process
        self.port = port
        self.data_dir = data_dir
        self.base = f"http://[::1]:{port}"

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.base + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def status(self) -> dict:
        return self.get("/_site/status").json()

    def wait_live(self, commit: str, timeout: float = 60) -> dict:
        def live() -> dict | None:
            current = self.status()["current"]
            return current if current and current["commit"] == commit else None

        return wait_for(f"commit {commit[:12]} to go live", live, timeout)

    def wait_attempted(self, commit: str, timeout: float = 60) -> dict:
        def attempted() -> dict | None:
            builds = self.status()["builds"]
            return builds[0] if builds and builds[0]["commit"] == commit else None

        return wait_for(f"a build of {commit[:12]} to finish", attempted, timeout)


@pytest.fixture
def start_site(tmp_path: Path) -> Iterator:
    started: list[Process] = []

    def start(repo_url: str, data_dir: Path | None = None, **settings: object) -> RunningSite:
        """`data_dir`: another site's, for a replacement that shares the volume."""
        port = free_port()
        data_dir = data_dir or tmp_path / f"data-{len(started)}"
        env = python_env(SITE_REPO=repo_url, DATA_DIR=data_dir, PORT=port, **{"POLL_INTERVAL": 0.3, **settings})
        process = Process(["bash", str(REPO_ROOT / "run.sh")], env, tmp_path / f"run-{len(started)}.log")
        started.append(process)
        site = RunningSite(process, port, data_dir)
        wait_for("serve.py to answer", lambda: site.get("/_site/health").status_code in (200, 503), 30)
        return site

    yield start
    for process in started:
        process.stop()
