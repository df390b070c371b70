"""The publisher trusts nothing a build leaves: staging by descriptor, never following a link, taking regular
files and directories only, safe against a process that swaps files while it copies; trees of any depth."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from pipeline import releases, tree
from pipeline.build import work_tree
from pipeline.errors import BuildError
from pipeline.publish.builds import NikolaBuilder

META = releases.Release("r1", "c1", "t", 1.0)


def _output(root: Path) -> Path:
    (root / "posts" / "a").mkdir(parents=True)
    (root / "index.html").write_text("<p>home</p>")
    (root / "posts" / "a" / "index.html").write_text("<p>a</p>")
    return root


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: p.symlink_to("/etc/passwd"), "a symbolic link"),
    (lambda p: p.symlink_to("index.html"), "a symbolic link"),  # even one inside the output
    (lambda p: os.mkfifo(p), "a FIFO"),
])
def test_anything_but_files_and_directories_fails_staging_with_its_path(tmp_path: Path, make, kind: str) -> None:
    output = _output(tmp_path / "output")
    make(output / "posts" / "odd")
    with pytest.raises(tree.TreeError, match=f"posts/odd is {kind}"):
        releases.stage(output, tmp_path / "releases", META, None)
    assert os.listdir(tmp_path / "releases") == []  # nothing half-staged is left


def test_the_output_folder_must_be_a_real_directory_inside_the_site(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "real").mkdir(parents=True)
    (site / "public").symlink_to(tmp_path)
    builder = NikolaBuilder(site, 10)
    os.close(builder.open_output("real"))
    for folder, message in (("public", "public is not a directory of the site (a symbolic link)"),
                            ("../x", "must be a folder inside the site"), ("/etc", "must be a folder inside"),
                            (".", "must be a folder inside"), ("missing", "missing is not a directory")):
        with pytest.raises(BuildError, match=message.replace("(", r"\(").replace(")", r"\)")):
            builder.open_output(folder)


def test_modes_are_the_publishers_and_odd_names_are_kept(tmp_path: Path) -> None:
    output = _output(tmp_path / "output")
    odd = [b"new\nline.html", b"bad-\xff-utf8.txt", b"x" * 255]
    for name in odd:
        with open(bytes(output) + b"/" + name, "wb") as handle:
            handle.write(b"odd")
    (output / "index.html").chmod(0o4777)
    release = releases.stage(output, tmp_path / "releases", META, None)
    assert stat.S_IMODE((release / "index.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((release / "posts").stat().st_mode) == 0o755
    for name in odd:
        assert Path(os.fsdecode(bytes(release) + b"/" + name)).read_bytes() == b"odd"


def test_a_release_nested_too_deep_is_refused(tmp_path: Path) -> None:
    output = _output(tmp_path / "output")
    deep = output
    for _level in range(releases.MAX_DEPTH + 2):
        deep = deep / "d"
        deep.mkdir()
    with pytest.raises(tree.TreeError, match="nested more than 64 directories deep"):
        releases.stage(output, tmp_path / "releases", META, None)


def test_a_process_swapping_files_during_staging_never_adds_a_file_from_elsewhere(tmp_path: Path) -> None:
    """A thread left by site code swaps a page for a link to a secret (and for a FIFO) while the release is
    staged: staging fails naming it, or publishes the build's own files; never the secret."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-CONTENT")
    output = _output(tmp_path / "output")
    pages = [output / "posts" / f"p{n}.html" for n in range(200)]
    for page in pages:
        page.write_text("<p>own</p>" * 100)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for page in pages[::7]:
                try:
                    os.rename(page, f"{page}.real")
                    page.symlink_to(secret)
                    os.unlink(page)
                    os.mkfifo(page)
                    os.unlink(page)
                    os.rename(f"{page}.real", page)
                except OSError:
                    pass

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = []
    try:
        for attempt in range(30):
            meta = releases.Release(f"r{attempt}", "c", "t", 1.0)
            try:
                release = releases.stage(output, tmp_path / "releases", meta, None)
            except tree.TreeError as exc:
                assert "posts/p" in str(exc)
                outcomes.append("refused")
                continue
            outcomes.append("staged")
            for current, _dirs, files in os.walk(release):
                for name in files:
                    path = Path(current) / name
                    assert not path.is_symlink() and path.is_file()
                    assert b"SECRET" not in path.read_bytes()
    finally:
        stop.set()
        swapper.join()
    assert "refused" in outcomes, outcomes  # the swaps were really seen


