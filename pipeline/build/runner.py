"""Runs one `nikola build` in this process, then removes output no task produces any more.

Started by `pipeline.publish.builds` as `python -m pipeline.build.runner SITE_DIR`. Removing
orphans (pages of deleted posts, tags no post uses any more) is what lets an incremental build
give exactly the output of a clean build.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import secrets
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any


class CachedSignatures:
    """`inspect` for doit's dependency check, which asks `inspect.signature` of every up-to-date callable
    of every task (on a 2,000-post blog 26,000 times, for a build that changes nothing). They are
    thousands of instances of a few classes (Nikola's `config_changed`) and bound methods: their
    signature depends only on the class's `__call__` or the method's function, so it is computed once
    for each. Anything else (plain functions, partials, objects with a `__signature__` of their own) is
    asked of `inspect` every time, as before."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, str], inspect.Signature] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def _key(obj: Any) -> tuple[Any, str] | None:
        if isinstance(obj, types.MethodType):
            return (obj.__func__, "method") if isinstance(obj.__func__, types.FunctionType) else None
        if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType) or \
                getattr(obj, "__signature__", None) is not None:
            return None
        call = next((klass.__dict__["__call__"] for klass in type(obj).__mro__ if "__call__" in klass.__dict__), None)
        return (call, "instance") if isinstance(call, types.FunctionType) else None

    def signature(self, obj: Any, **kwargs: Any) -> inspect.Signature:
        key = None if kwargs else self._key(obj)
        if key is None:
            return inspect.signature(obj, **kwargs)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = inspect.signature(obj)
        return found


class SharedEncodings:
    """Nikola's `config_changed` digest, computed without encoding the site's shared dictionaries again for
    every task. Each page task's configuration holds the whole global context (`'global'`) and the
    dependencies of all pages (`'all_page_deps'`): JSON-encoding them is most of doit's up-to-date check
    (on a 2,000-post blog, 4,000 times). They are encoded once and put into each task's JSON text where a
    unique placeholder stood, which gives the same text, so the same digest, as encoding it all. The
    encodings are forgotten whenever a task has run (a task could change them)."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self._encoded: dict[int, str] = {}
        self._token = f"pequod-shared-{secrets.token_hex(16)}"

    def forget(self, _task: Any = None) -> None:
        self._encoded.clear()

    def _encode(self, value: Any) -> str:
        from nikola.utils import CustomEncoder

        return json.dumps(value, cls=CustomEncoder, sort_keys=True)

    def text(self, config: dict) -> str:
        """`json.dumps(config, cls=CustomEncoder, sort_keys=True)`, with the shared parts encoded once."""
        shared_objects = (self.site.GLOBAL_CONTEXT, self.site.ALL_PAGE_DEPS)
        shared = [(key, value) for key, value in config.items()
                  if isinstance(key, str) and any(value is obj for obj in shared_objects)]
        if not shared:
            return self._encode(config)
        placeholders = {key: f"{self._token}-{index}" for index, (key, _value) in enumerate(shared)}
        text = self._encode({**config, **placeholders})
        for key, value in shared:
            encoded = self._encoded.get(id(value))
            if encoded is None:
                encoded = self._encoded[id(value)] = self._encode(value)
            quoted = json.dumps(placeholders[key])
            if text.count(quoted) != 1:  # not where it belongs: encode it all, as Nikola does
                return self._encode(config)
            text = text.replace(quoted, encoded)
        return text

    def install(self) -> None:
        import hashlib

        from nikola import utils

        shared = self

        simple: dict[str, str] = {}  # digests of small configurations of strings, by their repr

        def calc_digest(cc: Any) -> str:
            config = cc.config
            if not isinstance(config, dict):
                return original_digest(cc)
            key = _simple_repr(config)
            found = None if key is None else simple.get(key)
            if found is None:
                found = hashlib.md5(shared.text(config).encode("utf-8")).hexdigest()
                if key is not None:
                    simple[key] = found
            return found

        original_digest = utils.config_changed._calc_digest
        utils.config_changed._calc_digest = calc_digest
        after_each_task(self.forget)


def _simple_repr(config: dict) -> str | None:
    """The repr of a configuration made only of str and int keys and values and lists of str (each post's
    compiler dependencies: one per post and page listing it, 8,000 in the check of a 2,000-post blog), which
    tells apart exactly what its JSON tells apart; None for anything else."""
    if len(config) > 4:
        return None
    for key, value in config.items():
        if type(key) not in (str, int):
            return None
        if type(value) is list:
            if not all(type(item) is str for item in value):
                return None
        elif type(value) not in (str, int):
            return None
    return repr(config)


def after_each_task(callback: Callable[[Any], None]) -> None:
    """Call `callback(task)` whenever doit has run a task (what a task writes can change what was remembered)."""
    from doit.runner import Runner

    original_execute = Runner.execute_task

    def execute_task(runner: Any, task: Any) -> Any:
        try:
            return original_execute(runner, task)
        finally:
            callback(task)

    Runner.execute_task = execute_task


class StatCache:
    """doit's file checks, one `stat` per file and build: the up-to-date check of a 2,000-post blog's index,
    tag and archive pages stats the same post files 84,000 times. A file changes when the task that makes
    it runs (doit runs it before any task that depends on it is checked), so what is remembered of a task's
    targets, however spelled, is forgotten when it has run (and what failed to stat is not remembered).
    Anything else a task writes is no task's doing: the next build removes it (pipeline.build.work_tree),
    and its change is not what this build's checks go by."""

    def __init__(self) -> None:
        self._stats: dict[str, os.stat_result] = {}
        self._spellings: dict[str, list[str]] = {}  # absolute path → the paths remembered for it

    def forget(self, task: Any = None) -> None:
        targets = getattr(task, "targets", None)
        if targets is None:
            self._stats.clear()
            self._spellings.clear()
            return
        for target in targets:
            for path in self._spellings.pop(os.path.abspath(target), ()):
                self._stats.pop(path, None)

    def info(self, path: str) -> os.stat_result:
        found = self._stats.get(path)
        if found is None:
            found = self._stats[path] = os.stat(path)
            self._spellings.setdefault(os.path.abspath(path), []).append(path)
        return found

    def exists(self, path: str) -> bool:
        try:
            self.info(path)
        except OSError:
            return False
        return True

    def install(self) -> None:
        from doit.dependency import FileChangedChecker

        cache = self
        FileChangedChecker.info = lambda _checker, path: cache.info(path)  # type: ignore[method-assign]
        FileChangedChecker.exists = lambda _checker, path: cache.exists(path)  # type: ignore[method-assign]
        after_each_task(self.forget)


