"""Hostile commits: code in a pushed commit (conf.py here; a plugin or theme runs the same way) attacks the
instance that builds it, for real, through one agent, its frontend and a real instance.

For every attack: readers keep getting the last good release, nothing from outside the build's own output is
ever served, the status names what happened, and the next good push is live within seconds. Each test prints
its figures (requests failed during the attack, seconds until the next good push was live).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.attacks import Readers
from tests.helpers import wait_for
from tests.test_site_stays_up import (
    LANDLOCK_FLOOR,
    OWNER,
    POST,
    SECRET,
    Site,
    processes,
    restores_site,  # noqa: F401 - a fixture: every attack is undone
    running_site,
)

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("restores_site")]  # root, Docker


@pytest.fixture(scope="module", params=[LANDLOCK_FLOOR, None], ids=["landlock-abi-2", "landlock-uncapped"])
def site(request, tmp_path_factory, docker_client, app_image: str) -> Iterator[Site]:
    """The module's agent: every attack runs at the sandbox of Debian 12's kernel, then at this kernel's."""
    with running_site(tmp_path_factory, docker_client, app_image, request.param) as running:
        yield running
GIT_CONFIG_MARKERS = ("repositoryformatversion", "[core]", "ref: refs/")
OUTSIDE_PATHS = ("/config", "/HEAD", "/env.txt", "/status.json", "/posts/welcome/index.html")


@pytest.fixture
def readers(site: Site) -> Iterator[Readers]:
    """Readers of the welcome post for the length of one attack."""
    with Readers(site.base + POST, "Welcome", threads=2, pause=0.1) as running:
        yield running


def attack(site: Site, conf_tail: str, message: str) -> str:
    """Push the bundled site with `conf_tail` appended to conf.py; returns the commit."""
    conf = site.repo.work / "conf.py"
    conf.write_text(conf.read_text() + "\n" + conf_tail)
    return site.repo.commit(message)


def recover(site: Site, readers: Readers, name: str) -> None:
    """The revert is live, and so is the next good push, built; the figures of the attack are printed."""
    started = time.monotonic()
    site.restore()
    revert = time.monotonic() - started
    built = good_pushes(site)
    readers.__exit__()
    only_the_worker_runs(site)  # nothing of the attack's build (or of the good ones) is left running
    print(f"\nFIGURES {name} ({site.landlock}): {len(readers.failed)} of "
          f"{len(readers.failed) + len(readers.latencies)} reader requests failed; the revert live after "
          f"{revert:.1f} s, the next good push after {built:.1f} s; no process of a build left")
    assert not readers.failed, readers.failed[:5]
    assert revert < 30 and built < 30


def good_pushes(site: Site) -> float:
    """Two ordinary pushes after an attack (a post added, then removed again), both built and live: the build path,
    not a kept release of the same tree. Returns the seconds until the first was live."""
    started = time.monotonic()
    post = site.repo.work / "posts" / "after-the-attack.rst"
    # (its text new each time: a tree seen before would be published from its kept release, without a build)
    commit = site.repo.add_post("after-the-attack", "After the attack", body=f"Pushed at {time.time()}.")
    site.wait_live(commit)
    seconds = time.monotonic() - started
    assert site.get("/posts/after-the-attack/").status_code == 200
    # (the record is written just after the swap: `current` follows the live link at once)
    assert site.wait_result(commit)["mode"] in ("incremental", "clean")
    post.unlink()
    site.wait_live(site.repo.commit("Remove the post again"))
    return seconds


def nothing_from_outside(site: Site) -> None:
    for path in OUTSIDE_PATHS:
        body = site.get(path).text
        assert SECRET not in body and "SITE_REPO" not in body
        assert not any(marker in body for marker in GIT_CONFIG_MARKERS), (path, body[:200])


def modes(site: Site) -> str:
    return site.container().exec_run(
        ["sh", "-c", "stat -c '%a %n' /workdir /workdir/status.json /workdir/releases /workdir/source.git "
                     "/workdir/build /workdir/build/export /workdir/.watcher.lock"]).output.decode()


