"""The site holder keeps a Nikola site loaded between builds only where that is exact (real Nikola, real git)."""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.build.warm_site import Unfingerprintable, configuration, fingerprint
from pipeline.publish.git_source import GitSource
from tests.helpers import REPO_ROOT, SiteRepo, python_env
from tests.test_incremental import build, builder_for, clean_tree, output_of, tree


# -- the configuration's fingerprint -----------------------------------------------------------------
def _namespace(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "conf.py", "exec"), namespace)  # noqa: S102 - test configurations
    return namespace


def test_equal_configurations_have_equal_fingerprints() -> None:
    source = ("import os\nBLOG_TITLE = 'Blog'\nTRANSLATIONS = {'en': ''}\nFILTERS = {'.html': [os.path.join]}\n"
              "def footer(lang):\n    return 'x' + lang\nX = {1, 2, 3}\nY = (1.5, None, b'z')\n")
    assert configuration(_namespace(source)) == configuration(_namespace(source))


@pytest.mark.parametrize("change", [
    "BLOG_TITLE = 'Other'",
    "def footer(lang):\n    return 'y' + lang",  # same name, other code: Nikola's own digest sees no change
    "def footer(lang, stamp=1):\n    return 'x' + lang",  # other defaults
    "TRANSLATIONS = {'en': '', 'de': './de'}",
    "WHEN = 2",
])
def test_a_changed_configuration_has_another_fingerprint(change: str) -> None:
    base = "BLOG_TITLE = 'Blog'\nTRANSLATIONS = {'en': ''}\ndef footer(lang):\n    return 'x' + lang\nWHEN = 1\n"
    assert configuration(_namespace(base)) != configuration(_namespace(base + change + "\n"))


def test_closures_and_partials_count_by_value() -> None:
    def make(value: str):
        return lambda: value

    assert fingerprint(make("a")) == fingerprint(make("a"))
    assert fingerprint(make("a")) != fingerprint(make("b"))
    assert fingerprint(functools.partial(int, base=2)) != fingerprint(functools.partial(int, base=8))
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"b": 2, "a": 1})  # order matters to Nikola
    assert fingerprint(datetime.UTC) == fingerprint(datetime.UTC)
    assert fingerprint(re.compile("a+")) == fingerprint(re.compile("a+")) != fingerprint(re.compile("a+", re.I))


def test_values_of_unknown_kinds_are_not_compared() -> None:
    class Anything:
        pass

    with pytest.raises(Unfingerprintable, match="Anything"):
        configuration({"X": [Anything()]})


