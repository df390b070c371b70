"""The deploy page at `GET /_site/`: what is live, what failed and why, the history, the kept releases.

A pure function of the deploy status; everything that comes from git (subjects, authors, logs) is
escaped. Anyone sees the live release; the owner's part (history, logs, scheduled posts, links, kept
releases) is rendered only for a request with the token (or from inside the instance): a small script
sends the typed token as a bearer token, shows the owner's part it gets, refreshes the page every 15 s
and sends rollbacks and clean builds. The token stays in the page's memory, never in storage or a cookie.

The page shares its origin with pushed pages, so serve.py answers it with HEADERS: a CSP that runs only
this module's own style and script (by hash), no framing, and an opener policy that cuts it off from the
window that opened it; pushed scripts can neither frame it nor keep a handle on a window showing it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from typing import Any

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#1b1f23}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #ddd;
vertical-align:top}code{font-size:.85em}pre{white-space:pre-wrap;background:#f6f8fa;padding:.5rem;font-size:.8em}
.ok{color:#116329}.failed{color:#a40e26}.box{border:1px solid #ddd;border-radius:6px;padding:.6rem .8rem}
.error{border-color:#a40e26;background:#fff5f5}@media(max-width:40rem){td,th{display:block;border:0}
tr{display:block;border-bottom:1px solid #ddd;padding:.3rem 0}}
"""

SCRIPT = """
var token = '', field = document.getElementById('token');
function say(text) { var out = document.getElementById('message'); if (out) out.textContent = text; }
function answer(r) {
  return r.ok ? r.text() : r.json().then(function (a) { throw new Error(a.message || r.statusText); });
}
function refresh() {
  return fetch(location.pathname, {cache: 'no-store', headers: token ? {'Authorization': 'Bearer ' + token} : {}})
    .then(answer).then(function (text) {
      var page = new DOMParser().parseFromString(text, 'text/html');
      ['live', 'owner'].forEach(function (id) {
        var fresh = page.getElementById(id), old = document.getElementById(id);
        if (fresh && old && !old.querySelector('details[open]')) old.replaceWith(document.adoptNode(fresh));
      });
    });
}
var unlock = document.getElementById('unlock');
if (unlock) unlock.addEventListener('submit', function (event) {
  event.preventDefault();
  if (!field.value) { say('type the token first'); return; }
  token = field.value;
  field.value = '';
  say('checking the token');
  refresh().then(function () { say('the deploy data is shown'); },
                 function (error) { token = ''; say(error.message); });
});
document.addEventListener('submit', function (event) {
  var form = event.target;
  if (!form.classList.contains('rollback') && !form.classList.contains('rebuild')) return;
  event.preventDefault();
  fetch(form.action, {method: 'POST', headers: {'Authorization': 'Bearer ' + (token || field.value),
    'Content-Type': 'application/x-www-form-urlencoded'}, body: new URLSearchParams(new FormData(form))})
    .then(function (r) { return r.json(); })
    .then(function (answer) { alert(answer.message); return refresh(); })
    .catch(function (error) { say(error.message); });
});
setInterval(function () { refresh().catch(function (error) { say(error.message); }); }, 15000);
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# For every response under /_site/ (the page, its JSON and the rollback answers alike).
HEADERS = (
    ("Content-Security-Policy", f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _commit(record: dict[str, Any]) -> str:
    commit = record.get("commit") or ""
    subject = record.get("subject")
    return f"<code>{_e(commit[:12])}</code>" + (f" {_e(subject)}" if subject else "")


def _links(report: Any) -> str:
    """The live release's link report (pipeline.publish.links): broken internal links, page → target."""
    if not isinstance(report, dict):
        return "<h2>Links</h2><p>No link report for the live release yet.</p>"
    if report.get("error"):
        return f"<h2>Links</h2><p class=failed>The links were not checked: {_e(report['error'])}</p>"
    count = int(report.get("broken_count") or 0)
    summary = (f"{_e(report.get('checked_pages'))} pages checked in {_e(report.get('seconds'))} s"
               + (f", {_e(report.get('skipped_pages'))} too large or too many to check" if report.get("skipped_pages")
                  else ""))
    if not count:
        return f"<h2>Links</h2><p class=ok>No broken internal links ({summary}).</p>"
    broken = [item for item in report.get("broken") or [] if isinstance(item, dict)]
    shown = f"; the first {len(broken)} are listed" if len(broken) < count else ""
    rows = "".join(f"<tr><td><a href='{_e(item.get('page'))}'>{_e(item.get('page'))}</a></td>"
                   f"<td><code>{_e(item.get('target'))}</code></td></tr>" for item in broken)
    return (f"<h2>Links</h2><p class=failed>{count} broken internal link(s) ({summary}{shown}).</p>"
            f"<table class=links><tr><th>page</th><th>links to</th></tr>{rows}</table>")


