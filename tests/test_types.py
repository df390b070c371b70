"""The agent (container/) type-checks strictly: mypy with the project's settings (pyproject.toml, [tool.mypy])
reports no error. Pure: mypy reads the code and runs none of it; its cache (.mypy_cache, git-ignored) keeps a
warm check to a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_agent_is_strictly_typed() -> None:
    # The venv's mypy (test.sh installs it with the test extra), so the stubs it finds are the venv's too.
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "container"],
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mypy --strict finds errors in container/:\n{result.stdout}{result.stderr}"
