"""run.sh as the container entrypoint: settings errors, and exiting when a component dies."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, SiteRepo, python_env, wait_for


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "pipeline: SITE_REPO is not set: give the git URL of the site repository"),
    ({"SITE_REPO": "/srv/x.git", "PORT": "eighty"}, "pipeline: PORT='eighty': expected a whole number"),
    ({"SITE_REPO": "/srv/x.git", "POLL_INTERVAL": "-1"}, "pipeline: POLL_INTERVAL='-1': must be at least 0.1"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    env = {key: value for key, value in python_env().items() if key not in ("SITE_REPO", "PORT", "POLL_INTERVAL")}
    env.update(settings, DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(["bash", str(REPO_ROOT / "run.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("victim", ["serve.py", "pipeline watch"])
def test_exits_non_zero_when_a_component_dies(site_repo: SiteRepo, start_site, victim: str) -> None:
    site = start_site(site_repo.url)
    site.wait_live(site_repo.clone.head.commit.hexsha)
    pid = site.process.proc.pid
    target = next(child for child in _children(pid) if victim in _cmdline(child))
    os.kill(target, signal.SIGKILL)
    wait_for("run.sh to exit", lambda: site.process.proc.poll() is not None, 20)
    assert site.process.proc.returncode == 1
    assert "a component exited" in site.process.log


def test_sigterm_stops_both_components(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url)
    site.wait_live(site_repo.clone.head.commit.hexsha)
    pid = site.process.proc.pid
    children = _children(pid)
    assert len(children) == 2
    site.process.proc.send_signal(signal.SIGTERM)
    assert site.process.proc.wait(20) == 0
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()
