"""The build runner's shortcuts give exactly what they replace."""

from __future__ import annotations

import functools
import inspect
import os
import types
from pathlib import Path

from pipeline.build.runner import CachedSignatures, StatCache, remove_orphans


class Check:
    def __call__(self, task, values):
        return True

    def method(self, task):
        return True


class Sub(Check):
    pass


class OwnSignature:
    def __init__(self, signature: inspect.Signature):
        self.__signature__ = signature

    def __call__(self, *args):
        return True


def plain(task, values, extra=1):
    return True


def test_cached_signatures_equal_inspects_for_every_kind_of_callable() -> None:
    cached = CachedSignatures()
    custom = inspect.Signature([inspect.Parameter("only", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
    callables = [Check(), Check(), Sub(), Check().method, Check().method, plain, functools.partial(plain, 1),
                 OwnSignature(custom), lambda task: True, len]
    for obj in callables:
        assert cached.signature(obj) == inspect.signature(obj), obj
    assert list(cached.signature(OwnSignature(custom)).parameters) == ["only"]
    # one entry per class and per method function; none for the rest
    assert len(cached._cache) == 2
    assert cached.isclass(Check)  # everything else is inspect's


class FakePost:
    """What Nikola's sort reads of a post."""

    def __init__(self, path: str, date, priority: str = "", title: str = "t") -> None:
        self.source_path, self.date, self._priority, self._title = path, date, priority, title

    def meta(self, key: str) -> str:
        return self._priority if key == "priority" else ""

    def title(self, lang: str) -> str:
        return self._title


def test_the_post_sort_is_nikolas() -> None:
    import datetime
    import random

    from dateutil import tz
    from nikola.nikola import Nikola

    from pipeline.build import runner

    runner.speed_up_doit()
    assert Nikola.sort_posts_chronologically is not runner._nikola_sort  # installed (Nikola 8.3.3)
    zones = [tz.tzutc(), tz.gettz("Europe/Berlin"), tz.gettz("America/New_York"), tz.tzoffset(None, 5400)]
    base = datetime.datetime(2025, 3, 30, 0, 30, tzinfo=tz.tzutc())  # Berlin changes its offset that night
    rng = random.Random(7)
    posts = []
    for number in range(400):
        instant = base + datetime.timedelta(minutes=rng.randrange(0, 240), microseconds=rng.choice([0, 0, 1, 2]))
        posts.append(FakePost(f"posts/p{rng.randrange(50):02d}-{number}.rst", instant.astimezone(rng.choice(zones)),
                              rng.choice(["", "", "1", "3"]), rng.choice(["B", "a", "A10", "a9"])))
    for lang in (None, "en"):
        assert runner.sort_posts_chronologically(posts, lang) == runner._nikola_sort(posts, lang)


def test_small_configurations_are_told_apart_by_their_repr_exactly_as_by_their_json() -> None:
    import json

    from pipeline.build import runner

    simple = [{1: ["a", "b"]}, {"1": ["a", "b"]}, {1: ["b", "a"]}, {1: []}, {1: "a"}, {1: 2}, {2: ["a"], 1: ["a"]}]
    for first in simple:
        for second in simple:
            assert runner._simple_repr(first) is not None
            same_repr = runner._simple_repr(first) == runner._simple_repr(second)
            assert not same_repr or json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    for other in ({1: [1]}, {1: {"a": 1}}, {(1,): "a"}, {1: 1.5}, {1: None}, dict.fromkeys("abcde", "x")):
        assert runner._simple_repr(other) is None


def test_orphans_and_the_folders_they_leave_empty_go_and_links_are_not_followed(tmp_path: Path,
                                                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the build's")
    for path in ("output/index.html", "output/posts/a/index.html", "output/posts/gone/index.html",
                 "output/posts/gone/img/x.png", "output/old.html", "output/empty/deeper/x.txt"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(path)
    Path("output/posts/b").mkdir()  # empty already: goes too
    Path("output/link").symlink_to(outside)
    site = types.SimpleNamespace(config={"OUTPUT_FOLDER": "output"})
    targets = ["output/index.html", "output/posts/a/index.html", "cache/posts/a.html"]
    assert remove_orphans(site, targets) == 5
    left = sorted(str(Path(root, name)) for root, dirs, files in os.walk("output") for name in dirs + files)
    assert left == ["output/index.html", "output/posts", "output/posts/a", "output/posts/a/index.html"]
    assert (outside / "keep.txt").read_text() == "not the build's"


def test_the_stat_cache_forgets_what_a_task_that_ran_made_however_spelled(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("posts").mkdir()
    Path("cache").mkdir()
    Path("posts/a.rst").write_text("a")
    Path("cache/a.html").write_text("a")
    cache = StatCache()
    source, fragment = cache.info("posts/a.rst"), cache.info("./cache/a.html")
    Path("cache/a.html").write_text("made again, longer")
    Path("posts/a.rst").write_text("not by a task")
    cache.forget(types.SimpleNamespace(targets=["cache/a.html"]))  # the task that makes cache/a.html ran
    assert cache.info("./cache/a.html").st_size != fragment.st_size
    assert cache.info("posts/a.rst") is source  # no task made it: this build goes by what it was
    cache.forget()
    assert cache.info("posts/a.rst").st_size != source.st_size