def sort_posts_chronologically(posts: Any, lang: str | None = None) -> list:
    """Nikola's own sort, with the date order decided on each post's instant (its timestamp) instead of by
    comparing time-zone-aware datetimes, which asks both time zones for their offset at every comparison
    (300,000 times in one scan of 2,000 posts). Same order: two aware datetimes compare as their instants,
    and a timestamp tells instants a microsecond apart. Naive dates are left to Nikola's sort. The order is
    Nikola 8.3.3's (the version pinned; with another one Nikola's own sort is used, see speed_up_doit): its four
    stable sorts (by source path, by title (natsort), by date descending, by priority descending) in one,
    by (priority descending, date descending, title, source path), which orders every pair alike (equal keys
    keep their order in both)."""
    posts = list(posts)
    if any(post.date.tzinfo is None for post in posts):
        return _nikola_sort(posts, lang)

    def key(post: Any) -> tuple:
        keys = post.__dict__.get(SORT_KEYS)
        if keys is None:
            keys = post.__dict__[SORT_KEYS] = {}
        found = keys.get(lang)
        if found is None:
            priority = post.meta("priority")
            title = _natural_key(post.title(lang)) if lang is not None else ()
            found = keys[lang] = (-(int(priority) if priority else 0), -post.date.timestamp(), title,
                                  post.source_path)
        return found

    return sorted(posts, key=key)


# Each post's sort keys (by language), kept on the post: a scan sorts the timeline and every tag's, category's and
# archive's posts (37 sorts of up to all posts on a 2,000-post blog), and a post the site holder's scan reuses
# (pipeline.build.warm_site.PostReuse: its files did not change) keeps them for the next.
SORT_KEYS = "_pequod_sort_keys"


_nikola_sort: Any = None


@functools.lru_cache(maxsize=100_000)
def _natural_key(title: str) -> Any:
    """natsort's key of a title (ns.F | ns.IC: no locale involved, so a function of the text alone), each
    title's computed once per process: a scan sorts every tag's posts by title again."""
    return _natural_keygen()(title)


@functools.cache
def _natural_keygen() -> Callable[[str], Any]:
    import natsort

    return natsort.natsort_keygen(alg=natsort.ns.F | natsort.ns.IC)


def speed_up_doit() -> None:
    """Per-task overhead of doit that does not depend on the task, computed once (see CachedSignatures), and
    Nikola's post sort without time zone lookups (see sort_posts_chronologically)."""
    global _nikola_sort
    import doit.dependency
    import nikola
    from nikola.nikola import Nikola

    doit.dependency.inspect = CachedSignatures()  # type: ignore[assignment]
    if _nikola_sort is None and nikola.__version__ == "8.3.3":
        _nikola_sort = Nikola.sort_posts_chronologically
        Nikola.sort_posts_chronologically = staticmethod(sort_posts_chronologically)  # type: ignore[assignment]
    neighbours_in_page_deps(Nikola)


