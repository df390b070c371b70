"""The documentation holds together: README.md and docs/*.md link only to what exists, and every long
option that `pequod-agent --help` and `./bootstrap.sh --help` print is documented somewhere in them.

Pure and fast: reads files and runs the two `--help`s (neither needs root nor changes anything:
`pequod-agent` parses its arguments before any work, and `bootstrap.sh` handles `--help` in its argument
loop, before its first step)."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOCS_PATH = re.compile(r"`(docs/[^`\s]+)`")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LONG_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for _number, line in prose(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, line in prose(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: …
                continue
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: ({target})"
            if not resolved.is_file():
                problems.append(f"{where}: no such file")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                problems.append(f"{where}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
        for path in DOCS_PATH.findall(line):
            if not (ROOT / path.partition("#")[0]).is_file():
                problems.append(f"{page.relative_to(ROOT)}:{number}: `{path}`: no such file")
    return problems


def test_pages_exist() -> None:
    assert (ROOT / "README.md").is_file()
    assert len(PAGES) > 1, "docs/*.md is empty"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_slug_follows_github() -> None:
    assert slug("Manifest reference (`pequod.xml`)") == "manifest-reference-pequodxml"
    assert slug("The build sandbox: what code in a pushed commit can and cannot do") == (
        "the-build-sandbox-what-code-in-a-pushed-commit-can-and-cannot-do")
    assert slug("Failing the build instead: `LINKS_BROKEN_FAIL`") == "failing-the-build-instead-links_broken_fail"


def help_text(command: list[str]) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}: {done.stderr}"
    assert done.stdout.strip(), f"{' '.join(command)} printed nothing"
    return done.stdout


def documented_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "container", "--help"],  # pequod-agent (pyproject's [project.scripts])
    ["bash", str(ROOT / "bootstrap.sh"), "--help"],
], ids=["pequod-agent", "bootstrap.sh"])
def test_every_option_is_documented(command: list[str]) -> None:
    options = set(LONG_OPTION.findall(help_text(command)))
    assert options, "no long options found in the help text"
    text = documented_text()
    missing = sorted(option for option in options if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text))
    assert missing == [], f"options {' '.join(command[-2:])} prints that README.md and docs/ do not mention"


REFERENCE_MARK = "<!-- Generated from pipeline/config.py's SETTINGS by `python -m pipeline.config --reference`"


def test_the_settings_reference_is_the_settings_table() -> None:
    """docs/configuration.md's pipeline settings are printed from pipeline.config.SETTINGS, never edited."""
    from pipeline import config

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert REFERENCE_MARK in text, "docs/configuration.md lost the mark before its settings table"
    after = text.split(REFERENCE_MARK, 1)[1].split("\n", 1)[1]
    documented = after.split("\n\n", 1)[0] + "\n"
    _assert_generated(documented, config.reference(), "pipeline.config.SETTINGS",
                      "docs/configuration.md's settings table differs from pipeline/config.py's SETTINGS; replace "
                      "it with the output of `python -m pipeline.config --reference`")


def _assert_generated(documented: str, wanted: str, source: str, what_to_do: str) -> None:
    """A generated part of docs/configuration.md is what its table prints; otherwise `what_to_do` and the diff."""
    diff = "".join(difflib.unified_diff(documented.splitlines(True), wanted.splitlines(True),
                                        "docs/configuration.md", source))
    assert documented == wanted, f"{what_to_do}:\n{diff}"


KEYS_MARK = "<!-- Generated from container/yaml_keys.py's KEYS by `python -m container.yaml_keys --reference`"
KEYS_END = "<!-- End of the generated bootstrap YAML reference. -->"


def test_the_bootstrap_yaml_reference_is_the_keys_table() -> None:
    """docs/configuration.md's bootstrap YAML keys are printed from container.yaml_keys.KEYS, never edited."""
    from container import yaml_keys

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert KEYS_MARK in text, "docs/configuration.md lost the mark before its bootstrap YAML keys"
    after = text.split(KEYS_MARK, 1)[1].split("\n", 1)[1]
    assert KEYS_END in after, "docs/configuration.md lost the mark after its bootstrap YAML keys"
    documented = after.split(KEYS_END, 1)[0]
    _assert_generated(documented, yaml_keys.reference(), "container.yaml_keys.KEYS",
                      "docs/configuration.md's bootstrap YAML keys differ from container/yaml_keys.py's KEYS; "
                      "replace them with the output of `python -m container.yaml_keys --reference`")