CHMOD = '''
import os
for _path in ("/workdir", "/workdir/status.json", "/workdir/releases", "/workdir/source.git", "/workdir/build",
              "/workdir/build/export", "/workdir/.watcher.lock", "/workdir/build/export/posts", "output"):
    try:
        os.chmod(_path, 0)
        os.utime(_path, (0, 0))
    except OSError:
        pass
'''


def test_chmod_of_the_data_directory_and_its_parts_changes_nothing(site: Site, readers: Readers) -> None:
    before = modes(site)
    commit = attack(site, CHMOD, "conf.py takes every permission away")
    result = site.wait_result(commit)
    assert result["result"] == "success"  # the calls "succeed" and change nothing
    assert modes(site) == before
    recover(site, readers, "chmod")
    # An instance started now (after a crash, an upgrade) still starts and publishes.
    site.container().kill()
    site.run.wait_healthy(timeout=120)
    site.restore()


OUTPUT_LINK = '''
import os, threading, time
OUTPUT_FOLDER = "public"
def _swap():
    # Waits for the build to write its output, then makes the output folder a link to the repository.
    while not os.path.isdir("public/posts"):
        time.sleep(0.01)
    time.sleep(0.5)
    os.rename("public", "public.real")
    os.symlink("/workdir/source.git", "public")
threading.Thread(target=_swap, daemon=True).start()
'''


def test_a_symlinked_output_folder_publishes_nothing_of_the_repository(site: Site, readers: Readers) -> None:
    live = site.live_release()
    commit = attack(site, OUTPUT_LINK, "The output folder becomes a link to the repository")
    result = site.wait_result(commit)
    nothing_from_outside(site)
    if result["result"] == "failed":  # swapped before the publisher looked: refused, named
        assert "public" in result["error"], result["error"]
        assert site.live_release() == live
    recover(site, readers, "symlinked output folder")
    nothing_from_outside(site)


SWAPPER = '''
import os, threading, time
def _swap():
    # Left running in the long-lived process that loaded this file: swaps a page for a link to secrets.
    target = "output/rss.xml"
    while True:
        try:
            os.rename(target, target + ".real")
            os.symlink("/proc/self/environ", target)
            time.sleep(0.001)
            os.unlink(target)
            os.rename(target + ".real", target)
        except OSError:
            time.sleep(0.005)
threading.Thread(target=_swap, daemon=True).start()
'''


def test_a_file_swapped_for_a_symlink_during_staging_is_never_followed(site: Site, readers: Readers) -> None:
    commit = attack(site, SWAPPER, "A thread swaps a page for a link to the environment")
    result = site.wait_result(commit)
    assert result["result"] in ("success", "failed")
    nothing_from_outside(site)
    for path in ("/rss.xml", "/rss.xml.real"):
        assert "PATH=" not in site.get(path).text and "HOME=" not in site.get(path).text
    recover(site, readers, "file swapped during staging")


FILL_HOME = '''
import os
_n = 0
try:
    while True:  # until the build's volume is full
        with open(os.path.join(os.environ["HOME"], f"fill-{_n}.bin"), "wb") as _f:
            _f.write(os.urandom(8 << 20))
        _n += 1
except OSError:
    pass
'''


def test_filling_the_home_directory_fills_only_the_builds_volume(site: Site, readers: Readers) -> None:
    commit = attack(site, FILL_HOME, "conf.py fills $HOME")
    result = site.wait_result(commit)
    assert result["commit"] == commit  # recorded, success or not: the status could be written
    free = site.container().exec_run(["df", "-m", "/workdir"]).output.decode().splitlines()[1].split()[3]
    assert int(free) > 20, f"the releases' volume has {free} MB free"
    recover(site, readers, "filling $HOME")
    used = site.container().exec_run(["df", "-m", "/builder"]).output.decode().splitlines()[1].split()[2]
    assert int(used) < 30, f"{used} MB still used on the builder's volume"


def test_a_deep_tree_is_refused_with_its_path(site: Site, readers: Readers) -> None:
    live = site.live_release()
    instance = site.instance()["instance_name"]
    deep = site.repo.work / "files"
    deep.mkdir(exist_ok=True)
    for _level in range(1100):  # one at a time: mkdir(parents=True) recurses
        deep = deep / "d"
        deep.mkdir()
    (deep / "x.txt").write_text("deep\n")
    commit = site.repo.commit("A directory 1,100 levels deep")
    result = site.wait_result(commit)
    assert result["result"] == "failed" and "1101 directories deep" in result["error"], result["error"]
    assert site.live_release() == live and site.instance()["instance_name"] == instance
    recover(site, readers, "deep tree")