def render(status: dict[str, Any], *, rollback_enabled: bool, owner: bool = True, now: float | None = None) -> str:
    """The whole page as HTML: for the owner everything; for anyone else the live release and a form
    that asks for the token, with which the script fetches the owner's page and shows its part."""
    now = time.time() if now is None else now
    current = status.get("current") or {}
    builds = status.get("builds") or []
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
             f"content='width=device-width,initial-scale=1'><title>Deploys</title><style>{STYLE}</style></head><body>",
             "<h1>Deploys</h1>",
             f"<div id=live>{_live(current, builds) if owner else _public_live(current, status.get('healthy'))}</div>",
             _unlock(rollback_enabled),
             "<div id=owner>", *(_owned(status, current, builds, rollback_enabled) if owner else
                                  [_locked(rollback_enabled)]), "</div>",
             f"<p><small>Page made {_e(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)))}; "
             f"it refreshes itself every 15 s.</small></p><script>{SCRIPT}</script></body></html>"]
    return "".join(parts)


def _owned(status: dict[str, Any], current: dict[str, Any], builds: list[dict[str, Any]],
           rollback_enabled: bool) -> list[str]:
    """The owner's part: errors, the remote, scheduled posts, links, the history, the kept releases."""
    return [*_problems(status),
            f"<p>Remote {_e(status.get('remote'))}, branch {_e(status.get('branch'))}; last checked "
            f"{_e(status.get('last_check'))}.</p>",
            _scheduled(status.get("scheduled")), _previews(status.get("previews")), _links(status.get("links")),
            _history(builds),
            _kept_releases(status.get("releases") or [], current, rollback_enabled)]


def _unlock(rollback_enabled: bool) -> str:
    """The token field (kept in the page's memory only, sent as a bearer token, never stored)."""
    if not rollback_enabled:
        return ""
    return ("<form id=unlock class=box><label>Token (the site's <code>WEBHOOK_SECRET</code>) "
            "<input id=token type=password autocomplete=new-password></label> <button>Show the deploy data</button> "
            "<span id=message role=status></span></form>")


def _locked(rollback_enabled: bool) -> str:
    if not rollback_enabled:
        return ("<p>The history, build logs, scheduled posts, link report and kept releases are the site "
                "owner's. This site has no token (<code>WEBHOOK_SECRET</code>): they are shown only from inside "
                "its instance.</p>")
    return ("<p>The history, build logs, scheduled posts, link report and kept releases are the site owner's: "
            "give the site's token to see them, or <code>curl -H 'Authorization: Bearer $WEBHOOK_SECRET' "
            "http://HOST/_site/status</code>.</p>")


def _public_live(current: dict[str, Any], healthy: Any) -> str:
    """What a reader may know: the live release, since when, healthy or not."""
    if not current:
        return "<div class='box error'>No release is live yet.</div>"
    return (f"<div class='box{'' if healthy else ' error'}'><strong>Live:</strong> release "
            f"<code>{_e(current.get('release'))}</code>, live since {_e(current.get('built_at'))}; "
            f"{'healthy' if healthy else 'not healthy (it serves, but does not publish)'}</div>")


def _live(current: dict[str, Any], builds: list[dict[str, Any]]) -> str:
    """What is live: its commit, release, age and how it was built."""
    if not current:
        return "<div class='box error'>No release is live yet.</div>"
    live_build = next((b for b in builds if b.get("release") and b.get("release") == current.get("release")), {})
    return ("<div class=box><strong>Live:</strong> " + _commit({**live_build, "commit": current.get("commit")})
            + (f" by {_e(live_build.get('author'))}" if live_build.get("author") else "")
            + f"<br>release <code>{_e(current.get('release'))}</code>, live since {_e(current.get('built_at'))}, "
            f"built in {_e(current.get('build_seconds'))} s"
            + (f" ({_e(live_build.get('worker'))} worker, {_e(live_build.get('mode'))}"
               + (", site kept loaded" if live_build.get("site") == "warm" else "") + ")" if live_build else "")
            + "</div>")


def _problems(status: dict[str, Any]) -> list[str]:
    """The last error, and a notification that was not delivered."""
    parts = []
    error = status.get("last_error")
    if error:
        parts.append(f"<div class='box error'><strong>Last error</strong> ({_e(error.get('at'))}): "
                     f"{_e(error.get('message'))}<br>The live release stays until a commit builds.</div>")
    notes = status.get("notifications") or {}
    if notes.get("last_error"):
        parts.append(f"<div class='box error'><strong>Notification not delivered</strong> "
                     f"({_e(notes['last_error'].get('at'))}): {_e(notes['last_error'].get('message'))}; "
                     f"{_e(notes.get('delivered', 0))} delivered, {_e(notes.get('failed', 0))} not.</div>")
    return parts


