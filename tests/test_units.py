"""Unit tests for the pure parts of the pipeline."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline import config, releases
from pipeline.config import redact_url, settings_from_env
from pipeline.errors import ConfigError, ReleaseError, short
from pipeline.publish.builds import BuildState, clean_build_reason, log_tail, read_log_tail
from pipeline.publish.watcher import MAX_BACKOFF, backoff_delay
from pipeline.serve.answers import BadPath, memo_path, split_request_path
from pipeline.status import Status, StatusStore
from tests.helpers import wait_for


def test_settings_defaults() -> None:
    settings = settings_from_env({"SITE_REPO": "https://example.org/site.git"})
    assert settings.site_branch == "main" and settings.poll_interval == 10
    assert settings.data_dir == Path("/workdir") and settings.layout.current == Path("/workdir/current")
    assert settings.build_timeout == 600 and settings.keep_releases == 5
    assert settings.build_memory_mb == 2048 and settings.max_file_mb == 100


@pytest.mark.parametrize(("env", "message"), [
    ({}, "SITE_REPO is not set"),
    ({"SITE_REPO": "not a url"}, "SITE_REPO='not a url': expected a git URL"),
    ({"SITE_REPO": "/r", "PORT": "80x"}, "PORT='80x': expected a whole number"),
    ({"SITE_REPO": "/r", "PORT": "70000"}, "PORT=70000: expected a port number 1-65535"),
    ({"SITE_REPO": "/r", "PORT": "0"}, "PORT='0': must be at least 1"),
    ({"SITE_REPO": "/r", "POLL_INTERVAL": "soon"}, "POLL_INTERVAL='soon': expected a number"),
    ({"SITE_REPO": "/r", "POLL_INTERVAL": "0"}, "POLL_INTERVAL='0': must be at least 0.1"),
    ({"SITE_REPO": "/r", "POLL_INTERVAL": "nan"}, "POLL_INTERVAL='nan'"),
    ({"SITE_REPO": "/r", "SITE_BRANCH": "a..b"}, "SITE_BRANCH='a..b': not a valid git branch name"),
    ({"SITE_REPO": "/r", "SITE_BRANCH": "has space"}, "not a valid git branch name"),
    ({"SITE_REPO": "/r", "DATA_DIR": "relative"}, "DATA_DIR='relative': expected an absolute path"),
    ({"SITE_REPO": "/r", "KEEP_RELEASES": "1"}, "KEEP_RELEASES='1': must be at least 2"),
    ({"SITE_REPO": "/r", "BUILD_MEMORY_MB": "10"}, "BUILD_MEMORY_MB='10': must be at least 256"),
    ({"SITE_REPO": "/r", "LANDLOCK_ABI_MAX": "two"}, "LANDLOCK_ABI_MAX='two': expected a whole number"),
    ({"SITE_REPO": "/r", "LANDLOCK_ABI_MAX": "-1"}, "LANDLOCK_ABI_MAX='-1': must be at least 0"),
])
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.").replace("?", r"\?")):
        settings_from_env(env)


def test_every_settings_field_comes_from_the_table() -> None:
    from dataclasses import fields

    from pipeline.config import SETTINGS, Settings
    assert sorted(field.name for field in fields(Settings)) == sorted(s.field for s in SETTINGS if s.field)
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_the_previews_settings_wait_for_previews_host() -> None:
    # Unchecked without PREVIEWS_HOST, as the agent gives them only with previews.
    settings = settings_from_env({"SITE_REPO": "/r", "PREVIEWS_MAX": "many", "PREVIEWS_PASSWORD": "secret"})
    assert settings.previews_max == 10 and settings.previews_password is None
    assert config.previews({"PREVIEWS_MAX": "many"}) == {}
    public = config.previews({"PREVIEWS_HOST": "Blog.Example.org", "PREVIEWS_PUBLIC": "yes",
                              "PREVIEWS_PASSWORD": "secret"})
    assert public == {"previews_host": "blog.example.org", "previews_max": 10, "previews_password": None,
                      "previews_public": True, "previews_https": False}
    with pytest.raises(ConfigError, match="PREVIEWS_MAX=101: at most 100 previews per site"):
        config.previews({"PREVIEWS_HOST": "blog.example.org", "PREVIEWS_PUBLIC": "1", "PREVIEWS_MAX": "101"})


def test_run_sh_gets_its_values_from_the_table() -> None:
    assert config.shell({"SITE_REPO": "/r"}, ["DATA_DIR", "PORT"]) == "DATA_DIR=/workdir\nPORT=8000\n"
    assert config.shell({"DATA_DIR": " /srv/my data "}, ["DATA_DIR"]) == "DATA_DIR='/srv/my data'\n"
    with pytest.raises(ConfigError, match="PORT='x': expected a whole number"):
        config.shell({"PORT": "x"}, ["PORT"])
    with pytest.raises(ConfigError, match="NOPE: not a setting"):
        config.shell({}, ["NOPE"])
    assert config.build_worker_idle({}) == 900 and config.landlock_abi_max({"LANDLOCK_ABI_MAX": " 2 "}) == 2


def test_secrets_in_urls_are_redacted() -> None:
    assert redact_url("https://user:token@example.org/x.git") == "https://***@example.org/x.git"
    assert redact_url("file:///srv/site.git") == "file:///srv/site.git"
    with pytest.raises(ConfigError) as info:
        settings_from_env({"SITE_REPO": "ftp://user:token@example.org/x"})
    assert "token" not in str(info.value)


@pytest.mark.parametrize(("previous", "changes", "reason"), [
    (None, [], "no previous build"),
    (BuildState("a", ok=False), [("M", "posts/x.rst")], "the previous build failed"),
    (BuildState("a", ok=True), None, "the previous commit is no longer known"),
    (BuildState("a", ok=True), [("M", "conf.py")], "conf.py changed"),
    (BuildState("a", ok=True), [("A", "themes/mine/base.tmpl")], "themes/mine/base.tmpl changed"),
    (BuildState("a", ok=True), [("M", "posts/x.rst"), ("D", "posts/y.md"), ("A", "files/z.png")], None),
    (BuildState("a", ok=True), [], None),
])
def test_clean_build_reason(previous, changes, reason) -> None:
    assert clean_build_reason(previous, changes) == reason


def test_log_tail_keeps_the_end() -> None:
    text = "\n".join(f"line {n}" for n in range(100)) + "\n"
    assert log_tail(text, 3) == "line 97\nline 98\nline 99"


def test_log_tail_names_the_error_first_and_cuts_long_lines() -> None:
    text = "\n".join(["Scanning posts....done!", "[2026-12-07 10:00:00] ERROR: Nikola: cannot create output: exists",
                      "Traceback (most recent call last):", *(f'  File "x{n}.py", line {n}' for n in range(40)),
                      "x" * 5000])
    tail = log_tail(text).splitlines()
    assert tail[0] == "[2026-12-07 10:00:00] ERROR: Nikola: cannot create output: exists" and tail[1] == "…"
    assert len(tail) == 32 and len(tail[-1]) < 600 and "characters]" in tail[-1]
    assert log_tail("a\nValueError: bad value\n  more\n").splitlines()[1] == "ValueError: bad value"  # in the tail


def test_the_log_is_read_from_its_end_only(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with log.open("w") as handle:
        for number in range(300_000):
            handle.write(f"line {number}\n")
    text = read_log_tail(log, limit=1000)
    assert len(text) <= 1000 and text.startswith("line ") and text.endswith("line 299999\n")
    (tmp_path / "link.log").symlink_to(log)
    assert read_log_tail(tmp_path / "link.log") == ""  # never followed


def test_long_messages_are_cut_in_the_middle() -> None:
    message = "cannot check out: could not lstat " + "junk/" + "x" * 5000 + "/end"
    cut = short(message)
    assert len(cut) < 650 and cut.startswith("cannot check out") and cut.endswith("/end") and "characters]" in cut
    assert short("short") == "short"


def test_a_kept_release_of_the_same_tree_is_found(tmp_path: Path) -> None:
    rels = tmp_path / "releases"
    for name, tree_id, holds_back in (("r1", "t1", False), ("r2", "t2", False), ("r3", "t1", True)):
        (rels / name).mkdir(parents=True)
        (rels / f"{name}.json").write_text(json.dumps(asdict(
            releases.Release(name, "c", "t", 1.0, tree=tree_id, holds_back=holds_back))))
    assert releases.same_tree(rels, "t1") == rels / "r1"  # r3 left posts out that may be due by now
    assert releases.same_tree(rels, "t2") == rels / "r2"
    assert releases.same_tree(rels, "t9") is None and releases.same_tree(rels, "") is None


def test_backoff_doubles_and_is_capped() -> None:
    assert backoff_delay(10, 0) == 10
    assert backoff_delay(10, 1) == 20
    assert backoff_delay(10, 3) == 80
    assert backoff_delay(10, 50) == MAX_BACKOFF
    assert backoff_delay(600, 5) == 600


def _make_output(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_stage_links_unchanged_files_and_publish_swaps(tmp_path: Path) -> None:
    output = _make_output(tmp_path / "output", {"index.html": "one", "a/b.css": "css"})
    rels, link = tmp_path / "releases", tmp_path / "current"
    first = releases.stage(output, rels, releases.Release("r1", "c1", "t", 1.0), None)
    releases.publish(link, first)
    assert os.readlink(link) == "releases/r1"
    (output / "index.html").write_text("two")
    second = releases.stage(output, rels, releases.Release("r2", "c2", "t", 1.0), first)
    assert (second / "a/b.css").stat().st_ino == (first / "a/b.css").stat().st_ino
    assert (second / "index.html").stat().st_ino != (first / "index.html").stat().st_ino
    assert (first / "index.html").read_text() == "one"
    releases.publish(link, second)
    assert releases.current_release_dir(link) == second.resolve()
    assert releases.read_meta(second) == releases.Release("r2", "c2", "t", 1.0)


def test_stage_precompresses_text_and_shares_unchanged_gz(tmp_path: Path) -> None:
    page, css = "<p>words</p>" * 100, "body { margin: 0 }\n" * 60
    output = _make_output(tmp_path / "output", {"index.html": page, "a/b.css": css, "small.html": "<p>x</p>",
                                                "img.png": "x" * 2000})
    rels = tmp_path / "releases"
    first = releases.stage(output, rels, releases.Release("r1", "c1", "t", 1.0), None)
    assert gzip.decompress((first / "index.html.gz").read_bytes()).decode() == page
    assert gzip.decompress((first / "a/b.css.gz").read_bytes()).decode() == css
    assert not (first / "small.html.gz").exists() and not (first / "img.png.gz").exists()  # too small; not text
    assert (first / "index.html.gz").stat().st_mtime_ns == (first / "index.html").stat().st_mtime_ns
    (output / "index.html").write_text(page + "<p>new</p>")
    second = releases.stage(output, rels, releases.Release("r2", "c2", "t", 1.0), first)
    assert (second / "a/b.css.gz").stat().st_ino == (first / "a/b.css.gz").stat().st_ino
    assert gzip.decompress((second / "index.html.gz").read_bytes()).decode() == page + "<p>new</p>"
    assert (second / "index.html.gz").read_bytes() == releases.gzip.compress(
        (page + "<p>new</p>").encode(), compresslevel=9, mtime=0)  # deterministic


def test_prune_keeps_the_newest_and_the_live_one(tmp_path: Path) -> None:
    rels, link = tmp_path / "releases", tmp_path / "current"
    output = _make_output(tmp_path / "output", {"index.html": "x"})
    for number in range(1, 8):
        releases.stage(output, rels, releases.Release(f"r{number}", "c", "t", 1.0), None)
    releases.publish(link, rels / "r1")  # rolled back to the oldest
    removed = releases.prune(rels, link, keep=3)
    assert removed == ["r2", "r3", "r4"]
    assert releases.list_releases(rels) == ["r1", "r5", "r6", "r7"]
    assert not (rels / "r2.json").exists()


def test_rollback_target() -> None:
    ids = ["r1", "r2", "r3"]
    assert releases.rollback_target(ids, "r3", None) == "r2"
    assert releases.rollback_target(ids, "r3", "r1") == "r1"
    with pytest.raises(ReleaseError, match="oldest"):
        releases.rollback_target(ids, "r1", None)
    with pytest.raises(ReleaseError, match="no release 'r9'"):
        releases.rollback_target(ids, "r3", "r9")


def test_release_ids_sort_by_time() -> None:
    assert releases.release_id("abcdef0123456789", now=0) == "19700101T000000.000Z-abcdef012345"
    assert releases.release_id("f" * 40, now=100) > releases.release_id("0" * 40, now=99)
    # Two publishes within one second (a watched local remote makes that common) still sort by time.
    assert releases.release_id("0" * 40, now=100.25) > releases.release_id("f" * 40, now=100.2)


def _build(commit: str, result: str) -> dict:
    return {"commit": commit, "result": result, "finished_at": "2026-01-01T00:00:00Z", "build_seconds": 1.5}


def test_status_store_keeps_bounded_history(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "status.json")
    for number in range(30):
        with store.edit() as status:
            status.finish_build(_build(str(number), "success"), None, [], 0.0)
    builds = store.read().builds
    assert len(builds) == 20 and builds[0]["commit"] == "29"


def test_status_counts_failures_in_a_row_and_a_success_ends_them(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "status.json")
    with store.edit() as status:
        status.start_build("a")
        status.record_failure("the remote is unreachable", remote=True)
        assert not status.finish_build(_build("a", "failed"), "nikola build failed", None, 100.0)
    status = store.read()
    assert status.consecutive_failures == 2 and status.last_error == {"at": "2026-01-01T00:00:00Z",
                                                                      "message": "nikola build failed"}
    assert status.building is None and status.last_attempted_commit == "a"
    assert status.counters is not None and status.counters["remote_check_failures"] == 1
    with store.edit() as status:
        assert status.finish_build(_build("b", "success"), None, [{"due": 200.0}], 100.0)  # a recovery
    status = store.read()
    assert (status.consecutive_failures, status.last_error, status.scheduled) == (0, None, [{"due": 200.0}])


def test_status_file_keeps_its_keys_and_types(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    Status().save(path)
    assert json.loads(path.read_text()) == {
        "remote": None, "branch": None, "last_check": None, "last_error": None, "consecutive_failures": 0,
        "last_attempted_commit": None, "builds": [], "scheduled": []}
    older = {"remote": "file:///srv/site.git", "consecutive_failures": 3, "retired_key": {"x": 1},
             "builds": [{"commit": "a"}, "damaged"], "rollbacks": [{"at": "t", "to": {}}], "last_check": 5}
    path.write_text(json.dumps(older))
    status = Status.load(path)
    assert status.consecutive_failures == 3 and status.builds == [{"commit": "a"}] and status.last_check is None
    status.save(path)
    written = json.loads(path.read_text())
    assert written["retired_key"] == {"x": 1} and written["rollbacks"] == older["rollbacks"]
    assert "building" not in written and "counters" not in written


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "5", "null", ""])
def test_a_damaged_status_file_reads_as_an_empty_status(tmp_path: Path, text: str) -> None:
    path = tmp_path / "status.json"
    path.write_text(text)
    assert Status.load(path) == Status() == Status.load(tmp_path / "missing.json")


@pytest.mark.parametrize("path", ["/../x", "/a/./b", "/a%2Fb", "/a%5cb", "/a\\b", "/a\x00b", "/a/../../x"])
def test_split_request_path_refuses_escapes(path: str) -> None:
    with pytest.raises(BadPath):
        split_request_path(path)


def test_split_request_path_accepts_utf8() -> None:
    assert split_request_path("/posts/caf\xc3\xa9/") == ["posts", "café"]
    assert split_request_path("//a//b/") == ["a", "b"]
    # Spellings of one path share its memo entry; the trailing slash of a directory stays (it is an answer
    # of its own: `/a/b` redirects).
    assert memo_path("//a//b/") == memo_path("/a/b//") == "/a/b/" and memo_path("/a/b") == "/a/b"


def test_only_ref_changes_of_the_local_remote_wake_the_watcher() -> None:
    from pipeline.publish.triggers import is_ref_change

    repo = "/srv/pequod/site.git"
    assert is_ref_change(f"{repo}/refs/heads/main", repo)
    assert is_ref_change(f"{repo}/packed-refs", repo)
    assert not is_ref_change(f"{repo}/refs/heads/main.lock", repo)
    assert not is_ref_change(f"{repo}/objects/ab/cdef", repo)
    assert not is_ref_change("/srv/pequod/other.git/refs/heads/main", repo)


def test_a_push_to_a_local_remote_wakes_the_watcher_at_once(site_repo, tmp_path: Path) -> None:
    """Real inotify, real git: a push wakes the watcher; the objects it writes alone do not."""
    import threading

    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    from pipeline.publish import triggers

    wake, seen = threading.Event(), set[str]()

    class Seen(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            seen.add(os.path.basename(str(event.src_path)))

    observer = triggers.start(wake, tmp_path / "wake", str(site_repo.bare))
    assert observer is not None
    sentinels: list[Path] = []
    try:
        subprocess.run(["git", "--git-dir", str(site_repo.bare), "hash-object", "-w", "--stdin"], input=b"x",
                       check=True, capture_output=True)
        # Proof the watcher has seen whatever that write caused: after it, a file that is no ref change
        # (`.lock`) in each watched directory, each reaching a second handler of that watch (events come
        # through one queue, in order, so the write's events reached the watcher's handler before).
        for number, emitter in enumerate(observer.emitters):
            observer.add_handler_for_watch(Seen(), emitter.watch)
            sentinels.append(Path(emitter.watch.path) / f"pequod-test-{number}.lock")
            sentinels[-1].write_text("")
        names = {path.name for path in sentinels}
        assert len(names) >= 3  # the wake file's directory, the remote, its refs
        wait_for(f"the watches to report {sorted(names)}", lambda: names <= seen, 10, interval=0.05)
        assert not wake.is_set()
        for path in sentinels:
            path.unlink()
        site_repo.add_post("woken", "Woken")
        site_repo.commit("A post")
        assert wake.wait(5.0)
    finally:
        observer.stop()
        observer.join(5)