NAMES = '''
import os
for _name in ("new\\nline.txt", "x" * 250 + ".txt"):
    os.makedirs("files/odd", exist_ok=True)
    with open(os.path.join("files/odd", _name), "w") as _f:
        _f.write("odd name\\n")
'''


def test_odd_file_names_and_many_files_publish(site: Site, readers: Readers) -> None:
    many = site.repo.work / "files" / "many"
    for bucket in range(20):
        (many / str(bucket)).mkdir(parents=True)
        for number in range(250):
            (many / str(bucket) / f"{number}.txt").write_text(f"{bucket}/{number}\n")
    commit = attack(site, NAMES, "5,000 small files and odd names")
    result = site.wait_result(commit, timeout=180)
    assert result["result"] == "success", (result["error"], result["log_tail"][-1500:])
    assert site.get("/many/19/249.txt").text == "19/249\n"
    assert site.get("/odd/" + "x" * 250 + ".txt").text == "odd name\n"
    assert site.get("/odd/new%0Aline.txt").text == "odd name\n"
    # A name that is not UTF-8 is more than Nikola can take: a failed build that says why, the site stays.
    live = site.live_release()
    (site.repo.work / "files").mkdir(exist_ok=True)
    with open(bytes(site.repo.work / "files") + b"/bad-\xff-utf8.txt", "w") as handle:
        handle.write("bad name\n")
    commit = site.repo.commit("A file name that is not UTF-8")
    result = site.wait_result(commit)
    assert result["result"] == "failed" and "UnicodeEncodeError" in result["log_tail"], result
    assert site.live_release() == live
    recover(site, readers, "odd names and 5,000 files")


SIGNALS = '''
import os, signal
_sent = 0
for _pid in [-1, *range(1, 1 << 15)]:  # every process it can signal at once, then each one
    if _pid == os.getpid():
        continue
    for _sig in (signal.SIGSTOP, signal.SIGKILL):
        try:
            os.kill(_pid, _sig)
            _sent += 1
        except OSError:
            pass
CONTENT_FOOTER = f"SIGNALS-DELIVERED {_sent}"
'''


def test_signals_to_every_process_reach_none_outside_the_build(site: Site, readers: Readers) -> None:
    instance = site.instance()["instance_name"]
    commit = attack(site, SIGNALS, "conf.py stops and kills every process it can")
    result = site.wait_result(commit)
    assert result["result"] in ("success", "failed")
    assert site.instance()["instance_name"] == instance
    statuses = [p for p in processes(site.container()) if "serve.py" in p or "pipeline watch" in p]
    assert len(statuses) >= 2, statuses
    recover(site, readers, "signals to every process")


PLANT = '''
import os, threading, time
def _plant():
    # Left running: edits the work tree for the builds that follow (a planted post, a changed one).
    while True:
        try:
            with open("posts/planted.md", "w") as _f:
                _f.write(".. title: Planted\\n.. slug: planted\\n.. date: 2020-01-01 00:00:00 UTC\\n\\nPLANTED\\n")
            with open("posts/welcome.md", "a") as _f:
                _f.write("\\nPLANTED-EDIT\\n")
        except OSError:
            pass
        time.sleep(0.05)
threading.Thread(target=_plant, daemon=True).start()
'''


def test_site_code_editing_the_work_tree_does_not_reach_the_next_build(site: Site, readers: Readers) -> None:
    planted = attack(site, PLANT, "conf.py plants a post for the next build")
    site.wait_result(planted)
    # The revert: its build sees exactly its own files.
    started = time.monotonic()
    restored = site.restore()
    assert site.get("/posts/planted/").status_code == 404
    assert "PLANTED" not in site.get(POST).text
    assert site.status()["current"]["commit"] == restored
    readers.__exit__()
    print(f"\nFIGURES work tree edits: {len(readers.failed)} reader requests failed; revert live after "
          f"{time.monotonic() - started:.1f} s")
    assert not readers.failed


