"""Two deployables, two dependency sets (docs/deployables.md): the blog (pipeline/, serve.py) installs
pyproject.toml's core list and its `blog` extra, the host agent (container/) the core list and `agent`.
Every library a side imports is declared for that side, and neither side needs the other's libraries."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
LOCAL = {"pipeline", "container", "serve"}
BLOG_ONLY = {"nikola", "cherrypy", "gitpython", "pyseccomp"}
AGENT_ONLY = {"docker", "pyroute2", "cryptography", "pyyaml"}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (`Nikola==8.3.3` -> `nikola`)."""
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _declared(extra: str) -> set[str]:
    return {_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"][extra]}


def _with_requirements(names: set[str]) -> set[str]:
    """`names` and everything they require on this platform, as installed here (extras left out)."""
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(_name(text))
    return seen


def _source(module: str) -> Path | None:
    """The file of a local module (`pipeline.layout` -> pipeline/layout.py), None if not local."""
    if module.split(".")[0] not in LOCAL:
        return None
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _third_party_imports(start: list[Path]) -> dict[str, str]:
    """Top-level third-party modules imported (anywhere, also inside functions) by `start` and by the local
    modules they import, transitively: {module: a file importing it}."""
    found: dict[str, str] = {}
    pending, seen = list(start), set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in LOCAL:
                    parts = module.split(".")
                    for depth in range(1, len(parts) + 1):  # the package's __init__ runs too
                        source = _source(".".join(parts[:depth]))
                        if source:
                            pending.append(source)
                elif top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(REPO_ROOT)))
    return found


def _distributions(imports: dict[str, str]) -> dict[str, str]:
    owners = metadata.packages_distributions()
    result = {}
    for module, where in imports.items():
        assert module in owners, f"{where} imports {module}, which no installed distribution provides"
        for owner in owners[module]:
            result[_name(owner)] = f"{where} (import {module})"
    return result


BLOG_CODE = sorted((REPO_ROOT / "pipeline").rglob("*.py")) + [REPO_ROOT / "serve.py"]
AGENT_CODE = sorted((REPO_ROOT / "container").rglob("*.py"))


@pytest.mark.parametrize(("extra", "code", "other_side"), [
    ("blog", BLOG_CODE, AGENT_ONLY),
    ("agent", AGENT_CODE, BLOG_ONLY),
], ids=["blog", "agent"])
def test_each_side_imports_only_what_its_extra_installs(extra: str, code: list[Path], other_side: set[str]) -> None:
    used = _distributions(_third_party_imports(code))
    installed = _with_requirements(_declared(extra))
    missing = {name: where for name, where in used.items() if name not in installed}
    assert not missing, f"imported but not installed by pequod[{extra}] (add to pyproject.toml): {missing}"
    needless = {name: where for name, where in used.items() if name in other_side}
    assert not needless, f"the {extra} side imports the other side's libraries: {needless}"


def test_the_extras_do_not_overlap() -> None:
    core = {_name(requirement) for requirement in PROJECT["dependencies"]}
    blog, agent = _declared("blog") - core, _declared("agent") - core
    assert not core & (BLOG_ONLY | AGENT_ONLY)
    assert not blog & agent
    assert blog >= BLOG_ONLY and agent >= AGENT_ONLY


@pytest.mark.system
def test_the_agent_installs_and_starts_without_the_blog_libraries(tmp_path: Path) -> None:
    """The real install bootstrap.sh makes, into a fresh venv (~10 s with a warm pip cache; needs the index)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{REPO_ROOT}[agent]"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    listing = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert not {_name(line) for line in listing.splitlines()} & BLOG_ONLY, listing
    agent_help = subprocess.run([str(venv / "bin/pequod-agent"), "--help"], capture_output=True, text=True, timeout=60)
    assert agent_help.returncode == 0 and "--bootstrap" in agent_help.stdout, agent_help.stderr
    # Every agent module imports with what the agent's extra installed.
    modules = sorted(f"container.{path.stem}" for path in AGENT_CODE if path.stem != "__main__")
    imported = subprocess.run([str(venv / "bin/python"), "-c", f"import {', '.join(modules)}"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