def test_page_digests_are_nikolas_own(tmp_path: Path) -> None:
    """The shortcut for the up-to-date check gives exactly the text Nikola's own encoding gives, for every
    configuration of every task of the bundled site (so the digests doit keeps stay valid)."""
    script = r"""
import json, os, sys
from pipeline.build import runner
from nikola.utils import CustomEncoder
import nikola.utils
dn = runner.open_site(sys.argv[1])
site = dn.nikola
site.init_plugins()
shared = runner.SharedEncodings(site)
checked = with_context = 0
for task in dn.task_loader.load_tasks(None, []):
    for check in task.uptodate:
        config = getattr(check[0], "config", None)
        if isinstance(check[0], nikola.utils.config_changed) and isinstance(config, dict):
            assert shared.text(config) == json.dumps(config, cls=CustomEncoder, sort_keys=True), task.name
            checked += 1
            with_context += config.get("global") is site.GLOBAL_CONTEXT
print(json.dumps([checked, with_context]))
"""
    site = tmp_path / "site"
    subprocess.run(["cp", "-r", str(REPO_ROOT / "site_template"), str(site)], check=True)
    out = subprocess.run([sys.executable, "-c", script, str(site)], capture_output=True, text=True, timeout=300,
                         env=python_env(NIKOLA_MONO="1"), cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    checked, with_context = json.loads(out.stdout.strip().splitlines()[-1])
    assert checked > 20 and with_context > 5


# -- builds through the holder --------------------------------------------------------------------------
def _post(slug: str, day: int, text: str = "", when: str | None = None) -> str:
    date = when or f"2025-03-{day:02d} 10:00:00 UTC"
    return f".. title: Post {slug}\n.. slug: {slug}\n.. date: {date}\n.. tags: held\n\n{text or 'Words.'}\n"


@pytest.fixture
def held(site_repo: SiteRepo, tmp_path: Path):
    for day in range(1, 21):
        site_repo.write(f"posts/p{day:02d}.rst", _post(f"p{day:02d}", day))
    site_repo.commit("Twenty posts")
    source = GitSource(site_repo.url, "main", tmp_path / "held", timeout=60)
    builder = builder_for(source, 300)
    logs = iter(range(1, 100))

    def again() -> str:
        log = tmp_path / f"held-{next(logs)}.log"
        build(source, builder, log)
        return log.read_text()

    build(source, builder, tmp_path / "held-0.log")
    assert builder.last_site == "fresh"
    yield builder, again
    builder.worker.stop()


def test_a_change_outside_the_post_folders_loads_the_site_afresh(held, site_repo: SiteRepo, tmp_path: Path) -> None:
    builder, again = held
    site_repo.write("posts/p05.rst", _post("p05", 5, "Edited."))
    site_repo.commit("Edit a post")
    log = again()
    reused = re.search(r"warm Nikola site: (\d+) of (\d+) posts reused", log)
    assert builder.last_site == "warm" and reused and int(reused.group(1)) == int(reused.group(2)) - 1, log
    site_repo.write("files/notes.txt", "a new file")
    site_repo.write("posts/p06.rst", _post("p06", 6, "Edited too."))
    site_repo.commit("A file outside the posts")
    log = again()
    assert builder.last_site == "fresh"
    assert "loaded afresh: files/notes.txt changed (outside the post folders)" in log
    assert tree(output_of(builder)) == clean_tree(site_repo, tmp_path)


def test_a_configuration_that_reads_the_commit_is_loaded_for_every_build(held, site_repo: SiteRepo,
                                                                         tmp_path: Path) -> None:
    builder, again = held
    conf = site_repo.work / "conf.py"
    conf.write_text(conf.read_text() + '\nimport os\nCONTENT_FOOTER = "built-from:" + os.environ["SITE_COMMIT"]\n')
    site_repo.commit("The footer names the commit")
    again()  # conf.py changed: a clean build
    site_repo.write("posts/p07.rst", _post("p07", 7, "Edited."))
    commit = site_repo.commit("Edit a post")
    log = again()
    assert builder.last_site == "fresh" and "conf.py gives another configuration now" in log, log
    # An unchanged post's page names the new commit: nothing was kept from the build before.
    assert f"built-from:{commit}" in (output_of(builder) / "posts" / "p15" / "index.html").read_text()


def test_a_scheduled_post_appears_once_its_time_has_come(held, site_repo: SiteRepo, tmp_path: Path) -> None:
    """Whether a post is published depends on the time of the build: a kept Post must not carry the last
    build's answer."""
    builder, again = held
    for ahead in (3, 6, 12):  # seconds: the build must end before the post is due (a slow host gets longer)
        due = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=ahead)
        site_repo.write("posts/later.rst", _post("later", 1, "Scheduled.", due.strftime("%Y-%m-%d %H:%M:%S UTC")))
        site_repo.commit(f"A post for {ahead} s later")
        again()
        if datetime.datetime.now(datetime.UTC) < due:
            break
    index = output_of(builder) / "index.html"
    feed = output_of(builder) / "rss.xml"
    assert "posts/later/" not in index.read_text() and "posts/later/" not in feed.read_text()
    time.sleep(max(0.0, (due - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.5)
    site_repo.write("posts/p08.rst", _post("p08", 8, "Edited."))
    site_repo.commit("Edit another post")
    log = again()
    assert builder.last_site == "warm", log
    assert "posts/later/" in index.read_text() and "posts/later/" in feed.read_text()
    assert tree(output_of(builder)) == clean_tree(site_repo, tmp_path)


def test_what_a_configuration_starts_is_ended_and_the_holder_stays_confined(held, site_repo: SiteRepo) -> None:
    builder, again = held
    conf = site_repo.work / "conf.py"
    conf.write_text(conf.read_text() + (
        "\nimport os, subprocess\n"
        "_sleeper = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "os.makedirs('cache', exist_ok=True)\n"
        "with open('cache/sleepers.txt', 'a') as _f:\n    _f.write(f'{_sleeper.pid}\\n')\n"
        "try:\n    open('/etc/hostname-pequod-test', 'w')\n    ESCAPED = True\n"
        "except OSError:\n    ESCAPED = False\n"
        "BLOG_TITLE = 'escaped' if ESCAPED else 'confined'\n"
        "del _sleeper, _f\n"))
    site_repo.commit("conf.py starts a process and tries to write outside the site")
    again()
    assert not os.path.exists("/etc/hostname-pequod-test")
    assert "confined" in (output_of(builder) / "index.html").read_text()
    sleepers = [int(pid) for pid in (builder.site_dir / "cache" / "sleepers.txt").read_text().split()]
    site_repo.write("posts/p09.rst", _post("p09", 9, "Edited."))
    site_repo.commit("Edit a post")
    log = again()  # conf.py runs again (the holder compares its configuration): it starts its process again
    assert builder.last_site == "warm", log
    # (A file in cache/ that no task of a build made is removed before the next: it holds the second pid only.)
    sleepers += [int(pid) for pid in (builder.site_dir / "cache" / "sleepers.txt").read_text().split()]
    assert len(sleepers) == 2  # conf.py loaded for the clean build, then run again for the comparison
    assert [pid for pid in sleepers if _running(pid)] == []


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def test_the_build_log_says_what_was_kept(held, site_repo: SiteRepo) -> None:
    builder, again = held
    site_repo.write("posts/p10.rst", _post("p10", 10, "Edited."))
    site_repo.commit("Edit a post")
    log = again()
    reused = re.search(r"warm Nikola site: (\d+) of (\d+) posts reused", log)
    left_out = re.search(r"(\d+) unchanged post\(s\) left out", log)
    assert reused and left_out, log
    # The edited post: its neighbours' pages show it as before (its text changed, not its title or date)
    assert int(left_out.group(1)) == int(reused.group(2)) - 1


def test_a_build_changes_no_mode_or_time_and_signals_nothing_outside(held, site_repo: SiteRepo,
                                                                     tmp_path: Path) -> None:
    """What Landlock does not cover (modes, owners, times, signals, other processes' limits) is refused by the
    seccomp filter and Landlock's signal scoping; the build carries on."""
    builder, again = held
    victim = tmp_path / "publisher-owned.txt"
    victim.write_text("mine\n")
    victim.chmod(0o640)
    before = victim.stat()
    conf = site_repo.work / "conf.py"
    conf.write_text(conf.read_text() + (
        "\nimport os, resource, signal\n"
        "def _try(action):\n    try:\n        action()\n        return 'done'\n"
        "    except OSError as exc:\n        return type(exc).__name__\n"
        f"_victim = {str(victim)!r}\n"
        "_results = [_try(lambda: os.chmod(_victim, 0)), _try(lambda: os.utime(_victim, (0, 0))),\n"
        "            _try(lambda: os.chown(_victim, 1, 1)),\n"
        "            _try(lambda: os.kill(os.getppid(), signal.SIGCONT)),\n"
        "            _try(lambda: resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (1, 1)))]\n"
        "BLOG_TITLE = 'RESULTS ' + ' '.join(_results)\n"))
    site_repo.commit("conf.py changes modes and signals its parent")
    again()
    title = (output_of(builder) / "index.html").read_text()
    # chmod, utime and chown "succeed" and change nothing; the signal and the limit are refused.
    assert "RESULTS done done done PermissionError PermissionError" in title
    after = victim.stat()
    assert (after.st_mode, after.st_mtime_ns, after.st_uid) == (before.st_mode, before.st_mtime_ns, before.st_uid)


def test_a_thread_left_in_the_holder_costs_it_the_next_build(held, site_repo: SiteRepo) -> None:
    builder, again = held
    conf = site_repo.work / "conf.py"
    conf.write_text(conf.read_text() + (
        "\nimport threading, time\n"
        "threading.Thread(target=lambda: time.sleep(600), daemon=True).start()\n"))
    site_repo.commit("conf.py leaves a thread running")
    log = again()
    assert "left 1 thread(s) running in the site holder; the next build loads the site afresh" in log
    site_repo.write("posts/p11.rst", _post("p11", 11, "Edited."))
    site_repo.commit("Edit a post")
    again()
    assert builder.last_site == "fresh"