# -- what a build leaves never stops the next one (each good push is built in a work tree made afresh) ------------
BEYOND_PATH_MAX = '''
import os
_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
try:
    os.mkdir("junk", dir_fd=_fd)
    for _name in ["junk"] + ["x" * 250] * 20:  # 5 KB of path: more than PATH_MAX
        if _name != "junk":
            os.mkdir(_name, dir_fd=_fd)
        _next = os.open(_name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=_fd)
        os.close(_fd)
        _fd = _next
    os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=_fd))
except FileExistsError:
    pass
finally:
    os.close(_fd)
'''


def test_leftovers_beyond_path_max_never_stop_the_next_push(site: Site, readers: Readers) -> None:
    commit = attack(site, BEYOND_PATH_MAX, "conf.py leaves directories nested beyond PATH_MAX")
    assert site.wait_result(commit)["result"] == "success"
    recover(site, readers, "leftovers beyond PATH_MAX")


DANGLING_OUTPUT = '''
import os
OUTPUT_FOLDER = "public"
if not os.path.lexists("output"):
    os.symlink("/nowhere/at/all", "output")
'''


def test_a_dangling_output_link_never_stops_the_next_push(site: Site, readers: Readers) -> None:
    commit = attack(site, DANGLING_OUTPUT, "conf.py publishes from public/ and leaves a dangling output link")
    assert site.wait_result(commit)["result"] == "success"
    recover(site, readers, "dangling output link")


TAMPERING_POST = """.. title: Tampering
.. slug: tampering
.. date: 2026-12-01 10:00:00 UTC

Its code appends to another post's page at build time.

{{% template %}}<%
    try:
        with open('output/posts/welcome/index.html', 'a') as _page:
            _page.write('<!-- TAMPERED -->')
    except OSError:
        pass  # a clean build may render this post first
%>{{% /template %}}
"""

DIGESTS = r'''
import hashlib, json, os, re, sys
root = "/workdir/releases/" + sys.argv[1]
varying = re.compile(rb"<lastBuildDate>[^<]*</lastBuildDate>|rest_code_[0-9a-f]{32}")
digests = {}
for folder, _dirs, files in os.walk(root):
    for name in files:
        if not name.endswith(".gz"):
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(varying.sub(b"", handle.read())).hexdigest()
print(json.dumps(digests))
'''


def release_digests(site: Site, release: str) -> dict[str, str]:
    """Every file of a release (but the precompressed copies), digested without what no two builds share."""
    result = site.container().exec_run(["python3", "-c", DIGESTS, release])
    assert result.exit_code == 0, result.output[-500:]
    return json.loads(result.output)


def tampered(site: Site, expected: bool) -> bool:
    """Whether the welcome post carries the edit, once the frontend's cache (a page may stay up to a second after
    a swap) has caught up with the live release."""
    return wait_for(f"the welcome post {'with' if expected else 'without'} the edit",
                    lambda: ("TAMPERED" in site.get(POST).text) == expected, 10, interval=0.2) and expected


def test_content_code_editing_other_pages_is_undone_when_the_code_goes(site: Site, readers: Readers) -> None:
    tampering = site.repo.work / "posts" / "tampering.rst"
    tampering.write_text(TAMPERING_POST)
    commit = site.repo.commit("A post whose code edits another post's page")
    site.wait_live(commit)
    assert tampered(site, True)  # the attack works: its own release carries it
    # The revert: its tree is that of a kept release, which is published again, without a build.
    started = time.monotonic()
    tampering.unlink()
    revert = site.repo.commit("Revert the tampering post")
    site.wait_live(revert)
    seconds = time.monotonic() - started
    # (the record is written just after the swap and the prune: `current` follows the live link at once)
    assert site.wait_result(revert)["mode"] == "kept"
    assert not tampered(site, False)
    # Once more, and then a tree no release had: an incremental build makes the edited page again.
    tampering.write_text(TAMPERING_POST)
    site.wait_live(site.repo.commit("The tampering post again"))
    assert tampered(site, True)
    tampering.unlink()
    incremental = site.repo.add_post("after-the-tampering", "After the tampering")
    site.wait_live(incremental)
    assert site.wait_result(incremental)["mode"] == "incremental"
    assert not tampered(site, False)
    built = site.status()["current"]["release"]
    # ... byte for byte what a clean build of the same commit gives ("clean build and publish", the owner's).
    assert requests.post(site.base + "/_site/rebuild", timeout=10).status_code == 401
    answer = requests.post(site.base + "/_site/rebuild", headers=OWNER, timeout=10)
    assert answer.status_code == 202, answer.text
    wait_for("the clean build live", lambda: site.status()["current"]["release"] != built, 90, interval=0.5)
    clean = site.status()["current"]["release"]
    record = wait_for("the clean build's record", lambda: next(
        (build for build in site.status()["builds"][:1] if build["release"] == clean), None), 30, interval=0.2)
    assert record["mode"] == "clean" and record["commit"] == incremental
    assert release_digests(site, built) == release_digests(site, clean)
    (site.repo.work / "posts" / "after-the-tampering.rst").unlink()
    site.repo.commit("Remove the post again")
    readers.__exit__()
    print(f"\nFIGURES content code editing other pages: {len(readers.failed)} reader requests failed; the revert "
          f"live after {seconds:.1f} s (from the kept release)")
    assert not readers.failed, readers.failed[:5]


