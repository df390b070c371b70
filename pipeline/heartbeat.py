"""The watcher's heartbeat: how serve.py's health check knows that publishing goes on.

The watcher's loop says how long its current step may take (`Heartbeat.expect`: a poll interval while it
waits, the bounds of git and of the build while it checks and builds, half a second while it waits for
another instance's lock). A thread writes the heartbeat file every second as long as the loop is within
that time. The file says until when the beat counts (`fresh_until`: the beat plus `allowance()`, several
poll intervals). serve.py's /_site/health fails once that has passed, so the agent replaces an instance
whose watcher died, was stopped or hangs, but not one that waits for the lock, retries an unreachable
remote (a recorded failure) or runs a long build.

The file is the instance's own (run.sh makes it outside the data volume, which an old and a new instance
share during a replacement) and is replaced atomically. Times are CLOCK_MONOTONIC, one clock for every
process on the host, so a change of the wall clock cannot make an instance unhealthy.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.files import replace_file
from pipeline.status import utc_now

ENV = "WATCHER_HEARTBEAT"  # the file's path, set by run.sh for both parts
BEAT_SECONDS = 2.0  # well within MIN_ALLOWANCE, and half the writes of one a second (an idle site's CPU)
MIN_ALLOWANCE = 10.0
BUILDER_WAIT_SECONDS = 60.0
STARTING_SECONDS = 5.0  # from the watcher's start until its loop first says how long its step takes
GIT_CALLS_PER_CYCLE = 10  # ls-remote, fetch, ls-tree, diff, checkout, clean, log, …: each within GIT_TIMEOUT
PUBLISH_SECONDS = 120.0  # staging and swapping a release (disk work, no time limit of its own)


def allowance(poll_interval: float) -> float:
    """How long a beat counts: several poll intervals, at least MIN_ALLOWANCE s (a busy host delays beats)."""
    return max(3 * poll_interval, MIN_ALLOWANCE)


def cycle_seconds(build_timeout: float, git_timeout: float) -> float:
    """The longest one check of the remote can take: its git calls, the wait for the builder (while it starts
    afresh: pipeline.publish.builds.BuildWorker.CONNECT_SECONDS), the build and the publishing."""
    return build_timeout + GIT_CALLS_PER_CYCLE * git_timeout + BUILDER_WAIT_SECONDS + PUBLISH_SECONDS


class Heartbeat:
    """Beats into `path` (None: nowhere) while the loop keeps to the time it said its step takes."""

    def __init__(self, path: Path | None, poll_interval: float, cycle: float):
        self.path = path
        self.allowance = allowance(poll_interval)
        self.cycle = cycle
        self._due = time.monotonic() + STARTING_SECONDS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def expect(self, seconds: float) -> None:
        """The loop's next step takes at most `seconds`; it says so again when that step is over."""
        self._due = time.monotonic() + seconds

    def expect_cycle(self) -> None:
        """The loop starts a check of the remote (which may build and publish)."""
        self.expect(self.cycle)

    def start(self) -> None:
        if self.path is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        assert self.path is not None
        while not self._stop.is_set():
            now = time.monotonic()
            if now <= self._due:
                with contextlib.suppress(OSError):  # a full or missing directory: the beat goes stale
                    replace_file(self.path, json.dumps({"fresh_until": round(now + self.allowance, 3),
                                                        "at": utc_now()}) + "\n")
            self._stop.wait(BEAT_SECONDS)


def for_watcher(settings: Settings) -> Heartbeat:
    return Heartbeat(settings.heartbeat_file, settings.poll_interval,
                     cycle_seconds(settings.build_timeout, settings.git_timeout))


def state(path: Path, now: float | None = None) -> str:
    """`beating`, `stale` (the watcher died, was stopped or hangs) or `missing` (not started yet)."""
    try:
        fresh_until = float(json.loads(path.read_text())["fresh_until"])
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, TypeError):
        return "stale"
    return "beating" if (time.monotonic() if now is None else now) <= fresh_until else "stale"
