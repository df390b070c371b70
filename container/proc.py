"""Running the host programs the agent drives: one place for time limits and one-line errors.

Every program the agent (and `./bootstrap.sh site`) starts goes through here (tests/test_imports.py checks that
no other module imports subprocess): `run` for a program that finishes (with a time limit), `stream` for one
whose progress is shown as it runs, `start` for a daemon or a child that runs until it is stopped (no limit:
it is meant to outlive the call)."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable
from subprocess import CompletedProcess as CompletedProcess  # what run returns, for the callers' annotations
from subprocess import Popen as Popen  # what start returns
from typing import BinaryIO

from container.errors import AgentError

log = logging.getLogger(__name__)


def run(argv: list[str], *, timeout: float = 60, stdin: str | None = None, check: bool = True,
        error: type[AgentError] = AgentError, package: str | None = None,
        env: dict[str, str] | None = None) -> CompletedProcess[str]:
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


def start(argv: list[str], *, output: BinaryIO | None = None, new_session: bool = True, name: str | None = None,
          error: type[AgentError] = AgentError) -> Popen[bytes]:
    """Start `argv` and return at once: a daemon (in a session of its own, so that it outlives the agent and a
    signal to the agent's group does not reach it) or a supervised child (`new_session=False`). Its stdin is
    /dev/null; its stdout and stderr go to `output` (a log file), else where the agent's go. No time limit:
    the caller watches it. A program that cannot be started raises `error` naming it (`name`, else argv[0])."""
    log.debug("starting %s", shlex.join(argv))
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT if output is not None else None,
                                start_new_session=new_session)
    except OSError as exc:
        raise error(f"cannot start {name or argv[0]}: {exc.strerror or exc}") from None
