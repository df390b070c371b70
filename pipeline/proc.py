"""The one gateway through which the pipeline runs programs (Nikola)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pipeline.errors import CommandError

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