def test_trees_of_any_depth_are_removed_with_few_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "tmp"
    deep = top
    for _level in range(3000):  # deeper than Python's recursion limit and than PATH_MAX allows by name
        deep.mkdir()
        monkeypatch.chdir(deep)  # the tests after this one start in the directory they started in
        deep = Path("d")
    Path("file").write_text("x")
    monkeypatch.chdir(tmp_path)
    locked = top / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0)
    before = len(os.listdir("/proc/self/fd"))  # what earlier tests of this process left open is not ours
    tree.empty_dir(top)
    assert os.listdir(top) == []
    assert len(os.listdir("/proc/self/fd")) <= before  # none of the walk's descriptors left open


def test_the_publisher_repairs_the_modes_of_what_it_owns(tmp_path: Path) -> None:
    """Whatever took the publisher's rights away (a build cannot), start and every build give them back."""
    from pipeline.layout import Layout

    layout = Layout(tmp_path / "data")
    for directory in (layout.releases / "r1", layout.git_dir, layout.export):
        directory.mkdir(parents=True)
    layout.status.write_text("{}")
    for path in (layout.releases / "r1", layout.releases, layout.status, layout.git_dir, layout.root):
        path.chmod(0)
    repaired = layout.repair()
    assert len(repaired) == 5, repaired
    assert stat.S_IMODE(layout.root.stat().st_mode) & 0o755 == 0o755
    assert stat.S_IMODE((layout.releases / "r1").stat().st_mode) == 0o755
    assert stat.S_IMODE(layout.status.stat().st_mode) == 0o644
    assert layout.repair() == []


def _nest_beyond_path_max(root: Path) -> None:
    """Twenty nested directories of 250-character names (5 KB of path), made one level at a time by descriptor."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _level in range(20):
            os.mkdir("x" * 250, dir_fd=fd)
            child = os.open("x" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _folders_before_the_build(site: Path) -> None:
    """What the worker keeps before a build's code runs: the inode of each directory of Nikola's state."""
    work_tree._remember_folders(site, {p.relative_to(site).as_posix(): p.lstat().st_ino
                                       for name in work_tree.STATE_DIRS if (site / name).is_dir()
                                       for p in (site / name, *(site / name).rglob("*")) if p.is_dir()})


def _leftovers(site: Path) -> None:
    """What a build's code can leave in its work tree."""
    (site / "junk").mkdir()
    _nest_beyond_path_max(site / "junk")
    os.mkfifo(site / "fifo")
    (site / "locked" / "inner").mkdir(parents=True)
    (site / "locked" / "inner" / "x.txt").write_text("x")
    (site / "locked").chmod(0)
    (site / "posts").mkdir()
    (site / "posts" / "planted.rst").write_text("planted")


def test_prepare_leaves_only_nikolas_state_and_makes_again_what_no_task_of_the_last_build_made(
        tmp_path: Path) -> None:
    site = tmp_path / "builder" / "source"
    _output(site / "output")  # older than the last build: kept
    (site / "cache").mkdir()
    (site / ".doit.db").write_text("db")
    _folders_before_the_build(site)
    time.sleep(0.05)
    started = time.time_ns()
    time.sleep(0.05)
    (site / "output" / "made.html").write_text("made by a task")
    (site / "output" / "posts" / "a" / "index.html").write_text("<p>a</p><!-- edited by code of the site -->")
    (site / "cache" / "fragment.html").write_text("made by a task")
    (site / work_tree.WRITTEN_REPORT).write_text("output/made.html\ncache/fragment.html\n")
    _leftovers(site)
    finished = time.time_ns()

    assert work_tree.prepare(site, tmp_path / "tmp", None, started + work_tree.CTIME_SLACK_NS, finished) is None
    assert sorted(os.listdir(site)) == [".doit.db", "cache", "output"]
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()) == [
        ".doit.db", "cache/fragment.html", "output/index.html", "output/made.html"]  # the edited page goes


