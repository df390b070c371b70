"""Supervision decisions as pure functions of state and time: when to replace an instance, how long to
back off, which running instance to adopt, when a replaced one is removed. `instances.py` acts on them (its `Supervised`
holds one application's live state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from container.records import Instance

MAX_BACKOFF = 60.0
STABLE_AFTER = 30.0  # an instance that ran this long resets the crash-loop back-off
DRAIN_SECONDS = 3.0  # a replaced instance serves this long after leaving the frontend
# Liveness: an instance in the frontend is checked every HEALTH_INTERVAL s (answer within 1 s); one that
# fails every check for UNHEALTHY_AFTER s (hung, deadlocked, thrashing, stopped) gets a replacement.
HEALTH_INTERVAL = 5.0  # each check is a request to the instance: an idle site's largest CPU cost (bench/sites.py)
UNHEALTHY_AFTER = 10.0


@dataclass(frozen=True)
class Pending:
    """A started instance that joins the frontend once healthy, or is replaced after `deadline`."""
    instance: Instance
    deadline: float  # monotonic


@dataclass(frozen=True)
class Retiring:
    """A replaced instance, removed at `remove_at` (monotonic) once it had time to finish its requests."""
    instance: Instance
    remove_at: float


def restart_delay(quick_failures: int) -> float:
    """Exponential back-off while instances keep failing: 0, 1, 2, 4 … MAX_BACKOFF seconds."""
    return 0.0 if quick_failures <= 0 else min(2.0 ** (quick_failures - 1), MAX_BACKOFF)


def after_failure(quick_failures: int, lived: float, unhealthy: bool) -> tuple[int, float]:
    """(quick failures now, seconds until the replacement): a failure soon after start, or one that never
    became healthy, counts towards the back-off; one after a stable run starts it afresh."""
    failures = quick_failures + 1 if lived < STABLE_AFTER or unhealthy else 1
    return failures, restart_delay(failures)


def liveness(unhealthy_since: float | None, healthy: bool, now: float,
             after: float = UNHEALTHY_AFTER) -> tuple[float | None, bool]:
    """(since when the instance fails its checks, or None; whether to replace it now)."""
    if healthy:
        return None, False
    since = now if unhealthy_since is None else unhealthy_since
    return since, now - since >= after


def adoption(candidates: list[tuple[Instance, bool]]) -> tuple[Instance | None, list[Instance]]:
    """Of the running instances an earlier agent left (with whether each is healthy): the one to adopt (the
    newest healthy one, else the newest) and the duplicates to remove."""
    ranked = [instance for instance, _ in sorted(candidates, key=lambda c: (c[1], c[0].started), reverse=True)]
    return (ranked[0] if ranked else None), ranked[1:]


def start_period_left(instance: Instance, health_timeout: float, now: float) -> float:
    """Seconds of its start period (the manifest's health-check-timeout-seconds) an instance still has."""
    return health_timeout - (now - instance.started)


def due(retiring: tuple[Retiring, ...], now: float) -> tuple[tuple[Retiring, ...], tuple[Retiring, ...]]:
    """(to remove now, to keep)."""
    return (tuple(r for r in retiring if now >= r.remove_at), tuple(r for r in retiring if now < r.remove_at))


def count_replacement(state: dict[str, Any], application: str, reason: str) -> dict[str, Any]:
    """state.json's counters: `restarts` (all replacements) and per application and reason."""
    state["restarts"] = int(state.get("restarts", 0)) + 1
    per_app = state.setdefault("replacements", {}).setdefault(application, {})
    per_app[reason] = int(per_app.get(reason, 0)) + 1
    return state