FIFTY_MILLION_LINES = '''
import sys
for _chunk in range(50):
    sys.stdout.write("x\\n" * 1_000_000)
raise SystemExit("the end of fifty million lines")
'''


def test_a_build_printing_fifty_million_lines_is_read_from_its_end(site: Site, readers: Readers) -> None:
    instance = site.instance()["instance_name"]
    commit = attack(site, FIFTY_MILLION_LINES, "conf.py prints fifty million lines and fails")
    result = site.wait_result(commit, timeout=120)
    assert result["result"] == "failed"
    assert len(result["log_tail"]) < 20_000 and len(result["error"]) < 700
    assert site.instance()["instance_name"] == instance  # not replaced: the publisher read only the log's end
    recover(site, readers, "fifty million lines")


# -- nothing of a build outlives it: the builder is a container of its own ----------------------------------------
def builder_processes(site: Site) -> list[str]:
    """What runs in the site's builder (docker top): its worker, and the site holder it keeps between builds; or
    its door, waiting for the publisher (pipeline.build.door), once a worker ended."""
    return processes(site.builder())


def ours(args: str) -> bool:
    return "pipeline.build.worker" in args or "pipeline.build.door" in args


def only_the_worker_runs(site: Site) -> None:
    def settled() -> list[str] | None:
        found = builder_processes(site)
        return found if found and all(ours(args) for args in found) else None
    wait_for("nothing but the build worker in the builder", settled, 30, interval=0.5)


REFORKER = '''
import os, time
if os.fork() == 0:
    os.setsid()
    while True:  # a new process every millisecond, its parent gone: a walk of the process tree never sees it whole
        try:
            if os.fork():
                os._exit(0)
        except OSError:
            pass
        time.sleep(0.001)
'''


def test_a_process_that_keeps_re_forking_ends_with_its_build(site: Site, readers: Readers) -> None:
    instance = site.instance()["instance_name"]
    commit = attack(site, REFORKER, "conf.py leaves a process that keeps re-forking")
    site.wait_result(commit)
    only_the_worker_runs(site)
    assert all(ours(args) for args in builder_processes(site))
    assert site.instance()["instance_name"] == instance
    recover(site, readers, "re-forking process")
    only_the_worker_runs(site)


def test_the_build_runs_as_another_user_without_network_secrets_or_the_publishers_files(site: Site) -> None:
    builder = site.builder()
    config, host = builder.attrs["Config"], builder.attrs["HostConfig"]
    instance = site.container()
    assert config["User"] != instance.attrs["Config"]["User"] and not config["User"].startswith(("0", "root"))
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert host["PidMode"] == "" and host["RestartPolicy"]["Name"] == "always"
    assert config["Healthcheck"]["Test"] == ["NONE"]  # no probe of the instance's runs among the builds
    assert not any(SECRET in item or item.startswith(("SITE_REPO", "WEBHOOK")) for item in config["Env"])
    mounts = {m["Destination"]: m["RW"] for m in builder.attrs["Mounts"]}
    # The commit's files (the publisher's volume, read-only) and its own volume: no release, repository or status.
    assert mounts == {"/workdir/build": False, "/builder": True}
