"""The builder's door (pipeline.build.door), run for real as the builder runs it: it waits for the publisher with
nothing of the build worker loaded, becomes the worker in the same process once the publisher connects, and the
worker ends with that connection (the builder's restart policy opens a fresh door). No container: the builder's
own tests are in test_hostile_commits.py, through the agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.publish.builds import BuildWorker
from tests.helpers import REPO_ROOT, wait_for


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_door_waits_lean_and_becomes_the_worker_of_one_connection(tmp_path: Path) -> None:
    socket_path = tmp_path / "builder" / "socket"
    door = subprocess.Popen([sys.executable, "-m", "pipeline.build.door"], cwd=REPO_ROOT, stderr=subprocess.PIPE,
                            env={**os.environ, "BUILDER_SOCKET": str(socket_path)}, text=True)
    try:
        wait_for("the door's socket", socket_path.exists, 30)
        assert oct(socket_path.stat().st_mode & 0o777) == "0o666"  # the publisher is another user
        assert "pipeline.build.door" in command_line(door.pid)
        # Waiting, it has loaded nothing a build needs: no lxml, no ctypes (the sandbox), no JSON accelerator.
        assert not any(library in mapped(door.pid) for library in ("etree", "_ctypes", "_json")), mapped(door.pid)

        worker = BuildWorker(socket_path=socket_path)
        worker._start()  # noqa: SLF001 - what a build does first: connect, read the ready line
        try:
            assert worker.ready["ready"] is True and worker.ready["pid"] == door.pid  # the same process, exec'd
            assert "pipeline.build.worker --serve" in command_line(door.pid)
            assert "etree" in mapped(door.pid)  # the worker warmed up: Nikola's libraries are loaded
        finally:
            worker.stop()
        assert door.wait(30) == 0  # the connection closed: the worker ends, the builder starts afresh
        assert not socket_path.exists()
        assert "waiting for the publisher" in door.stderr.read()
    finally:
        if door.poll() is None:
            door.kill()
            door.wait()


def test_a_door_without_an_absolute_socket_path_says_so(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.build.door"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "BUILDER_SOCKET": "socket", "PYTHONPATH": str(REPO_ROOT)},
                          timeout=30)
    assert done.returncode == 2 and "BUILDER_SOCKET must name the builder's socket" in done.stderr
