"""The first-party import graph (read with `ast`, imports inside functions included): no cycles, a pure plan,
the agent importing nothing of the blog's package, programs started only by the two runners, and the blog's three
rooms (build, publish, serve) apart. Pure: no root, nothing run."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("container", "pipeline")
# The agent's gateways to the outside: Docker, netlink, iptables, HAProxy, Tayga, processes, volumes, files.
GATEWAYS = {f"container.{name}" for name in (
    "engine", "runtime", "image", "base_image", "network", "firewall", "nat64", "frontend", "daemon", "proc",
    "volume", "certificates", "state", "teardown", "tables", "metrics", "agent", "cli", "checks",
)}
SYSTEMS = {"docker", "pyroute2", "subprocess", "yaml"}  # the plan and its records are pure: no YAML parser


def _modules() -> dict[str, Path]:
    """Every first-party module, in sub-packages too: {dotted name: file}."""
    found = {"serve": REPO_ROOT / "serve.py"}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(first-party modules `name` imports, top-level other modules it imports), anywhere in the file."""
    path = MODULES[name]
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    local: set[str] = set()
    other: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in (*PACKAGES, "serve"):
                # `import a.b.c` names a module, or something in one: the longest first-party module it names.
                parts = target.split(".")
                names = [".".join(parts[:depth]) for depth in range(len(parts), 0, -1)]
                module = next((n for n in names if n in MODULES), None)
                if module is not None and module != name:
                    local.add(module)
            else:
                other.add(target.split(".")[0])
    return local, other


GRAPH = {name: _imports(name) for name in MODULES}


def _closure(start: str) -> set[str]:
    seen: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending += GRAPH[name][0]
    return seen - {start}


def _a_cycle() -> list[str] | None:
    """One import cycle among the first-party modules, as a path back to its start; None without one."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(GRAPH):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(GRAPH[root][0]))]
        state[root] = 1
        while stack:  # iterative depth-first search
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif following not in state:
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(GRAPH[following][0])))
    return None


def test_the_graph_is_read() -> None:
    assert "container.runtime" in GRAPH["container.image"][0]  # a top-level import
    assert "pipeline.build.site_holder" in GRAPH["pipeline.build.worker"][0]  # one inside a function
    assert "pipeline.publish.triggers" in GRAPH["pipeline.publish.watcher"][0]  # `from pipeline.publish import x`
    assert "docker" in GRAPH["container.runtime"][1]


def test_no_import_cycles() -> None:
    cycle = _a_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_plan_reaches_no_gateway_and_no_system() -> None:
    reached = _closure("container.plan") | {"container.plan"}
    assert not reached & GATEWAYS, f"container.plan imports gateways: {sorted(reached & GATEWAYS)}"
    systems = {name: sorted(GRAPH[name][1] & SYSTEMS) for name in reached if GRAPH[name][1] & SYSTEMS}
    assert not systems, f"container.plan reaches modules importing {systems}"


RUNNERS = {"container.proc", "pipeline.proc"}  # the one gateway to programs of each deployable


def test_only_the_runners_import_subprocess() -> None:
    """Every program the agent or the blog starts goes through its runner (a time limit, a one-line error)."""
    others = sorted(name for name in MODULES if "subprocess" in GRAPH[name][1] and name not in RUNNERS)
    assert not others, f"import subprocess outside {sorted(RUNNERS)}: {others}"
    assert all("subprocess" in GRAPH[name][1] for name in RUNNERS)
    shells = sorted(name for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                    and node.attr in ("system", "popen", "posix_spawn", "posix_spawnp"))
    assert not shells, f"os.system, os.popen or os.posix_spawn outside the runners: {shells}"


def test_the_agent_imports_nothing_of_the_blog() -> None:
    """The agent and the blog image are released apart: the agent knows the blog only by its manifest."""
    used = {module for name in MODULES if name.startswith("container")
            for module in GRAPH[name][0] if not module.startswith("container")}
    assert not used, f"container/ imports {sorted(used)}"


# The blog's three rooms, named for what they trust: what runs beside code from git (the builder), what publishes
# (the watcher and what it drives), what serves readers. Everything else of pipeline/ is shared: the contract
# between them (settings, the data directory's layout, the files on it).
ROOMS = ("pipeline.build", "pipeline.publish", "pipeline.serve")
# The one module of the build the publisher may import (and the package's __init__, which holds nothing): the
# requests and answers they exchange, and what a request names (the build's environment, what it may read).
BUILD_PROTOCOL = "pipeline.build.protocol"
CLI = "pipeline.__main__"  # the command line may import from every room


def _room(name: str) -> str | None:
    return next((room for room in ROOMS if name == room or name.startswith(room + ".")), None)


def _crossings(allowed: dict[str | None, set[str | None]]) -> list[str]:
    """Imports from one room into another that `allowed` ({room: the rooms it may import}) does not list."""
    return sorted(f"{name} -> {module}" for name in MODULES if name.startswith("pipeline.") and name != CLI
                  for module in GRAPH[name][0] if module.startswith("pipeline.")
                  and _room(module) != _room(name) and _room(module) not in allowed[_room(name)])


def test_every_pipeline_module_is_in_a_room_or_shared() -> None:
    """The rooms are the packages of pipeline/: a new sub-package is a new room, and needs its rules here."""
    packages = {name for name, path in MODULES.items() if name.startswith("pipeline.") and path.stem == "__init__"}
    assert packages == set(ROOMS), f"pipeline/'s sub-packages are {sorted(packages)}, the rooms {sorted(ROOMS)}"


def test_the_rooms_import_only_what_they_trust() -> None:
    """build imports nothing of publish or serve; serve nothing of build or publish; publish nothing of serve and
    of build only its protocol; the shared modules nothing of any room (but the CLI, which starts them all)."""
    shared = None
    crossings = _crossings({
        "pipeline.build": {shared},
        "pipeline.publish": {shared, "pipeline.build"},  # the protocol only: checked below
        "pipeline.serve": {shared},
        shared: set(),
    })
    assert not crossings, f"imports across the rooms: {crossings}"
    into_build = sorted(f"{name} -> {module}" for name in MODULES if _room(name) == "pipeline.publish"
                        for module in GRAPH[name][0]
                        if _room(module) == "pipeline.build" and module not in ("pipeline.build", BUILD_PROTOCOL))
    assert not into_build, f"the publisher imports of the build only {BUILD_PROTOCOL}: {into_build}"


def test_the_publisher_loads_nothing_of_the_build_but_its_protocol() -> None:
    """What the publisher imports of the build, also through other modules: the protocol, nothing that confines
    or runs a build (the sandbox, the worker, Nikola's runner)."""
    for name in MODULES:
        if _room(name) == "pipeline.publish":
            reached = {module for module in _closure(name) if _room(module) == "pipeline.build"}
            assert reached <= {"pipeline.build", BUILD_PROTOCOL}, f"{name} reaches {sorted(reached)}"


def test_serve_py_imports_nothing_of_build_or_publish() -> None:
    """The server reads what the publisher wrote (status, releases, the link report); it runs none of it."""
    reached = {module for module in _closure("serve") if _room(module) in ("pipeline.build", "pipeline.publish")}
    assert not reached, f"serve.py reaches {sorted(reached)}"
