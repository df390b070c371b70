"""What must survive an agent restart, kept as JSON in the state directory (atomic writes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from container.files import replace_file


class StateDir:
    def __init__(self, path: Path):
        self.path = path

    @property
    def file(self) -> Path:
        return self.path / "state.json"

    def etc_dir(self, instance: str) -> Path:
        return self.path / "instances" / instance

    def load(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.file.read_text())
            return state
        except (OSError, ValueError):
            return {}

    def save(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        replace_file(self.file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def write_etc_file(self, instance: str, name: str, text: str) -> Path:
        """Write a file bind-mounted into the instance, in place, so the mount sees the change."""
        directory = self.etc_dir(instance)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        with open(path, "a+") as handle:
            handle.seek(0)
            if handle.read() != text:
                handle.seek(0)
                handle.truncate()
                handle.write(text)
        return path