@pytest.mark.parametrize(("damage", "why"), [
    (lambda site: (tree.remove_tree(site / "output"), (site / "output").symlink_to("nowhere")),
     "output is not a real directory"),
    (lambda site: os.mkfifo(site / "cache" / "pipe"), "cache/pipe is a FIFO"),
    (lambda site: (site / "output" / "late.html").write_text("written after the build"), "changed after the build"),
    (lambda site: (site / work_tree.WRITTEN_REPORT).unlink(), "report of what it wrote cannot be read"),
    (lambda site: work_tree._folders_path(site).unlink(), "folders of the last build's state are not known"),
])
def test_prepare_drops_a_state_in_doubt_and_the_build_is_clean(tmp_path: Path, damage, why: str) -> None:
    site = tmp_path / "builder" / "source"
    _output(site / "output")
    (site / "cache").mkdir()
    (site / work_tree.WRITTEN_REPORT).write_text("")
    _folders_before_the_build(site)
    started, finished = time.time_ns() - 10**9, time.time_ns()
    time.sleep(0.05)
    damage(site)
    _leftovers(site)
    reason = work_tree.prepare(site, tmp_path / "tmp", None, started, finished)
    assert reason is not None and why in reason, reason
    assert os.listdir(site) == []  # a clean build: nothing of the last build is left


def test_prepare_for_a_clean_build_empties_the_work_tree(tmp_path: Path) -> None:
    site = tmp_path / "builder" / "source"
    _output(site / "output")
    _leftovers(site)
    (tmp_path / "tmp" / "fill").mkdir(parents=True)
    assert work_tree.prepare(site, tmp_path / "tmp", "conf.py changed", 0, 0) == "conf.py changed"
    assert os.listdir(site) == [] and os.listdir(tmp_path / "tmp") == []


def test_the_commits_files_are_copied_in_with_their_times(tmp_path: Path) -> None:
    export, site = tmp_path / "export", tmp_path / "source"
    (export / "posts").mkdir(parents=True)
    (export / "posts" / "a.rst").write_text("a")
    os.utime(export / "posts" / "a.rst", ns=(1, 1_500_000_000_000_000_000))
    (export / "run.sh").write_text("#!/bin/sh\n")
    (export / "run.sh").chmod(0o755)
    (export / "link").symlink_to("posts/a.rst")
    (export / "output").mkdir()  # Nikola's state is the work tree's own: never taken from a commit
    site.mkdir()
    assert work_tree.copy_in(export, site) == 2
    assert (site / "posts" / "a.rst").stat().st_mtime_ns == 1_500_000_000_000_000_000
    assert (site / "run.sh").stat().st_mode & 0o111 and os.readlink(site / "link") == "posts/a.rst"
    assert sorted(os.listdir(site)) == ["link", "posts", "run.sh"]


def _commit_files(export: Path) -> None:
    (export / "posts" / "deep").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (export / "posts" / f"{name}.rst").write_text(f"post {name}")
    (export / "posts" / "deep" / "d.rst").write_text("post d")
    (export / "conf.py").write_text("BLOG_TITLE = 'x'\n")
    (export / "link").symlink_to("posts/a.rst")


def _changed(site: Path) -> dict[str, int]:
    return {p.relative_to(site).as_posix(): p.lstat().st_ctime_ns for p in site.rglob("*") if not p.is_dir()}