def _scheduled(scheduled: Any) -> str:
    """The posts the live release holds back until they are due (nothing when there are none)."""
    items = [item for item in scheduled or [] if isinstance(item, dict)]
    if not items:
        return ""
    rows = "".join(f"<tr><td>{_e(item.get('at'))}</td><td>{_e(item.get('title'))} "
                   f"(<code>{_e(item.get('source'))}</code>)</td></tr>" for item in items)
    return ("<h2>Scheduled</h2><p>Posts dated in the future: published by themselves when due.</p>"
            f"<table><tr><th>due (UTC)</th><th>post</th></tr>{rows}</table>")


def _previews(previews: Any) -> str:
    """Each branch's preview (pipeline.publish.previews): branch, commit, address, state and last error (nothing when
    the site has none)."""
    items = sorted(((label, item) for label, item in (previews or {}).items() if isinstance(item, dict)),
                   key=lambda pair: str(pair[1].get("branch")))
    if not items:
        return ""
    rows = []
    for _label, item in items:
        state = str(item.get("state") or "")
        error = (f"<details><summary>{_e(item.get('error'))}</summary><pre>{_e(item.get('log_tail'))}</pre>"
                 "</details>" if item.get("error") else "")
        address = str(item.get("address") or "")
        link = f"<a href='{_e(address)}'>{_e(address)}</a>" if address.startswith(("http://", "https://")) else ""
        kind = {"live": "ok", "failed": "failed"}.get(state, "building")
        rows.append(f"<tr><td><code>{_e(item.get('branch'))}</code></td><td>{_commit(item)}</td><td>{link}</td>"
                    f"<td class={kind}>{_e(state)}</td><td>{_e(item.get('finished_at'))}{error}</td></tr>")
    return ("<h2>Previews</h2><p>Every other branch, built as the site is and served at its own address "
            "(user <code>preview</code>, the previews' password): never the live site.</p>"
            "<table><tr><th>branch</th><th>commit</th><th>address</th><th>state</th><th>built</th></tr>"
            + "".join(rows) + "</table>")


def _history(builds: list[dict[str, Any]]) -> str:
    """Every recorded build, newest first, with its error and log tail folded away."""
    parts = ["<h2>History</h2><table><tr><th>result</th><th>commit</th><th>finished</th><th>seconds</th>"
             "<th>mode</th></tr>"]
    for build in builds:
        result = build.get("result") or ""
        row = (f"<tr><td class={'ok' if result == 'success' else 'failed'}>{_e(result)}</td>"
               f"<td>{_commit(build)}")
        if build.get("error") or build.get("log_tail"):
            row += (f"<details><summary>{_e(build.get('error') or 'log')}</summary>"
                    f"<pre>{_e(build.get('log_tail'))}</pre></details>")
        row += (f"</td><td>{_e(build.get('finished_at'))}</td><td>{_e(build.get('build_seconds'))}</td>"
                f"<td>{_e(build.get('mode'))}</td></tr>")
        parts.append(row)
    parts.append("</table>")
    return "".join(parts)


def _kept_releases(kept: list[str], current: dict[str, Any], rollback_enabled: bool) -> str:
    """The kept releases, newest first; with rollback enabled, a form to make each earlier one live."""
    parts = ["<h2>Kept releases</h2>"]
    if rollback_enabled:
        parts.append("<p>An earlier release is made live until the next push with the token above, or: "
                     "<code>curl -X POST -H 'Authorization: Bearer $WEBHOOK_SECRET' -d release=ID "
                     "http://HOST/_site/rollback</code>.</p>")
    if rollback_enabled:
        parts.append("<form class=rebuild method=post action=/_site/rebuild><button>clean build and publish"
                     "</button> the branch's head, built from scratch (nothing of earlier builds reused), live when "
                     "it succeeds; or <code>curl -X POST -H 'Authorization: Bearer $WEBHOOK_SECRET' "
                     "http://HOST/_site/rebuild</code>.</form>")
    parts.append("<table>")
    for release in reversed(kept):
        live = release == current.get("release")
        parts.append(f"<tr><td><code>{_e(release)}</code>{' (live)' if live else ''}</td><td>")
        if rollback_enabled and not live:
            parts.append(f"<form class=rollback method=post action=/_site/rollback><input type=hidden name=release "
                         f"value='{_e(release)}'><button>make live</button></form>")
        parts.append("</td></tr>")
    parts.append("</table>")
    return "".join(parts)
