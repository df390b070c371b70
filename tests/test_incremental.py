"""Incremental Nikola builds give exactly the output of a clean build (real Nikola, real git)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.publish.builds import NikolaBuilder, clean_build_reason
from pipeline.publish.git_source import GitSource
from tests.helpers import SiteRepo

pytestmark = pytest.mark.system  # full Nikola builds of a generated site (slow)

# The parts of Nikola's output that differ between two clean builds of the same commit: the
# feeds' build time and the random (uuid4) anchors of reST code blocks. Nothing else may differ.
NOT_REPRODUCIBLE = re.compile(rb"<lastBuildDate>[^<]*</lastBuildDate>|rest_code_[0-9a-f]{32}")


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): NOT_REPRODUCIBLE.sub(b"", path.read_bytes())
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def output_of(builder: NikolaBuilder) -> Path:
    """Where the test site's conf.py has Nikola write: output/ in the work tree."""
    return builder.site_dir / "output"


def build(source: GitSource, builder: NikolaBuilder, log: Path) -> str | None:
    previous = builder.previous_state()
    commit = source.fetch()
    changes = source.changes(previous.commit, commit) if previous else None
    source.checkout(commit)
    builder.build(commit, reason=clean_build_reason(previous, changes), log_path=log,
                  changes=None if changes is None else [path for _status, path in changes])
    return builder.last_reason


def builder_for(source: GitSource, timeout: float) -> NikolaBuilder:
    """A builder whose work tree is made (by its worker) from `source`'s checkout, as the pipeline's."""
    work = source.clone_dir.with_name(source.clone_dir.name + "-work")
    return NikolaBuilder(work / "source", timeout=timeout, tmp_dir=work / "tmp", export_dir=source.clone_dir)


def clean_tree(site_repo: SiteRepo, tmp_path: Path, timeout: float = 300) -> dict[str, bytes]:
    """The output of a clean build of the remote's head, in a clone and worker of its own."""
    source = GitSource(site_repo.url, "main", tmp_path / "clean", timeout=60)
    builder = builder_for(source, timeout)
    try:
        build(source, builder, tmp_path / "clean.log")
        return tree(output_of(builder))
    finally:
        builder.worker.stop()


def test_incremental_output_equals_a_clean_build(site_repo: SiteRepo, tmp_path: Path) -> None:
    source = GitSource(site_repo.url, "main", tmp_path / "incremental", timeout=60)
    builder = builder_for(source, 300)
    assert build(source, builder, tmp_path / "1.log") == "no previous build"
    assert not builder.last_warm  # the worker started with this build
    assert (output_of(builder) / "categories" / "limits" / "index.html").exists()

    # One commit that adds a post, edits another, drops a tag from the site entirely and
    # deletes a post: the kinds of change that leave stale pages behind if handled naively.
    site_repo.add_post("added", "An added post", tags="fresh")
    welcome = site_repo.work / "posts" / "welcome.rst"
    welcome.write_text(welcome.read_text().replace("Every ``git push``", "Every single ``git push``"))
    limits = site_repo.work / "posts" / "resource-limits.md"
    limits.write_text(limits.read_text().replace("tags: docker, limits", "tags: docker"))
    (site_repo.work / "posts" / "atomic-deploys.rst").unlink()
    site_repo.commit("Edit, retag and delete posts")
    assert build(source, builder, tmp_path / "2.log") is None  # really incremental
    assert builder.last_warm  # ... in the worker that stayed loaded: no start-up paid again
    assert builder.last_site == "warm"  # ... with the site kept loaded (and its unchanged posts reused)
    worker_pid = builder.worker.proc.pid

    incremental, clean = tree(output_of(builder)), clean_tree(site_repo, tmp_path)
    assert sorted(incremental) == sorted(clean)
    assert incremental == clean
    assert "categories/limits/index.html" not in incremental and "posts/atomic-deploys/index.html" not in incremental
    assert "categories/fresh/index.html" in incremental
    assert b"Every single" in incremental["posts/welcome/index.html"]
    assert builder.worker.proc.pid == worker_pid
    builder.worker.stop()