def test_an_incremental_work_tree_copies_only_what_changed_and_trusts_nothing_the_build_touched(
        tmp_path: Path) -> None:
    export, site, tmp = tmp_path / "export", tmp_path / "builder" / "source", tmp_path / "builder" / "tmp"
    _commit_files(export)
    reason, mark = work_tree.make(export, site, tmp, "no previous build", 0, 0)
    assert reason == "no previous build" and mark  # this volume keeps fine file times
    (site / "output").mkdir()
    started = time.time_ns()
    # What the last build's code did to the commit's files: edited one (and put its time back), swapped a
    # directory for a link, planted files and a FIFO; and what the commit changed since.
    edited = site / "posts" / "b.rst"
    before = edited.stat()
    edited.write_text("post X")
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    tree.remove_tree(site / "posts" / "deep")
    (site / "posts" / "deep").symlink_to("/etc")
    (site / "posts" / "planted.rst").write_text("not in the commit")
    os.mkfifo(site / "fifo")
    (site / work_tree.WRITTEN_REPORT).write_text("")
    finished = time.time_ns()
    kept = _changed(site)
    (export / "posts" / "c.rst").write_text("post C, edited")
    (export / "posts" / "new.rst").write_text("a new post")

    held = os.open(site / "conf.py", os.O_RDONLY)  # its inode stays taken: a copy would be another
    try:
        reason, _next = work_tree.make(export, site, tmp, None, started, finished, 0, mark)
        assert (site / "conf.py").stat().st_ino == os.fstat(held).st_ino  # kept, not copied again
    finally:
        os.close(held)
    assert reason is None
    files = {p.relative_to(site).as_posix(): (os.readlink(p) if p.is_symlink() else p.read_text())
             for p in site.rglob("*") if p.is_file() or p.is_symlink()}
    assert files == {work_tree.WRITTEN_REPORT: "",  # Nikola's state: prepare's to keep or drop
                     "conf.py": "BLOG_TITLE = 'x'\n", "link": "posts/a.rst", "posts/a.rst": "post a",
                     "posts/b.rst": "post b", "posts/c.rst": "post C, edited", "posts/deep/d.rst": "post d",
                     "posts/new.rst": "a new post"}
    assert _changed(site)["posts/b.rst"] != kept["posts/b.rst"]  # touched by the build: copied again
    assert (site / "posts" / "deep").is_dir() and not (site / "posts" / "deep").is_symlink()


def test_without_the_last_copys_mark_the_work_tree_is_made_afresh(tmp_path: Path) -> None:
    export, site, tmp = tmp_path / "export", tmp_path / "builder" / "source", tmp_path / "builder" / "tmp"
    _commit_files(export)
    work_tree.make(export, site, tmp, "no previous build", 0, 0)
    first = _changed(site)
    (site / work_tree.WRITTEN_REPORT).write_text("")
    started = finished = time.time_ns()
    work_tree.make(export, site, tmp, None, started, finished)  # a worker started since: no mark
    assert all(_changed(site)[name] > changed for name, changed in first.items())


def test_a_directory_swapped_or_moved_into_nikolas_state_by_the_last_build_is_not_kept(tmp_path: Path) -> None:
    """Renames change the change time of what is renamed, not of the files inside: two swapped folders of posts
    (files of one size and time, as git writes them) and a folder moved into output/."""
    export, site, tmp = tmp_path / "export", tmp_path / "builder" / "source", tmp_path / "builder" / "tmp"
    for name, text in (("a", "good post"), ("ax", "evil post"), ("x", "<script>")):
        (export / "posts" / name).mkdir(parents=True)
        (export / "posts" / name / "index.md").write_text(text)
    same = (export / "posts" / "a" / "index.md").stat().st_mtime_ns
    os.utime(export / "posts" / "ax" / "index.md", ns=(same, same))
    _reason, mark = work_tree.make(export, site, tmp, "no previous build", 0, 0)
    (site / "output").mkdir()
    (site / work_tree.WRITTEN_REPORT).write_text("")
    started, finished = time.time_ns() - 10**10, time.time_ns()
    _reason, mark = work_tree.make(export, site, tmp, None, started, finished, 0, mark)  # kept: nothing changed
    started = time.time_ns()
    posts = site / "posts"  # the build's code: renames only (no chmod, no utime)
    os.rename(posts / "a", posts / "t")
    os.rename(posts / "ax", posts / "a")
    os.rename(posts / "t", posts / "ax")
    os.rename(posts / "x", site / "output" / "persist")
    (site / work_tree.WRITTEN_REPORT).write_text("")
    finished = time.time_ns()
    tree.remove_tree(export / "posts" / "ax")  # the owner removes the planted post and file
    tree.remove_tree(export / "posts" / "x")
    reason, _next = work_tree.make(export, site, tmp, None, started, finished, 0, mark)
    assert reason is None
    assert (posts / "a" / "index.md").read_text() == "good post"
    assert not (site / "output" / "persist" / "index.md").exists()