def neighbours_in_page_deps(nikola_class: Any) -> None:
    """A post's page shows its neighbours (the previous and next post links, with their titles), but Nikola's
    page task depends only on their permalinks: a renamed post would leave its neighbours' pages showing the
    old title until they are made for another reason, which a clean build does not. Each page task also
    depends on its neighbours' titles, permalinks and dates."""
    from nikola import utils

    real = nikola_class.generic_page_renderer
    if getattr(real, "with_neighbours", False):
        return

    def generic_page_renderer(site: Any, lang: str, post: Any, filters: Any, context: Any = None) -> Any:
        for task in real(site, lang, post, filters, context):
            neighbours = {name: [str(other.title(lang)), other.permalink(lang), str(other.date)]
                          for name, other in (("previous", getattr(post, "prev_post", None)),
                                              ("next", getattr(post, "next_post", None))) if other is not None}
            task["uptodate"] = [*task["uptodate"], utils.config_changed(neighbours, "pequod.neighbours")]
            yield task

    generic_page_renderer.with_neighbours = True  # type: ignore[attr-defined]
    nikola_class.generic_page_renderer = generic_page_renderer


def remove_orphans(site: object, targets: list[str] | None = None) -> int:
    """Delete output files no task produces, then the folders left empty. `targets`: every task's targets as
    the build generated them (`nikola check -f` would generate all tasks a second time, as costly as the
    build's own task generation); without them the tasks are generated again. One walk of the output, by
    scandir, following no link (a link no task made is removed itself, never what it points to)."""
    output = str(site.config["OUTPUT_FOLDER"])  # type: ignore[attr-defined]
    if targets is None:
        from nikola.plugins.command.check import _call_nikola_list

        targets = _call_nikola_list(site, None)[0]
    wanted = {target.strip() for target in targets}
    removed = 0
    folders = []  # each before the folders inside it
    left: dict[str, int] = {}  # entries a folder keeps
    parents: dict[str, str] = {}
    todo = [output] if os.path.isdir(output) else []
    while todo:
        folder = todo.pop()
        folders.append(folder)
        kept = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                path = os.path.join(folder, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    todo.append(path)
                    parents[path] = folder
                    kept += 1
                elif path in wanted:
                    kept += 1
                else:
                    os.unlink(path)
                    removed += 1
        left[folder] = kept
    for folder in reversed(folders):
        if folder != output and not left[folder]:
            os.rmdir(folder)
            left[parents[folder]] -= 1
    return removed


SCHEDULED_LISTED = 50  # held-back posts a build reports (the earliest)
# (due as UNIX time, source path, title) of the posts the last scan held back, per post scanner.
HELD_BACK: dict[str, list[tuple[float, str, str]]] = {}


def hold_back_undeployable(site: Any) -> None:
    """What is published follows Nikola's deploy rules: a post dated in the future (unless DEPLOY_FUTURE) and
    a draft (where DEPLOY_DRAFTS = False) are left out of the scan itself, so no page, index, feed, tag,
    archive or sitemap ever names them; the future ones are noted in HELD_BACK (the pipeline builds again
    when the first is due). Installed on the site's post scanners once they are loaded."""
    deploy_drafts = site.config.get("DEPLOY_DRAFTS", True)
    deploy_future = site.config.get("DEPLOY_FUTURE", False)
    for plugin in site.plugin_manager.get_plugins_of_category("PostScanner"):
        scanner = plugin.plugin_object
        if getattr(scanner.scan, "holds_back", False):
            continue
        real_scan = scanner.scan

        def scan(real_scan: Any = real_scan, name: str = plugin.name) -> list:
            kept, held = [], []
            for post in real_scan():
                if post.publish_later and not deploy_future:
                    held.append((post.date.timestamp(), post.source_path, str(post.title())[:200]))
                elif post.is_draft and not deploy_drafts:
                    pass
                else:
                    kept.append(post)
            HELD_BACK[name] = held
            return kept

        scan.holds_back = True  # type: ignore[attr-defined]
        scanner.scan = scan


def scheduled() -> list[tuple[float, str, str]]:
    """The held-back posts of the last scan, earliest first (at most SCHEDULED_LISTED)."""
    return sorted(item for held in HELD_BACK.values() for item in held)[:SCHEDULED_LISTED]


def open_site(site_dir: str) -> Any:
    """Load the site's conf.py and Nikola's plugins in this process (as `nikola build` starts): the site's
    DoitNikola, or the exit status when conf.py could not be loaded."""
    os.chdir(site_dir)
    os.environ.setdefault("NIKOLA_MONO", "1")
    import nikola.__main__ as nikola_main

    speed_up_doit()
    nikola_main._RETURN_DOITNIKOLA = True
    doit_nikola = nikola_main.main(["build"])
    if isinstance(doit_nikola, int):  # conf.py could not be loaded
        return doit_nikola or 1
    return doit_nikola


@contextlib.contextmanager
def posts_deps_remembered() -> Iterator[None]:
    """While doit's tasks are generated: each post's file dependencies (`Post.deps`, `Post.fragment_deps`) asked
    once per language instead of by every task that lists the post (on a 2,000-post blog 6,000 times for the
    fragments alone, each a `stat` and a read of the post's .dep file). Nothing runs while tasks are generated,
    so nothing they read changes; each caller gets a list of its own, as from Nikola."""
    from nikola.post import Post

    real = {name: getattr(Post, name) for name in ("deps", "fragment_deps")}
    remembered: dict[tuple[str, int, str], tuple[Any, list]] = {}  # the post is kept: its id is not reused

    def remembering(name: str) -> Callable[[Any, str], list]:
        def deps(post: Any, lang: str) -> list:
            key = (name, id(post), lang)
            found = remembered.get(key)
            if found is None:
                found = remembered[key] = (post, real[name](post, lang))
            return list(found[1])
        return deps

    for name in real:
        setattr(Post, name, remembering(name))
    try:
        yield
    finally:
        for name, method in real.items():
            setattr(Post, name, method)


def run_build(doit_nikola: Any, keep: list[str] | None = None) -> int:
    """`nikola build` of a loaded site, then the removal of output no task produces any more (nor is in
    `keep`: the outputs of tasks left out because they were up to date, see pipeline.build.site_holder)."""
    SharedEncodings(doit_nikola.nikola).install()
    StatCache().install()
    generated: list = []  # the tasks doit loads, for their targets
    loader = doit_nikola.task_loader
    load_tasks = loader.load_tasks

    def keep_tasks(cmd: object, pos_args: object) -> list:
        started = time.monotonic()
        with posts_deps_remembered():
            tasks = load_tasks(cmd, pos_args)
        PHASES["tasks"] = time.monotonic() - started
        generated.extend(tasks)
        return tasks

    loader.load_tasks = keep_tasks
    written = record_written()
    started = time.monotonic()
    status = doit_nikola.run(["build"])
    PHASES["doit"] = time.monotonic() - started - PHASES.get("tasks", 0.0)
    PHASES["ran"] = len(written)
    if status != 0:
        return int(status)
    started = time.monotonic()
    targets = [target for task in generated for target in task.targets] + (keep or []) if generated else None
    removed = remove_orphans(doit_nikola.nikola, targets)
    with open(WRITTEN_REPORT, "w", encoding="utf-8", errors="surrogateescape") as report:
        report.writelines(os.path.normpath(target) + "\n" for target in sorted(written) if "\n" not in target)
    PHASES["stale"] = time.monotonic() - started
    print(f"pequod: build finished, {removed} stale output file(s) removed", flush=True)
    return 0


# Where a build's time went (seconds): generating doit's tasks ("tasks"), checking and running them ("doit"),
# removing stale output ("stale"); "ran": the targets of the tasks that ran. Read by pipeline.build.site_holder.
PHASES: dict[str, float] = {}

# The targets of the tasks a build ran, one per line (pipeline.build.work_tree.prepare): of the files written during a
# build, those no task of it made are removed before the next one, which makes them again.
WRITTEN_REPORT = ".pequod-written"


def record_written() -> set[str]:
    """From now on in this process, the targets of every task doit runs (not of those it finds up to date)."""
    import doit.runner

    written: set[str] = set()
    real = doit.runner.Runner.execute_task

    def execute_task(runner: Any, task: Any) -> Any:
        written.update(str(target) for target in task.targets)
        return real(runner, task)

    doit.runner.Runner.execute_task = execute_task  # type: ignore[method-assign]
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.build.runner SITE_DIR", file=sys.stderr)
        return 2
    doit_nikola = open_site(argv[0])
    if isinstance(doit_nikola, int):
        return doit_nikola
    site = doit_nikola.nikola
    real_init = site.init_plugins

    def init_plugins(*args: Any, **kwargs: Any) -> Any:
        result = real_init(*args, **kwargs)
        hold_back_undeployable(site)
        return result

    site.init_plugins = init_plugins
    return run_build(doit_nikola)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