def test_a_post_that_includes_a_file_is_made_again_when_the_file_changes(site_repo: SiteRepo, tmp_path: Path) -> None:
    """A post whose text includes another file is never taken for one that reads only its own files, in no build
    of a warm site holder (the holder remembers which posts do, from build to build)."""
    site_repo.write("posts/shared.inc", "Shared text, first version.\n")
    site_repo.add_post("includer", "Includes a file", body=".. include:: posts/shared.inc")
    source = GitSource(site_repo.url, "main", tmp_path / "work", timeout=60)
    builder = builder_for(source, 300)
    page = output_of(builder) / "posts" / "includer" / "index.html"
    build(source, builder, tmp_path / "1.log")
    assert b"first version" in page.read_bytes()
    for round_ in range(2):  # another post edited: the includer is an unchanged post in the builds that follow
        site_repo.add_post("other", "Another post", body=f"Edited {round_}.")
        assert build(source, builder, tmp_path / f"other-{round_}.log") is None
        assert builder.last_site == "warm"
    site_repo.write("posts/shared.inc", "Shared text, second version.\n")
    site_repo.commit("Edit the included file")
    assert build(source, builder, tmp_path / "2.log") is None
    assert builder.last_site == "warm"
    assert b"second version" in page.read_bytes()
    builder.worker.stop()


def test_configuration_changes_get_a_clean_build(site_repo: SiteRepo, tmp_path: Path) -> None:
    source = GitSource(site_repo.url, "main", tmp_path / "work", timeout=60)
    builder = builder_for(source, 300)
    build(source, builder, tmp_path / "1.log")
    site_repo.write("conf.py", (site_repo.work / "conf.py").read_text().replace("A Pequod Blog", "Renamed Blog"))
    site_repo.commit("Rename the blog")
    assert build(source, builder, tmp_path / "2.log") == "conf.py changed"
    assert b"Renamed Blog" in (output_of(builder) / "index.html").read_bytes()


def generated_post(number: int, tags: str, day: int, text: str = "") -> str:
    body = "\n\n".join(f"Paragraph {part} of post {number}. {text} " + "Static sites are fast. " * 20
                       for part in range(4))
    return (f".. title: Generated post {number}\n.. slug: generated-{number:04d}\n"
            f".. date: 2025-{1 + day % 12:02d}-{1 + day % 28:02d} 10:{number % 60:02d}:00 UTC\n"
            f".. tags: {tags}\n\n{body}\n")


def test_incremental_equals_clean_on_a_larger_generated_site(site_repo: SiteRepo, tmp_path: Path) -> None:
    """300 posts over 12 months and 20 tags (the bench builds thousands; the same kinds of change here)."""
    tags = [f"tag{k:02d}" for k in range(20)]
    for number in range(300):
        site_repo.write(f"posts/generated-{number:04d}.rst",
                        generated_post(number, f"{tags[number % 20]}, {tags[(number * 7 + 3) % 20]}", number))
    site_repo.write("posts/lonely.rst", generated_post(999, "only-here", 5))
    site_repo.commit("300 posts")
    source = GitSource(site_repo.url, "main", tmp_path / "incremental", timeout=60)
    builder = builder_for(source, 600)
    build(source, builder, tmp_path / "1.log")
    assert (output_of(builder) / "categories" / "only-here" / "index.html").exists()

    # One post's text edited, one moved to another month (indexes and archives shift), one deleted, the
    # only post of a tag retagged (the tag's pages and feed must go), one added.
    site_repo.write("posts/generated-0100.rst", generated_post(100, "tag00, tag07", 100, "Edited text."))
    site_repo.write("posts/generated-0200.rst", generated_post(200, "tag00, tag03", 203))
    (site_repo.work / "posts" / "generated-0150.rst").unlink()
    site_repo.write("posts/lonely.rst", generated_post(999, "tag01", 5))
    site_repo.write("posts/generated-0300.rst", generated_post(300, "tag05, new-tag", 40))
    site_repo.commit("Edit, move, delete, retag, add")
    assert build(source, builder, tmp_path / "2.log") is None  # really incremental
    log = (tmp_path / "2.log").read_text()
    assert builder.last_site == "warm" and "posts reused" in log, log
    left_out = int(re.search(r"pequod: (\d+) unchanged post\(s\) left out", log).group(1))
    assert 250 < left_out < 300  # the changed, moved, added and deleted posts and their neighbours are built

    incremental, clean = tree(output_of(builder)), clean_tree(site_repo, tmp_path, timeout=600)
    assert sorted(incremental) == sorted(clean)
    assert incremental == clean
    assert "categories/only-here/index.html" not in incremental and "categories/only-here.xml" not in incremental
    assert "posts/generated-0150/index.html" not in incremental
    assert "categories/new-tag/index.html" in incremental and "posts/generated-0300/index.html" in incremental
    assert b"Edited text." in incremental["posts/generated-0100/index.html"]

    # The pages that list posts (indexes, tag and archive pages) are left out when nothing they show changed.
    # A post's text edited: its tags' pages (lists of titles) are left out; the index page that shows its text is
    # made.
    site_repo.write("posts/generated-0042.rst", generated_post(42, "tag02, tag17", 42, "Edited again."))
    site_repo.commit("Edit one post's text")
    assert build(source, builder, tmp_path / "3.log") is None
    log = (tmp_path / "3.log").read_text()
    lists = re.search(r"pequod: (\d+) unchanged post\(s\) left out, (\d+) unchanged list page\(s\) left out", log)
    assert lists and int(lists.group(2)) > 60, log  # of the 30 index pages and ~40 tag and archive pages
    made = set(re.findall(r"^\.  render_taxonomies:output/(\S+)$", log, re.M))
    assert made & {"categories/tag02/index.html", "categories/tag17/index.html", "2025/index.html"} == set(), made
    # ... and no feed: each shows its 10 newest posts, and this one is older (the blog's and its tags' feeds).
    assert not {name for name in made if name.endswith(".xml")}, made
    assert int(re.search(r"(\d+) unchanged feed\(s\) left out", log).group(1)) > 20, log
    assert any(name.startswith("index") for name in made), made
    assert tree(output_of(builder)) == clean_tree(site_repo, tmp_path / "text", timeout=600)

    # Another post renamed: every page that shows it is made again.
    site_repo.write("posts/generated-0250.rst",
                    generated_post(250, "tag10, tag13", 250).replace("Generated post 250", "Renamed post 250"))
    site_repo.commit("Rename a post")
    assert build(source, builder, tmp_path / "4.log") is None
    incremental, clean = tree(output_of(builder)), clean_tree(site_repo, tmp_path / "title", timeout=600)
    assert incremental == clean
    renamed = [path for path, data in incremental.items() if b"Renamed post 250" in data and path.endswith(".html")]
    assert sorted(renamed) == ["2025/index.html", "categories/tag10/index.html", "categories/tag13/index.html",
                               "index-28.html", "posts/generated-0082/index.html",  # its neighbours' links
                               "posts/generated-0106/index.html", "posts/generated-0250/index.html"]
    builder.worker.stop()


