"""What a site holder (pipeline.build.site_holder) keeps between builds, and when it may reuse it.

The holder loads conf.py and Nikola's plugins once and scans the posts. Before the next build it scans
again, reusing the Post objects of the posts whose files did not change (reading and parsing 2,000 posts
is most of a small change's build). It does so only where that gives exactly what a fresh `nikola build`
would see; otherwise it answers "stale" and ends, and the worker starts a fresh holder for the build:

- the changes since the holder's last build are known (the commit it built is the one they start from);
- every changed file is in a post or page folder: anything else (data/, files/, images/…) may be read
  while Nikola loads, and conf.py, themes, templates and plugins get a clean build anyway;
- conf.py, run again now (with this build's environment, SITE_COMMIT included), gives the same
  configuration as when the site was loaded; a configuration that cannot be compared exactly
  (an object of an unknown kind) means no reuse at all;
- a Post is reused only if no changed path starts with its name (its source, its translations, its
  .meta file), it is not scheduled for later (which depends on the time of the build), and it reads
  no data file.

A build forked from a warm holder also leaves out the tasks of the posts that cannot have changed
(rendering them is 4,000 of the 4,300 tasks of a 2,000-post blog; generating and checking them is most of
what is left of a one-post build). A post's two tasks (its HTML fragment, render_posts; its page,
render_pages) are left out only when the task Nikola would generate is the one the last build generated
and doit found up to date or ran: the Post object is the one of the last build (its files unchanged), so
are the posts before and after it, its fragment and page read no other file (no .. include, no
post-list, no data file), its outputs exist, the site has no plugins of its own and nothing listens to
Nikola's render_post signal. What a page task also reads from the whole site (the global context, the
dependencies of all pages, the template hooks, the configuration) is fingerprinted at the end of the
build; if it differs from the last build's, the build is run again in full before it counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import pathlib
import re
import types
from typing import Any


class Unfingerprintable(Exception):
    """A configuration value that cannot be compared exactly."""


def fingerprint(value: Any, depth: int = 0) -> Any:
    """A comparable, exact stand-in for a configuration value: equal fingerprints, equal configurations.
    Functions count by their code, defaults and closures (not by name only, as Nikola's own digest)."""
    if depth > 40:
        raise Unfingerprintable("nested too deep")
    deeper = functools.partial(fingerprint, depth=depth + 1)
    if value is None or isinstance(value, bool | int | str | bytes):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(deeper(item) for item in value))
    if isinstance(value, dict):  # in order: Nikola keeps the order of TRANSLATIONS, NAVIGATION_LINKS…
        return (type(value).__name__, tuple((deeper(key), deeper(item)) for key, item in value.items()))
    if isinstance(value, set | frozenset):
        return (type(value).__name__, tuple(sorted(repr(deeper(item)) for item in value)))
    if isinstance(value, types.FunctionType):
        closure = tuple(deeper(cell.cell_contents) for cell in value.__closure__ or ())
        return ("function", value.__module__, value.__qualname__, deeper(value.__code__),
                deeper(value.__defaults__), deeper(value.__kwdefaults__), closure)
    if isinstance(value, types.CodeType):
        return ("code", value.co_code, tuple(deeper(const) for const in value.co_consts), value.co_names)
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, type):
        return ("type", value.__module__, value.__qualname__)
    if isinstance(value, types.BuiltinFunctionType):  # a module's function, or a method of one object
        owner = getattr(value, "__self__", None)
        return ("builtin", getattr(value, "__module__", None), value.__qualname__,
                None if owner is None or isinstance(owner, types.ModuleType) else id(owner))
    if isinstance(value, functools.partial):
        return ("partial", deeper(value.func), deeper(value.args), deeper(value.keywords))
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta | datetime.tzinfo | pathlib.PurePath):
        return (type(value).__name__, repr(value))
    if isinstance(value, re.Pattern):
        return ("pattern", value.pattern, value.flags)
    if value is Ellipsis:
        return ("ellipsis",)
    raise Unfingerprintable(f"a value of type {type(value).__qualname__}")


