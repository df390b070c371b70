"""The one gateway through which programs are run: subprocesses with limits, and the build worker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import BuildError, CommandError

log = logging.getLogger(__name__)

# Process groups of running children, so a shutdown can stop a build in progress.
running_groups: set[int] = set()


def terminate_children() -> None:
    for pgid in list(running_groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


def _limit_memory(limit_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    memory_limit_mb: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run ``cmd`` to completion within ``timeout`` seconds and return its output.

    stdout and stderr are merged (and written to ``log_path`` when given, or passed line by line
    to ``on_line`` as they arrive, for progress). The child runs in
    its own session so that a timeout kills everything it started, not just the leader.
    """
    cmdline = shlex.join(cmd)
    log.debug("running %s (timeout %ss)", cmdline, timeout)
    preexec = None
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 1024 * 1024
        preexec = lambda: _limit_memory(limit)  # noqa: E731
    if on_line is not None:
        return _run_streaming(cmd, cmdline, timeout=timeout, cwd=cwd, env=env, on_line=on_line)
    out = open(log_path, "w+b") if log_path else subprocess.PIPE  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
        running_groups.add(proc.pid)
        timed_out = False
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        finally:
            running_groups.discard(proc.pid)
        if log_path is not None:
            out.seek(0)  # type: ignore[union-attr]
            stdout = out.read()  # type: ignore[union-attr]
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
    text = (stdout or b"").decode("utf-8", "replace")
    if timed_out or proc.returncode != 0:
        raise CommandError(cmdline, proc.returncode, text, timed_out=timed_out)
    return text


def _run_streaming(
    cmd: Sequence[str], cmdline: str, *, timeout: float, cwd: Path | None,
    env: Mapping[str, str] | None, on_line: Callable[[str], None],
) -> str:
    lines: list[str] = []
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    running_groups.add(proc.pid)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        running_groups.discard(proc.pid)
    reader.join(5)
    text = "\n".join(lines)
    if timed_out or proc.returncode != 0:
        raise CommandError(cmdline, proc.returncode, text, timed_out=timed_out)
    return text


class BuildWorker:
    """`python -m pipeline.build_worker`, kept between builds (see that module)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.build_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        running_groups.add(self.proc.pid)
        if self._read(60) is None:
            self.stop()
            raise BuildError("the build worker did not start (see the pipeline's log)", "")

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def build(self, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Run one build; returns the worker's answer and whether the worker was already warm.

        A warm worker that went away meanwhile (it ends itself when idle) is replaced once."""
        warm = self.running()
        if not warm:
            self._start()
        answer = self._ask(request)
        if answer is None and warm:
            log.info("the build worker had gone; starting a fresh one")
            self.stop()
            self._start()
            warm = False
            answer = self._ask(request)
        if answer is None:
            self.stop()
            raise BuildError("the build worker stopped answering (see the pipeline's log)", "")
        if answer.get("exiting"):
            self.stop()
        return answer, warm

    def _ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return self._read(float(request["timeout"]) + 30)
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            running_groups.discard(self.proc.pid)
            self.proc = None