def test_folders_of_nikolas_state_the_last_build_moved_go_with_all_they_hold(tmp_path: Path) -> None:
    """Renames keep the change times of the files inside: two post pages' folders swapped (both pages made by
    tasks of that build, as its report says), an old folder renamed, output/ and cache/ swapped."""
    site = tmp_path / "builder" / "source"
    for page in ("a", "b", "c", "d"):
        (site / "output" / "posts" / page).mkdir(parents=True)
        (site / "output" / "posts" / page / "index.html").write_text(f"<p>{page}</p>")
    (site / "cache" / "posts").mkdir(parents=True)
    (site / "cache" / "posts" / "a.html").write_text("a")
    _folders_before_the_build(site)
    time.sleep(0.05)
    started = time.time_ns()
    posts = site / "output" / "posts"
    os.rename(posts / "a", posts / "t")
    os.rename(posts / "b", posts / "a")
    os.rename(posts / "t", posts / "b")
    os.rename(posts / "c", posts / "renamed")
    (posts / "new").mkdir()  # a new page's folder: a task made it
    (posts / "new" / "index.html").write_text("<p>new</p>")
    (site / work_tree.WRITTEN_REPORT).write_text(
        "output/posts/a/index.html\noutput/posts/b/index.html\noutput/posts/new/index.html\n")
    finished = time.time_ns()

    assert work_tree.prepare(site, tmp_path / "tmp", None, started + work_tree.CTIME_SLACK_NS, finished) is None
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()) == [
        "cache/posts/a.html", "output/posts/d/index.html", "output/posts/new/index.html"]
    assert not (posts / "a").exists() and not (posts / "renamed").exists()  # their tasks make them again

    started = time.time_ns()  # the next build's code swaps output/ and cache/
    os.rename(site / "output", site / "t")
    os.rename(site / "cache", site / "output")
    os.rename(site / "t", site / "cache")
    (site / work_tree.WRITTEN_REPORT).write_text("")
    finished = time.time_ns()
    assert work_tree.prepare(site, tmp_path / "tmp", None, started + work_tree.CTIME_SLACK_NS, finished) is None
    assert os.listdir(site) == []  # both moved: all of them goes, and the next build makes them again


