"""run.sh as the container entrypoint: settings errors, and exiting when a component dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import heartbeat
from tests.helpers import REPO_ROOT, SiteRepo, python_env, wait_for

pytestmark = pytest.mark.system  # run.sh with real Nikola builds, ports


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


def _child(site, victim: str) -> int:
    return next(child for child in _children(site.process.proc.pid) if victim in _cmdline(child))


def test_a_component_that_does_not_stop_is_killed_after_the_grace_period(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url)
    site.wait_live(site_repo.clone.head.commit.hexsha)
    server = _child(site, "serve.py")
    os.kill(server, signal.SIGSTOP)  # a stopped server: the SIGTERM run.sh sends waits until it continues
    os.kill(_child(site, "pipeline watch"), signal.SIGKILL)
    died = time.monotonic()
    wait_for("run.sh to exit", lambda: site.process.proc.poll() is not None, 30)
    assert site.process.proc.returncode == 1
    assert time.monotonic() - died > 8  # the grace period (10 s, counted in whole seconds)
    assert "still running 10 s after SIGTERM; killing it" in site.process.log
    assert not Path(f"/proc/{server}").exists()


def _heartbeat(site) -> Path:
    """The heartbeat file run.sh gave this instance (from its watcher's environment)."""
    environ = Path(f"/proc/{_child(site, 'pipeline watch')}/environ").read_bytes().split(b"\0")
    return Path(next(item for item in environ if item.startswith(b"WATCHER_HEARTBEAT=")).split(b"=", 1)[1].decode())


def test_health_follows_the_watcher_also_while_a_replacement_waits_for_it(site_repo: SiteRepo, start_site) -> None:
    """An instance is healthy while its watcher beats: also a replacement's, waiting for the old watcher's lock
    (else replacements never finish); not an instance whose watcher stopped. Then the replacement takes over."""
    old = start_site(site_repo.url)
    old.wait_live(site_repo.clone.head.commit.hexsha)
    assert old.get("/_site/health").json()["watcher"] == "beating"
    started = time.monotonic()
    new = start_site(site_repo.url, data_dir=old.data_dir)  # on the same volume, as during a replacement
    wait_for("the new watcher to wait for the lock", lambda: "another watcher uses" in new.process.log, 30)
    beat = _heartbeat(new)
    allowance = heartbeat.allowance(0.3)

    def fresh_until() -> float:
        return json.loads(beat.read_text())["fresh_until"]

    # Its beat goes on beyond what its start was given: waiting for the lock is being alive.
    wait_for("beats while it waits", lambda: fresh_until() > started + heartbeat.STARTING_SECONDS + allowance + 1,
             30, interval=0.2)
    assert new.get("/_site/health").status_code == 200

    old_watcher = _child(old, "pipeline watch")
    os.kill(old_watcher, signal.SIGSTOP)  # serving, but publishing nothing any more
    wait_for("the old instance's health to fail", lambda: old.get("/_site/health").status_code == 503,
             allowance + 10, interval=0.2)
    health = old.get("/_site/health").json()
    assert health["healthy"] is False and health["watcher"] == "stale" and health["release"]
    assert old.get("/_site/health?serving").status_code == 200  # the frontend's check: it still serves
    assert new.get("/_site/health").json()["watcher"] == "beating"

    old.process.stop(signal.SIGKILL)  # the agent removes the old instance: its lock goes with it
    commit = site_repo.add_post("taken-over", "Published by the replacement")
    new.wait_live(commit)
