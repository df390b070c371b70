"""The watcher's heartbeat (pipeline/heartbeat.py) and how serve.py's health check reads it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline import heartbeat
from pipeline.config import settings_from_env
from pipeline.errors import ConfigError
from tests.helpers import wait_for


def test_the_allowance_is_several_poll_intervals_and_a_cycle_covers_a_whole_build() -> None:
    assert heartbeat.allowance(1) == heartbeat.MIN_ALLOWANCE
    assert heartbeat.allowance(60) == 180
    assert heartbeat.cycle_seconds(600, 60) > 600 + 60


def test_state_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    assert heartbeat.state(path) == "missing"
    path.write_text(json.dumps({"fresh_until": 100.0}))
    assert heartbeat.state(path, now=99.0) == "beating"
    assert heartbeat.state(path, now=100.5) == "stale"
    for junk in ("", "[]", '{"fresh_until": "soon"}', "{}"):
        path.write_text(junk)
        assert heartbeat.state(path) == "stale", junk


def test_beats_while_the_loop_keeps_its_word(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    beat = heartbeat.Heartbeat(path, poll_interval=1, cycle=30)
    beat.start()
    try:
        wait_for("the first beat", path.exists, 10)
        fresh_until = json.loads(path.read_text())["fresh_until"]
        assert fresh_until - time.monotonic() > heartbeat.MIN_ALLOWANCE - 2
        assert heartbeat.state(path) == "beating"
        beat.expect_cycle()
        wait_for("a later beat", lambda: json.loads(path.read_text())["fresh_until"] > fresh_until, 10)
    finally:
        beat.stop()
    assert list(tmp_path.iterdir()) == [path]  # replaced atomically: no temporary file is left


def test_no_file_no_thread() -> None:
    beat = heartbeat.Heartbeat(None, poll_interval=1, cycle=30)
    beat.start()
    beat.expect(5)
    assert not beat._thread.is_alive()


def test_the_setting_is_an_absolute_path() -> None:
    assert settings_from_env({"SITE_REPO": "/srv/site.git"}).heartbeat_file is None
    assert settings_from_env({"SITE_REPO": "/srv/site.git", "WATCHER_HEARTBEAT": "/tmp/x/beat"}).heartbeat_file \
        == Path("/tmp/x/beat")
    with pytest.raises(ConfigError, match="WATCHER_HEARTBEAT='beat': expected an absolute path"):
        settings_from_env({"SITE_REPO": "/srv/site.git", "WATCHER_HEARTBEAT": "beat"})
