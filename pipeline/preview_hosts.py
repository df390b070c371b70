"""Preview names and who may read a preview: shared by the publisher (pipeline.publish.previews) and serve.py, light
enough for the server's idle memory.

A branch's preview answers at `LABEL--HOST`, where HOST is PREVIEWS_HOST (`SITE.DOMAIN`, set by the agent)
and LABEL the branch name made a DNS label as Cloudflare Pages does it: lower case, anything outside
`[a-z0-9-]` becomes `-` (runs of dashes become one, so `--` only ever separates the label from the site),
dashes trimmed, cut so `LABEL--SITE` fits 63 characters. An empty label, or one two branches share, gets a
short hash of the branch name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

LABEL_MAX = 63  # one DNS label
LABEL = re.compile(r"[a-z0-9](?:-?[a-z0-9])*")  # a branch's label: no leading, trailing or double dash
USER = "preview"  # HTTP Basic's user name for every preview
REALM = 'Basic realm="preview", charset="UTF-8"'
HEADERS = (("X-Robots-Tag", "noindex, nofollow"), ("Cache-Control", "private, no-store"))


def room(site: str) -> int:
    """Characters a branch's label may have beside `--SITE` in one DNS label."""
    return LABEL_MAX - 2 - len(site)


def plain_label(branch: str, space: int) -> str:
    label = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", branch.lower())).strip("-")
    return label[:space].rstrip("-")


def _named(branch: str, space: int, level: int) -> str:
    """The label of `branch` at `level`: 0 its plain label, 1 and 2 that with a hash of 6 or 16 digits, 3 the
    hash alone (as long as fits)."""
    if level == 0:
        return plain_label(branch, space)
    digest = hashlib.sha256(branch.encode()).hexdigest()
    if level == 3:
        return digest[:space]
    digits = 6 if level == 1 else 16
    base = plain_label(branch, space - digits - 1)
    return f"{base}-{digest[:digits]}" if base else digest[:digits]


def labels(branches: Iterable[str], site: str) -> dict[str, str]:
    """Each branch's label (branch → label), unique among `branches` and a function of them alone: a branch
    whose label another one shares (or which is empty) gets a hash, longer until it is unique."""
    space = room(site)
    names = sorted(set(branches))
    level = dict.fromkeys(names, 0)
    for _ in range(8):
        named = {branch: _named(branch, space, level[branch]) for branch in names}
        counts = Counter(named.values())
        clashing = [branch for branch in names if not named[branch] or counts[named[branch]] > 1]
        if not clashing:
            return named
        for branch in clashing:
            level[branch] = min(level[branch] + 1, 3)
    # Only a hash prefix shared by two names is left (2^-84 at least): the later name gets its position.
    taken: set[str] = set()
    for branch in names:
        label = named[branch]
        while label in taken:
            label = f"{label[:space - 4]}-{len(taken):03d}"
        named[branch] = label
        taken.add(label)
    return named


def label_of(host: str, previews_host: str) -> str | None:
    """The preview label of a request's (canonical) Host, or None when it is not a preview's host."""
    suffix = "--" + previews_host
    if not host.endswith(suffix):
        return None
    label = host[:-len(suffix)]
    return label if LABEL.fullmatch(label) and len(label) <= room(previews_host.split(".", 1)[0]) else None


def address(label: str, previews_host: str, scheme: str = "https") -> str:
    return f"{scheme}://{label}--{previews_host}/"


def choose(branches: dict[str, str], seen: dict[str, Any], live_branch: str, most: int,
           now: float) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Which branches get a preview: (branch → {commit, pushed}: when each branch's commit was first seen, the
    newest first; the `most` most recently pushed branches but the live one)."""
    known: dict[str, dict[str, Any]] = {}
    for branch, commit in branches.items():
        if branch == live_branch:
            continue
        old = seen.get(branch)
        pushed = old.get("pushed") if isinstance(old, dict) and old.get("commit") == commit else None
        known[branch] = {"commit": commit, "pushed": pushed if isinstance(pushed, int | float) else now}
    order = sorted(known, key=lambda branch: (-known[branch]["pushed"], branch))
    return known, order[:most]


def basic_password(authorization: str) -> str | None:
    """The password of `Authorization: Basic …` for the user `preview`; None for anything else."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or len(value) > 1024:
        return None
    try:
        user, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if colon and user == USER else None