# Content code (a shortcode's Mako block runs at build time) that edits other posts' pages in output/: appends to one,
# swaps the folders of two (a rename keeps the files' change times). Those pages' tasks do not run in an incremental
# build, so their output would carry the edit for good.
TAMPERING_POST = """.. title: Tampering
.. slug: tampering
.. date: 2026-12-01 10:00:00 UTC

{{% template %}}<%
    import os
    with open('output/posts/welcome/index.html', 'a') as _page:
        _page.write('<!-- TAMPERED -->')
    os.rename('output/posts/ipv6-only', 'output/posts/swap')
    os.rename('output/posts/atomic-deploys', 'output/posts/ipv6-only')
    os.rename('output/posts/swap', 'output/posts/atomic-deploys')
%>{{% /template %}}
"""


def test_output_edited_by_content_code_is_made_again_once_the_code_is_gone(site_repo: SiteRepo,
                                                                            tmp_path: Path) -> None:
    source = GitSource(site_repo.url, "main", tmp_path / "incremental", timeout=60)
    builder = builder_for(source, 300)
    build(source, builder, tmp_path / "1.log")
    site_repo.write("posts/tampering.rst", TAMPERING_POST)
    site_repo.commit("A post whose code edits other posts' pages")
    assert build(source, builder, tmp_path / "2.log") is None
    posts = output_of(builder) / "posts"
    welcome = posts / "welcome" / "index.html"
    assert welcome.read_text().endswith("<!-- TAMPERED -->")  # the attack works
    assert "Atomic" in (posts / "ipv6-only" / "index.html").read_text().split("</title>")[0]
    (site_repo.work / "posts" / "tampering.rst").unlink()
    site_repo.add_post("later", "A later post")  # not a revert: a tree no release had
    assert build(source, builder, tmp_path / "3.log") is None  # incremental
    assert "TAMPERED" not in welcome.read_text()
    assert "IPv6" in (posts / "ipv6-only" / "index.html").read_text().split("</title>")[0]
    incremental, clean = tree(output_of(builder)), clean_tree(site_repo, tmp_path)
    assert incremental == clean
    builder.worker.stop()