def configuration(namespace: dict[str, Any]) -> Any:
    """The fingerprint of conf.py's module namespace (what Nikola is given), without Python's own names."""
    return fingerprint({key: value for key, value in namespace.items() if not key.startswith("__")})


def load_conf(path: str) -> dict[str, Any]:
    """Run conf.py again, as Nikola does, into a module of its own (not the one the site was loaded from)."""
    spec = importlib.util.spec_from_file_location("conf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.__dict__


class PostReuse:
    """Nikola's post scanner, given the Post objects of the previous scan back where their files did not
    change (see the module's documentation for when)."""

    def __init__(self) -> None:
        self.previous: dict[tuple, Any] = {}
        self.current: dict[tuple, Any] = {}
        self.replaced: dict[str, Any] = {}
        self.changes: list[str] | None = None
        self._real: Any = None
        self._reused_now: set[int] = set()
        self._reused_ids: set[int] = set()

    def install(self, site: Any) -> None:
        """In Nikola's own post scanner (as its plugin manager loaded it); other scanners make their own."""
        from nikola.post import Post

        self._real = Post
        for plugin in site.plugin_manager.get_plugins_of_category("PostScanner"):
            scan = getattr(type(plugin.plugin_object), "scan", None)
            namespace = getattr(scan, "__globals__", {})  # the module as the plugin manager loaded it
            if plugin.name == "scan_posts" and namespace.get("Post") is Post:
                namespace["Post"] = self.make

    def begin(self, changes: list[str] | None) -> None:
        self.changes, self.current = changes, {}
        self.replaced = {}  # source path → the last scan's Post of a post this scan read again

    @property
    def scanned(self) -> int:
        """Posts the last scan made."""
        return len(self.previous)

    @property
    def reused(self) -> int:
        """Of those, given back from the scan before."""
        return len(self._reused_ids)

    def end(self) -> None:
        self.previous, self.current = self.current, {}
        self._reused_ids = self._reused_now
        self._reused_now = set()

    def was_reused(self, post: Any) -> bool:
        """Whether the last scan gave `post` back from the scan before."""
        return id(post) in self._reused_ids

    def reusable(self, post: Any) -> bool:
        if self.changes is None or post.publish_later:
            return False
        if any(post.meta[lang].get("data") for lang in post.translated_to):
            return False
        stem = os.path.splitext(post.source_path)[0]
        return not any(path.startswith(stem) for path in self.changes)

    def make(self, source_path: str, config: Any, destination: str, use_in_feeds: bool, messages: Any,
             template_name: str, compiler: Any, destination_base: Any = None,
             metadata_extractors_by: Any = None) -> Any:
        base = getattr(destination_base, "_inp", destination_base)
        key = (source_path, destination, use_in_feeds, template_name, id(compiler), id(config), id(messages),
               id(metadata_extractors_by), json.dumps(base, sort_keys=True, default=repr))
        post = self.previous.get(key)
        if post is not None and self.reusable(post):
            post.__dict__.pop("_prev_post", None)  # set by the scan that follows, as on a new Post
            post.__dict__.pop("_next_post", None)
            self._reused_now.add(id(post))
        else:
            if post is not None:
                self.replaced[source_path] = post
            post = self._real(source_path, config, destination, use_in_feeds, messages, template_name, compiler,
                              destination_base=destination_base, metadata_extractors_by=metadata_extractors_by)
        self.current[key] = post
        return post


@dataclasses.dataclass
class WarmSite:
    """The holder's loaded site and what decides whether it may serve the next build."""

    doit_nikola: Any
    conf_path: str
    conf: Any  # fingerprint of the configuration the site was loaded with; None: not comparable
    why_not_comparable: str
    post_folders: tuple[str, ...]
    posts: PostReuse
    plugins_of_its_own: bool
    commit: str | None = None  # the commit of the holder's last successful build
    fingerprint: str | None = None  # site_fingerprint() at the end of that build
    neighbours: dict[int, tuple[Any, Any, Any]] = dataclasses.field(default_factory=dict)
    unchanged: list[Any] = dataclasses.field(default_factory=list)  # posts whose tasks may be left out
    list_keys: dict[str, str] = dataclasses.field(default_factory=dict)  # ListPages' keys of the last build
    list_reads: dict[str, bool] = dataclasses.field(default_factory=dict)  # ... whether each read a post's text
    twins: dict[int, Any] = dataclasses.field(default_factory=dict)  # a post read again → its last Post (listed_alike)
    own_files: dict[int, tuple[Any, tuple, bool]] = dataclasses.field(default_factory=dict)  # see _own_files_known
    known: set[int] = dataclasses.field(default_factory=set)  # of `unchanged`, those that read only their own files

    @classmethod
    def open(cls, site_dir: str) -> WarmSite | int:
        import nikola.nikola

        from pipeline.build import runner

        seen: dict[str, Any] = {}
        real_init = nikola.nikola.Nikola.__init__

        def init(site: Any, **config: Any) -> None:  # what conf.py gave, before Nikola changes anything
            try:
                seen["conf"] = configuration(config)
            except Unfingerprintable as exc:
                seen["why"] = str(exc)
            real_init(site, **config)

        nikola.nikola.Nikola.__init__ = init
        try:
            doit_nikola = runner.open_site(site_dir)
        finally:
            nikola.nikola.Nikola.__init__ = real_init
        if isinstance(doit_nikola, int):
            return doit_nikola
        site = doit_nikola.nikola
        site.init_plugins()  # what `nikola build` does first; its builds are given the site with plugins loaded
        site.init_plugins = _already_done
        runner.hold_back_undeployable(site)
        folders = []
        for wildcard, *_rest in site.config["post_pages"]:
            folder = os.path.normpath(os.path.dirname(wildcard))
            folders.append("" if folder in (".", "") else folder + "/")
        posts = PostReuse()
        posts.install(site)
        own_plugins = os.path.isdir("plugins") and any(
            entry.name not in ("__init__.py", "__pycache__") for entry in os.scandir("plugins"))
        return cls(doit_nikola, os.path.join(site_dir, "conf.py"), seen.get("conf"),
                   seen.get("why", "conf.py could not be compared"), tuple(folders), posts, own_plugins)

    def stale_reason(self, changes: list[str] | None, base: str | None) -> str | None:
        """Why this holder cannot serve a build of the tree `changes` away from `base`, or None."""
        if changes is None:
            return "the changes since the last build are not known"
        if self.commit is None or base != self.commit:
            return "the last build was not made from this loaded site"
        if "" in self.post_folders:
            return "posts are found at the top of the site"
        for path in changes:
            if not path.startswith(self.post_folders):
                return f"{path} changed (outside the post folders)"
        if self.conf is None:
            return f"conf.py cannot be compared exactly ({self.why_not_comparable})"
        try:
            again = configuration(load_conf(self.conf_path))
        except Unfingerprintable as exc:
            return f"conf.py cannot be compared exactly ({exc})"
        except Exception as exc:  # noqa: BLE001 - the build reports conf.py's errors itself
            return f"conf.py failed when run again ({type(exc).__name__})"
        if again != self.conf:
            return "conf.py gives another configuration now (it reads the environment, the time or files)"
        return None

    def scan(self, changes: list[str] | None) -> None:
        """Scan the posts again (reusing what did not change); note which posts' tasks may be left out."""
        site = self.doit_nikola.nikola
        self.posts.begin(changes)
        try:
            site.scan_posts(really=True)
        finally:
            self.posts.end()
        neighbours = {id(post): (post, post.prev_post, post.next_post) for post in site.timeline}
        self.twins = {}
        if changes is not None and self.fingerprint is not None and not self.plugins_of_its_own:
            for post in site.timeline:
                old = self.posts.replaced.get(post.source_path)
                before = None if old is None else self.neighbours.get(id(old))
                if before is not None and before[0] is old and listed_alike(old, post, before[1], before[2]):
                    self.twins[id(post)] = old
        self.unchanged = []
        if changes is not None and self.fingerprint is not None and not self.plugins_of_its_own:
            def alike(now: Any, then: Any) -> bool:  # a neighbour: the same post, or one read again listed alike
                return now is then or (now is not None and then is not None and self.twins.get(id(now)) is then)

            for post in site.timeline:
                before = self.neighbours.get(id(post))
                if (before is not None and before[0] is post
                        and alike(post.prev_post, before[1]) and alike(post.next_post, before[2])
                        and self.posts.was_reused(post)):
                    self.unchanged.append(post)
        self.neighbours = neighbours
        remember_reprs(site.timeline)
        self.known = self._own_files_known()

    def _own_files_known(self) -> set[int]:
        """The posts whose tasks may be left out (`unchanged`) that read only their own files (Skips.known),
        worked out in the holder as it scans, before the build forks. Asking a post (its sources and what its
        .dep files in cache/ list) reads its .dep files (0.17 s for 5,000 posts), so the answer is kept with the
        identity, size, modification and change times of the post's .dep files, and asked again only when one of
        those differs (a fragment made again writes its .dep file; one the build's code changed is removed before
        the build, see pipeline.build.work_tree)."""
        langs = list(self.doit_nikola.nikola.config["TRANSLATIONS"])
        kept: dict[int, tuple[Any, tuple, bool]] = {}
        for post in self.unchanged:
            try:
                signature = tuple(_file_signature(post.compiler.get_dep_filename(post, lang)) for lang in langs)
                found = self.own_files.get(id(post))
                if found is not None and found[0] is post and found[1] == signature:
                    own = found[2]
                else:
                    with _as_it_was(post):
                        own = reads_only_its_own_files(post, langs)
            except Exception:  # noqa: BLE001 - not known: the build asks it (and fails there, if it must)
                continue
            kept[id(post)] = (post, signature, own)
        self.own_files = kept
        return {key for key, (_post, _signature, own) in kept.items() if own}


@contextlib.contextmanager
def _as_it_was(post: Any) -> Any:
    """Asking a Post of the holder its dependencies adds to its dictionaries: `meta('data', lang)` puts an empty
    `data` into its metadata (a defaultdict), which would then differ from the same post read again
    (listed_alike). What the question added is taken away again."""
    tables = [post.meta, *(table for table in post.meta.values() if isinstance(table, dict)),
              post._dependency_file_fragment, post._dependency_file_page]
    keys = [set(table) for table in tables]
    try:
        yield
    finally:
        for table, before in zip(tables, keys, strict=True):
            for key in set(table) - before:
                del table[key]


def _file_signature(path: str) -> tuple | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def reads_only_its_own_files(post: Any, langs: list[str]) -> bool:
    """Whether every file `post`'s fragment and page depend on (Nikola's Post.fragment_deps and Post.deps: its
    sources, what its .dep file lists) is one of its own (its name's)."""
    stems = (os.path.splitext(post.source_path)[0], os.path.splitext(post.base_path)[0])
    return all(path.startswith(stems) for lang in langs for path in [*post.fragment_deps(lang), *post.deps(lang)])


REPR = "_pequod_repr"  # a Post's repr, as the holder worked it out once


def remember_reprs(posts: Any) -> None:
    """Work out once, in the holder, the repr of each post that has none: Nikola's Post.__repr__ (the post's
    digest in every task configuration that lists it, doit's up-to-date check and the record it keeps) stats
    the source and encodes all its metadata, for each task again (a 2,000-post blog's tag feeds: 2,000 times
    a build). A post reused by the scan (PostReuse: its files did not change) keeps it; one read again gets
    a new one. Installs the repr that answers it (Nikola's own for a post without one)."""
    from nikola.post import Post

    if not getattr(Post.__repr__, "remembered", False):
        nikolas = Post.__repr__

        def remembered(post: Any) -> str:
            found = post.__dict__.get(REPR)
            return found if found is not None else nikolas(post)

        remembered.remembered = True  # type: ignore[attr-defined]
        Post.__repr__ = remembered  # type: ignore[method-assign]
    for post in posts:
        if REPR not in post.__dict__:
            with contextlib.suppress(OSError):
                post.__dict__[REPR] = repr(post)


def listed_alike(old: Any, new: Any, old_previous: Any, old_next: Any) -> bool:
    """Whether a page that lists posts shows `new` as it showed `old` (the same post, read again), provided it reads
    no post's text: the same metadata in every language (title, date, tags, slug…), the same neighbours, the
    same kind of post. (A page that reads a post's text is never given this shortcut: ListPages.)"""
    return (new.source_path == old.source_path and new.compiler is old.compiler
            and new.translated_to == old.translated_to
            and all(new.meta[lang] == old.meta[lang] for lang in new.translated_to)
            and new.date == old.date and new.updated == old.updated
            and (new.is_draft, new.is_private, new.publish_later, new.use_in_feeds)
            == (old.is_draft, old.is_private, old.publish_later, old.use_in_feeds)
            and new.prev_post is old_previous and new.next_post is old_next)


def site_fingerprint(site: Any) -> str:
    """What every post's page task reads from the whole site (see the module's documentation)."""
    import hashlib

    from nikola.utils import CustomEncoder

    context = site.GLOBAL_CONTEXT
    hooks = {name: hook.calculate_deps() for name, hook in context["template_hooks"].items()}
    text = json.dumps([context, site.ALL_PAGE_DEPS, hooks, site.config], cls=CustomEncoder, sort_keys=True)
    return hashlib.md5(text.encode()).hexdigest()


class Skips:
    """In a build forked from a warm holder: leaves out the tasks of the posts in `candidates` that cannot
    have changed, and keeps their targets (so that they are not taken for stale output).

    A candidate's tasks are left out only if it reads only its own files (reads_only_its_own_files); `known` are
    the candidates the holder found to (WarmSite.known), the others are asked here."""

    def __init__(self, site: Any, candidates: list[Any], known: set[int] | None = None) -> None:
        self.site = site
        self.candidates = {id(post): post for post in candidates}
        self.known = known or set()
        self.targets: list[str] = []
        self.skipped: set[int] = set()
        self._decided: dict[int, bool] = {}

    def skippable(self, post: Any) -> bool:
        decided = self._decided.get(id(post))
        if decided is None:
            decided = self._decided[id(post)] = id(post) in self.candidates and (
                id(post) in self.known or reads_only_its_own_files(post, list(self.site.config["TRANSLATIONS"])))
        return decided

    def install(self) -> None:
        from blinker import signal

        if signal("render_post").receivers:
            return
        site = self.site
        real_page_renderer = site.generic_page_renderer

        def generic_page_renderer(lang: str, post: Any, filters: Any, context: Any = None) -> Any:
            if self.skippable(post):
                extension = post.compiler.extension()
                target = os.path.join(site.config["OUTPUT_FOLDER"], post.destination_path(lang, extension))
                if os.path.isfile(target):
                    self.targets.append(target)
                    self.skipped.add(id(post))
                    return iter(())
            return real_page_renderer(lang, post, filters, context)

        site.generic_page_renderer = generic_page_renderer
        for plugin in site.plugin_manager.get_plugins_of_category("Task"):
            if plugin.name == "render_posts":
                self._wrap_fragments(plugin.plugin_object)

    def _wrap_fragments(self, plugin: Any) -> None:
        real_gen_tasks = plugin.gen_tasks
        by_fragment: dict[str, Any] = {}
        site = self.site

        def left_out(post: Any) -> bool:
            """Whether `post`'s fragment tasks (every language's) are left out: then they are not even made."""
            if id(post) not in self.candidates or not self.skippable(post):
                return False
            targets = []
            for lang in site.config["TRANSLATIONS"]:
                dest = post.translated_base_path(lang)
                targets += [dest, *post.compiler.get_extra_targets(post, lang, dest)]
            if not all(map(os.path.isfile, targets)):
                return False
            self.targets.extend(targets)
            self.skipped.add(id(post))
            return True

        def gen_tasks() -> Any:
            timeline = site.timeline
            site.timeline = walked = Iterated(timeline, left_out)  # what render_posts walks through; see Iterated
            try:
                for task in real_gen_tasks():
                    for check in task.get("uptodate") or []:  # timeline_changes: the digest of the whole timeline
                        config = getattr(check, "config", None)
                        if isinstance(config, dict):
                            config.update({key: timeline for key, value in config.items() if value is walked})
                    post = by_fragment.get(task.get("name")) if task.get("basename") == "render_posts" else None
                    if post is not None and self.skippable(post) and all(map(os.path.isfile, task["targets"])):
                        self.targets.extend(task["targets"])
                        self.skipped.add(id(post))
                        continue
                    yield task
            finally:
                site.timeline = timeline

        for post in self.candidates.values():
            for lang in self.site.config["TRANSLATIONS"]:
                by_fragment[post.translated_base_path(lang)] = post
        plugin.gen_tasks = gen_tasks


def _page_key(head: tuple[str, bool], rest: tuple[str, bool]) -> str:
    """A list page's key from its two encodings (ListPages._encode: its arguments, its callers' additions)."""
    import hashlib

    return hashlib.md5(f"{head[0]}\n{rest[0]}".encode()).hexdigest()


def _may_leave_out(head: tuple[str, bool] | None, rest: tuple[str, bool] | None) -> bool:
    """Whether both encodings exist and every post named in them may be left out."""
    return head is not None and rest is not None and head[1] and rest[1]


class Iterated(list):
    """The timeline as Nikola's render_posts sees it: a list of every post (its length, its items), whose
    iteration (`for post in timeline`, how render_posts makes one fragment task per post; JSON too, so the
    timeline_changes task is given the real timeline back) leaves out the posts `left_out` says (decided once
    per post): their tasks are not made at all, rather than made and dropped."""

    def __init__(self, items: list, left_out: Any) -> None:
        super().__init__(items)
        self._left_out = left_out
        self._decided: dict[int, bool] = {}

    def __iter__(self) -> Any:
        for item in list.__iter__(self):
            out = self._decided.get(id(item))
            if out is None:
                out = self._decided[id(item)] = self._left_out(item)
            if not out:
                yield item


def _already_done(*_args: Any, **_kwargs: Any) -> None:
    """Nikola's init_plugins in a build forked from the holder: the holder has loaded them."""


_PENDING = "pequod-pending-list-page"  # in a stand-in task: what the real one is made from, if it must be
_LEFT_OUT = "pequod-left-out"  # in a stand-in task: the task it stands for is left out (ListPages._feed)


class ListPages:
    """In a build forked from a warm holder: leaves out the pages that list posts (indexes, tag, category and
    archive pages: Nikola's generic_post_list_renderer) whose task would be the one the last build generated.

    Each such page gets a key: its arguments (the language, the posts listed, the output, the template, the
    whole context, with every Post counted by its identity) and what its callers add to the task (their
    config_changed dependencies, its basename), encoded exactly (functions by their code). The page is left
    out when its key is the last build's, every post it names is one whose tasks are left out (see Skips: the
    same Post object, the same neighbours, no other file read) and its output exists. A post kept from the
    last scan has the identity it had then, so the same identity means the same post; a post made by this
    scan is never one whose tasks are left out. What every page also reads from the whole site is the
    fingerprint checked at the end of the build (Skips). The keys of this build are reported to the holder
    for the next one.

    A page that lists a post read again (its file changed) is left out too when the last time it was made it
    read no post's text (Post.text, what teasers, reading times and the like read through) and the post is
    listed alike (`twins`: the same metadata, date and neighbours, see listed_alike): its key is then computed
    with the last build's Post in its place. Whether each page read a post's text is recorded as it is made.

    To know the callers' additions before generating the page, Nikola's renderer returns a stand-in task; the
    stand-ins are resolved as Nikola yields them (left out, or made into the real task with the callers'
    additions)."""

    def __init__(self, skips: Skips, previous: dict[str, str], twins: dict[int, Any] | None = None,
                 reads: dict[str, bool] | None = None) -> None:
        self.skips = skips
        self.previous = previous
        self.keys: dict[str, str] = {}
        self.left_out = 0
        self.twins = twins or {}
        self.previous_reads = reads or {}
        self.reads: dict[str, bool] = {}  # this build's: whether each page read a post's text when last made
        self._rendering: str | None = None
        self._twin_mode = False
        self._encoded: dict[int, tuple[Any, str]] = {}  # the value is kept: its id is not given to another
        from nikola.post import Post

        self._post = Post
        self._names_skippable = True
        self.feeds_left_out = 0

    def install(self) -> bool:
        """Wrap Nikola's list renderer and task generation; False when that cannot be exact here."""
        site = self.skips.site
        for plugin in site.plugin_manager.get_plugins_of_category("TaskMultiplier"):
            if type(plugin.plugin_object).__module__ != "nikola.plugins.task.gzip":
                return False  # it sees each task as Nikola yields it, stand-ins included (gzip reads only the
                # task's name and targets, which a stand-in has as the real task)
        real_renderer = site.generic_post_list_renderer
        real_gen_tasks = site.gen_tasks
        real_text = self._post.text

        def text(post: Any, *args: Any, **kwargs: Any) -> Any:
            if self._rendering is not None:
                self.reads[self._rendering] = True
            return real_text(post, *args, **kwargs)

        def generic_post_list_renderer(lang: str, posts: Any, output_name: str, template_name: str, filters: Any,
                                       extra_context: Any) -> Any:
            args = (lang, posts, output_name, template_name, filters, extra_context)
            arguments = [lang, list(posts), output_name, template_name, extra_context]
            head = self._encode(arguments)
            if head is None:
                return real_renderer(*args)
            twin_head = None
            if not head[1] and self.twins and self.previous_reads.get(os.path.normpath(output_name)) is False:
                twin_head = self._encode(arguments, twins=True)
            return {"basename": "", "name": os.path.normpath(output_name), "targets": [output_name],
                    "uptodate": [], _PENDING: (head, twin_head, args)}

        def gen_tasks(name: str, plugin_category: str, doc: str = "") -> Any:
            for task in real_gen_tasks(name, plugin_category, doc):
                if task.pop(_LEFT_OUT, False):
                    continue
                pending = task.pop(_PENDING, None)
                if pending is not None:
                    task = self._resolve(task, pending, real_renderer)
                if task is not None:
                    yield task

        site.generic_post_list_renderer = generic_post_list_renderer
        site.gen_tasks = gen_tasks
        self._post.text = text
        for plugin in site.plugin_manager.get_plugins_of_category("Task"):
            real_feed = getattr(plugin.plugin_object, "_generate_classification_page_as_rss", None)
            if plugin.name == "render_taxonomies" and real_feed is not None:
                plugin.plugin_object._generate_classification_page_as_rss = functools.partial(self._feed, real_feed)
        return True

    def _feed(self, real: Any, taxonomy: Any, classification: Any, posts: Any, title: Any, description: Any,
              kw: Any, lang: str) -> Any:
        """Nikola's task of a tag's, category's, archive's or the blog's RSS feed, for the posts it shows; left out
        (a stand-in Nikola's gen_tasks drops) when it is the task the last build generated, every post it names
        may be left out and its output exists.

        The feed shows its first FEED_LENGTH posts (Nikola's generic_rss_feed reads no other), so its task is made
        for those: Nikola's depends on the files of every post the feed could list (5,000 posts: 5,000 files for
        the blog's feed, read by doit at every build), and an edit of an old post would make every feed it is in
        again for the same output. Same for every build of the holder, so doit compares like with like."""
        length = kw.get("feed_length") if isinstance(kw, dict) else None
        if isinstance(length, int) and not isinstance(length, bool) and length >= 0:
            posts = list(posts)[:length]
        task = real(taxonomy, classification, posts, title, description, kw, lang)
        if not isinstance(task, dict):
            return task
        actions = task.get("actions")
        if not (isinstance(task.get("name"), str) and isinstance(task.get("targets"), list) and actions
                and isinstance(actions[0], tuple) and actions[0][0] == self.skips.site.generic_rss_renderer):
            return task
        encoded = self._encode([list(actions[0][1]), len(actions),
                                {key: value for key, value in task.items() if key != "actions"}])
        if encoded is None:
            return task
        name = os.path.normpath(task["name"])
        key = self.keys[name] = _page_key(encoded, ("", True))
        if encoded[1] and self.previous.get(name) == key and all(map(os.path.isfile, task["targets"])):
            self.skips.targets.extend(task["targets"])
            self.feeds_left_out += 1
            return {"basename": task.get("basename"), "name": task["name"], "targets": task["targets"],
                    _LEFT_OUT: True}
        return task

    def _resolve(self, stand_in: dict, pending: tuple, real_renderer: Any) -> dict | None:
        head, twin_head, args = pending
        name = stand_in["name"]
        if name in self.previous_reads:
            self.reads[name] = self.previous_reads[name]
        added = [{key: value for key, value in stand_in.items() if key not in ("name", "targets")}]
        rest = self._encode(added)
        if rest is not None:
            self.keys[name] = _page_key(head, rest)  # for the next build, whether or not this one leaves it out
            if all(os.path.isfile(target) for target in stand_in["targets"]):
                # With this build's posts, or with the last build's where they are listed alike (the key kept
                # is the one with this build's posts: they show alike).
                twin_rest = None if twin_head is None or not twin_head[1] else self._encode(added, twins=True)
                for encoded in ((head, rest), (twin_head, twin_rest)):
                    if _may_leave_out(*encoded) and self.previous.get(name) == _page_key(*encoded):
                        self.skips.targets.extend(stand_in["targets"])
                        self.left_out += 1
                        return None
        task = real_renderer(*args)  # the task Nikola makes, with what its callers added to the stand-in
        for key, value in stand_in.items():
            if key == "uptodate":
                task["uptodate"] = task["uptodate"] + value
            elif key == "task_dep":
                task["task_dep"] = [*task.get("task_dep", []), *value]
            elif key not in ("name", "targets"):
                task[key] = value
        actions = task.get("actions") or []
        if actions and isinstance(actions[0], tuple) and actions[0][0] == self.skips.site.render_template:
            task["actions"] = [(self._recording(name, actions[0][0]), actions[0][1]), *actions[1:]]
        return self.skips.site.clean_task_paths(task)

    def _recording(self, name: str, render: Any) -> Any:
        """Nikola's render action of the page `name`, noting whether it reads a post's text."""
        def render_page(*args: Any) -> Any:
            self.reads[name] = False
            self._rendering = name
            try:
                return render(*args)
            finally:
                self._rendering = None
        return render_page

    def _encode(self, value: Any, twins: bool = False) -> tuple[str, bool] | None:
        """(an exact text of `value`, whether every post in it may be left out), or None when it cannot be
        encoded exactly. With `twins`, a post listed alike is encoded as its last build's Post."""
        self._names_skippable = True
        self._twin_mode = twins
        try:
            text = json.dumps(value, default=self._default, check_circular=True)
        except (Unfingerprintable, TypeError, ValueError, RecursionError):
            return None
        finally:
            self._twin_mode = False
        return text, self._names_skippable

    def _default(self, value: Any) -> Any:
        if isinstance(value, self._post):
            twin = self.twins.get(id(value)) if self._twin_mode else None
            if twin is not None:
                return ["post", id(twin)]
            if id(value) not in self.skips.candidates or not self.skips.skippable(value):
                self._names_skippable = False
            return ["post", id(value)]
        from nikola.utils import TranslatableSetting, config_changed

        if isinstance(value, config_changed):
            return ["config_changed", value.identifier, value.config]
        if isinstance(value, TranslatableSetting):
            return ["setting", value._inp, value.default_lang]
        if isinstance(value, set | frozenset):
            return ["set", sorted(map(repr, value))]
        known = self._encoded.get(id(value))
        if known is None:  # functions, dates… (kept while the build generates its tasks: nothing runs then)
            known = self._encoded[id(value)] = (value, repr(fingerprint(value)))
        return ["value", known[1]]
