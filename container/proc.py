"""Running the host programs the agent drives: one place for time limits and one-line errors."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable

from container.errors import AgentError

log = logging.getLogger(__name__)


def run(argv: list[str], *, timeout: float = 60, stdin: str | None = None, check: bool = True,
        error: type[AgentError] = AgentError, package: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion (with `env` as its whole environment when given); a missing program, a
    timeout or (with `check`) a failure raises `error` with the command line and what the program said."""
    cmdline = shlex.join(argv)
    log.debug("running %s", cmdline)
    try:
        result = subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed (apt-get install {package or argv[0]})") from None
    except subprocess.TimeoutExpired:
        raise error(f"{cmdline} did not finish within {timeout:g} s") from None
    if check and result.returncode != 0:
        said = " | ".join(line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip())
        raise error(f"{cmdline} failed (exit status {result.returncode}): {said or 'no output'}")
    return result


def stream(argv: list[str], *, timeout: float, on_line: Callable[[str], None],
           error: type[AgentError] = AgentError, package: str | None = None) -> None:
    """Run `argv`, passing each line of its output to `on_line` as it arrives (for progress); a failure
    raises `error` with the last lines of the output."""
    cmdline = shlex.join(argv)
    log.debug("running %s", cmdline)
    lines: list[str] = []
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed (apt-get install {package or argv[0]})") from None

    def pump() -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        raise error(f"{cmdline} did not finish within {timeout:g} s") from None
    finally:
        reader.join(5)
    if child.returncode != 0:
        tail = " | ".join(lines[-5:])
        raise error(f"{cmdline} failed (exit status {child.returncode}): {tail or 'no output'}")