def _release_tree(root: Path) -> dict[str, tuple]:
    """Each entry of a release: its kind, mode, modification time and bytes (a file's)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        found[path.relative_to(root).as_posix()] = (
            stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns if path.is_file() else 0,
            path.read_bytes() if path.is_file() else b"")
    return found


def test_a_release_made_from_a_spare_copy_is_the_release_staging_makes(tmp_path: Path) -> None:
    """The spare (a copy of the live release made while the build ran) brought up to date gives what copying
    the whole output gives, for every kind of change, and the live release is never written into."""
    output = tmp_path / "output"
    page = "<p>" + "a page of text " * 100 + "</p>"
    for path in ("index.html", "posts/a/index.html", "posts/b/index.html", "posts/c/index.html", "x.txt",
                 "own/page.html", "own/page.html.gz", "img/logo.png", "goes/away/index.html", "turns/into/file.html"):
        (output / path).parent.mkdir(parents=True, exist_ok=True)
        (output / path).write_text(page + path)
    live = releases.stage(output, tmp_path / "releases", releases.Release("r1", "c1", "t", 1.0), None)
    before = _release_tree(live)

    (output / "posts" / "a" / "index.html").write_text(page + "changed")  # changed: a new file, a new .gz
    (output / "posts" / "d").mkdir()
    (output / "posts" / "d" / "index.html").write_text(page + "new")  # a new folder
    (output / "new" / "deeper").mkdir(parents=True)
    (output / "new" / "deeper" / "index.html").write_text(page + "new, deeper")  # new folders in new folders
    tree.remove_tree(output / "goes")  # a folder gone
    (output / "x.txt").unlink()  # a file and its .gz gone
    (output / "own" / "page.html.gz").write_bytes(b"the output's own, changed")  # its own .gz wins
    (output / "own" / "page.html").write_text(page + "own, changed")
    tree.remove_tree(output / "turns" / "into")
    (output / "turns" / "into").write_text("a file where a folder was")
    (output / "img" / "logo.png").unlink()
    (output / "img" / "logo.png").mkdir()  # a folder where a file was
    (output / "img" / "logo.png" / "inner.html").write_text(page)

    copied = releases.stage(output, tmp_path / "releases", releases.Release("r2", "c2", "t", 1.0), live)
    spare = releases.Spare(tmp_path / "releases", live)
    synced = releases.stage(output, tmp_path / "releases", releases.Release("r3", "c3", "t", 1.0), live, spare)
    assert _release_tree(synced) == _release_tree(copied)
    assert _release_tree(live) == before
    unchanged = (synced / "posts" / "b" / "index.html").stat()
    assert unchanged.st_ino == (live / "posts" / "b" / "index.html").stat().st_ino  # shared, as stage() links
    assert not spare.path.exists()


def _deep(root: Path, names: list[str]) -> int:
    """The folder root/names[0]/names[1]/… opened one name at a time (its path is longer than PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=fd)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    return fd


def test_a_change_deeper_than_a_path_can_name_is_staged_from_the_spare(tmp_path: Path) -> None:
    output = _output(tmp_path / "output")
    names = [f"{level:02d}" + "x" * 238 for level in range(18)]  # 18 × 241 bytes: beyond the kernel's 4,096
    for text in (b"first", b"second"):
        fd = _deep(output, names)
        with contextlib.suppress(FileNotFoundError):
            os.unlink("page.html", dir_fd=fd)
        page = os.open("page.html", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(page, text)
        os.close(page)
        os.close(fd)
        if text == b"first":
            live = releases.stage(output, tmp_path / "releases", releases.Release("r1", "c1", "t", 1.0), None)
            spare = releases.Spare(tmp_path / "releases", live)
    synced = releases.stage(output, tmp_path / "releases", releases.Release("r2", "c2", "t", 1.0), live, spare)
    for release, text in ((synced, b"second"), (live, b"first")):
        fd = _deep(release, names)
        page = os.open("page.html", os.O_RDONLY, dir_fd=fd)
        assert os.read(page, 100) == text
        os.close(page)
        os.close(fd)


def test_a_spare_of_another_release_is_not_used_and_goes(tmp_path: Path) -> None:
    output = _output(tmp_path / "output")
    first = releases.stage(output, tmp_path / "releases", releases.Release("r1", "c1", "t", 1.0), None)
    (output / "index.html").write_text("<p>home, later</p>")
    second = releases.stage(output, tmp_path / "releases", releases.Release("r2", "c2", "t", 1.0), first)
    spare = releases.Spare(tmp_path / "releases", first)  # the live release changed meanwhile (a rollback)
    third = releases.stage(output, tmp_path / "releases", releases.Release("r3", "c3", "t", 1.0), second, spare)
    assert _release_tree(third) == _release_tree(second)
    assert not spare.path.exists()
