"""Starting the programs the pipeline runs: the one module of pipeline/ and serve.py that may import subprocess
(tests/test_imports.py checks it), as container/proc.py is the agent's.

The pipeline starts one program itself: its build worker (`python -m pipeline.build.worker`), a child that lives
for many builds and answers on a pipe; its client (pipeline.publish.builds) bounds each answer with the build's
timeout. git runs through GitPython (pipeline.publish.git_source, a time limit on every command), and Nikola in
forks of the build worker (pipeline.build.forks), not through here. The image does not ship container/, so this
module is the pipeline's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from subprocess import Popen as Popen  # what start returns, for the callers' annotations

log = logging.getLogger(__name__)


def start(argv: list[str], *, env: Mapping[str, str] | None = None) -> Popen[str]:
    """Start `argv` in a session of its own (so that it and what it starts can be ended as one group), with
    `env` as its whole environment when given, and pipes to its stdin and from its stdout (text); its stderr
    is the pipeline's. No time limit here: the caller bounds each exchange and ends it with `end`."""
    log.debug("starting %s", shlex.join(argv))
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env=env)


def end(child: Popen[str], grace: float) -> None:
    """Ask `child`'s process group to stop (SIGTERM) and wait up to `grace` seconds for the child."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(grace)
