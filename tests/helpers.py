"""Shared test helpers: real git remotes, real processes, waiting on observable signals."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import git
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
SITE_TEMPLATE = REPO_ROOT / "site_template"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except (requests.RequestException, OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def wait_for_checks(status: Callable[[], dict], moves: int = 2, timeout: float = 60.0) -> dict:
    """Wait until the watcher's `last_check` (whole seconds) has moved `moves` times; returns that status.

    The proof for a "did not happen" assertion: a check records `last_check` before it decides what to
    build, so once it has moved twice, a whole check that began after this call (building included) is
    over. Each further move is one more whole check."""
    seen = [status()["last_check"]]

    def moved() -> dict | None:
        current = status()
        if current["last_check"] != seen[-1]:
            seen.append(current["last_check"])
        return current if len(seen) > moves else None

    return wait_for(f"the watcher's last_check to move {moves} times (seen {seen})", moved, timeout)


def agent_rounds(metrics_url: str) -> int:
    """Rounds of its supervision loop the agent has finished: `pequod_agent_loop_rounds_total` at `metrics_url`."""
    response = requests.get(metrics_url, timeout=5)
    response.raise_for_status()
    for line in response.text.splitlines():
        if line.startswith("pequod_agent_loop_rounds_total "):
            return int(float(line.split()[1]))
    raise ValueError(f"no pequod_agent_loop_rounds_total at {metrics_url}")


def wait_for_agent_rounds(metrics_url: str, rounds: int = 3, timeout: float = 60.0) -> int:
    """Wait until the agent has finished `rounds` more rounds of its loop than when this is called (at its
    metrics endpoint's first answer, should the agent still be starting); returns the count.

    The proof for a "did not happen" assertion about the agent: the round under way at the call may have
    begun before the change, the next one began after it, so once `rounds` (at least 2) more have finished
    the agent has looked at everything (instances, frontend, NAT64, firewall, certificate) `rounds - 1`
    times since. The counter going down means another agent answers (a restart): that fails at once."""
    assert rounds >= 2, "one round more may be the round that began before the change"
    deadline = time.monotonic() + timeout
    first: int | None = None
    last: int | None = None
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            current = agent_rounds(metrics_url)
        except (requests.RequestException, ValueError) as exc:  # not answering yet (starting), or no counter
            error = exc
        else:
            if last is not None and current < last:
                raise AssertionError(f"pequod_agent_loop_rounds_total at {metrics_url} went down from {last} to "
                                     f"{current}: the agent restarted while the test waited for its rounds")
            first = current if first is None else first
            last = current
            if current >= first + rounds:
                return current
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {rounds} more rounds of the agent's loop at "
                         f"{metrics_url}: its counter was {first} at first, {last} at last (last error: {error})")


def free_port() -> int:
    """A TCP port free on every IPv6 and IPv4 address (servers under test bind ::1, 127.0.0.1 or both)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        return sock.getsockname()[1]


class SiteRepo:
    """A bare git remote seeded from site_template/, plus a clone to push commits from."""

    def __init__(self, root: Path, branch: str = "main"):
        self.bare = root / "site.git"
        self.branch = branch
        git.Repo.init(self.bare, bare=True, initial_branch=branch)
        self.clone = git.Repo.clone_from(str(self.bare), root / "checkout")
        with self.clone.config_writer() as config:
            config.set_value("user", "name", "Test Writer")
            config.set_value("user", "email", "writer@example.org")
        shutil.copytree(SITE_TEMPLATE, self.work, dirs_exist_ok=True)
        self.commit("Initial site")

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    @property
    def work(self) -> Path:
        return Path(self.clone.working_tree_dir or "")

    def commit(self, message: str, *, push: bool = True, force: bool = False) -> str:
        self.clone.git.add("-A")
        self.clone.git.commit("-q", "--allow-empty", "-m", message)
        if push:
            self.push(force=force)
        return self.clone.head.commit.hexsha

    def push(self, force: bool = False) -> None:
        args = ["--force"] if force else []
        self.clone.git.push("-q", *args, "origin", f"HEAD:refs/heads/{self.branch}")

    def write(self, relpath: str, text: str) -> None:
        path = self.work / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def add_post(self, slug: str, title: str, body: str = "Some text.", tags: str = "test") -> str:
        self.write(
            f"posts/{slug}.rst",
            f".. title: {title}\n.. slug: {slug}\n.. date: 2026-04-01 10:00:00 UTC\n.. tags: {tags}\n\n{body}\n",
        )
        return self.commit(f"Add {slug}")


class Process:
    """A started program, stopped by its PID (and its process group) at cleanup."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Anything the program left in its process group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


def chromium(tmp: Path) -> Any:
    """Debian's headless Chromium through chromedriver (Selenium), with a fresh profile under `tmp`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--user-data-dir={tmp / 'chromium'}", "--window-size=1000,1600"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def python_env(**extra: Any) -> dict[str, str]:
    """The environment for a child: this interpreter's venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update({key: str(value) for key, value in extra.items()})
    return env
