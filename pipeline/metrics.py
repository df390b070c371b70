"""The instance's metrics at `GET /_site/metrics` (Prometheus text format, via prometheus_client).

Build figures come from the counters the watcher keeps in status.json (it is another process; pipeline.status
writes them), read at each scrape; request and answer-cache figures are serve.py's own.

prometheus_client (~4 MiB with what it imports) is imported at the first scrape, not with this module: the
watcher only takes BUILD_BUCKETS from here, and an instance nobody scrapes does not carry it
(docs/benchmarks.md, idle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

BUILD_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Requests:
    """serve.py's answers by status class, and its answer memo's lookups."""

    def __init__(self) -> None:
        self.by_class: dict[str, int] = {}
        self.memo_hits = 0
        self.memo_misses = 0
        self._lock = threading.Lock()

    def answered(self, status: str) -> None:
        key = f"{status[:1]}xx"
        with self._lock:
            self.by_class[key] = self.by_class.get(key, 0) + 1

    def looked_up(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.memo_hits += 1
            else:
                self.memo_misses += 1


class InstanceCollector:
    """`status` gives the deploy status with the live release (as `GET /_site/status` shows it)."""

    def __init__(self, status: Callable[[], dict[str, Any]], requests: Requests,
                 memo_size: Callable[[], tuple[int, int]]):
        self.status, self.requests, self.memo_size = status, requests, memo_size

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        status = self.status()
        counters = status.get("counters") or {}
        builds = CounterMetricFamily("pequod_builds", "Builds finished, by result.", labels=["result"])
        for result in ("success", "failed"):
            builds.add_metric([result], int((counters.get("builds") or {}).get(result, 0)))
        yield builds
        histogram = counters.get("build_seconds") or {"buckets": {}, "sum": 0.0, "count": 0}
        yield HistogramMetricFamily(
            "pequod_build_duration_seconds", "Duration of builds (fetch to publish or failure).",
            buckets=[(f"{bound:g}", int(histogram["buckets"].get(f"{bound:g}", 0))) for bound in BUILD_BUCKETS]
            + [("+Inf", int(histogram["count"]))], sum_value=float(histogram["sum"]))
        yield GaugeMetricFamily("pequod_last_successful_publish_timestamp_seconds",
                                "When a build was last published (Unix time; 0: never).",
                                value=float(counters.get("last_success_at", 0)))
        current = status.get("current") or {}
        info = InfoMetricFamily("pequod_live_release", "The release being served.")
        if current:
            info.add_metric([], {"release": str(current.get("release") or ""),
                                 "commit": str(current.get("commit") or "")})
        yield info
        yield CounterMetricFamily("pequod_remote_check_failures", "Failed checks or fetches of the remote.",
                                  value=int(counters.get("remote_check_failures", 0)))
        yield GaugeMetricFamily("pequod_consecutive_failures", "Failures in a row (builds and remote checks).",
                                value=int(status.get("consecutive_failures") or 0))
        report = status.get("links") or {}  # the live release's link report (pipeline.releases); none yet: no sample
        if "broken_count" in report:
            yield GaugeMetricFamily("pequod_site_broken_links", "Broken internal links and anchors of the live "
                                    "release.", value=int(report["broken_count"]))
            yield GaugeMetricFamily("pequod_site_link_check_pages", "Pages the live release's link report checked.",
                                    value=int(report.get("checked_pages") or 0))
        answered = CounterMetricFamily("pequod_http_requests", "Requests answered, by status class.",
                                       labels=["code"])
        for code, count in sorted(self.requests.by_class.items()):
            answered.add_metric([code], count)
        yield answered
        entries, size = self.memo_size()
        yield GaugeMetricFamily("pequod_answer_cache_entries", "Rendered answers kept in memory.", value=entries)
        yield GaugeMetricFamily("pequod_answer_cache_bytes", "Bytes the kept answers take.", value=size)
        lookups = CounterMetricFamily("pequod_answer_cache_lookups", "Lookups of the answer cache, by result.",
                                      labels=["result"])
        lookups.add_metric(["hit"], self.requests.memo_hits)
        lookups.add_metric(["miss"], self.requests.memo_misses)
        yield lookups
        total = self.requests.memo_hits + self.requests.memo_misses
        yield GaugeMetricFamily("pequod_answer_cache_hit_ratio", "Hits per lookup since the start (0 before any).",
                                value=self.requests.memo_hits / total if total else 0.0)


def registry(collector: InstanceCollector) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(reg)


def content_type() -> str:
    from prometheus_client import CONTENT_TYPE_LATEST

    return CONTENT_TYPE_LATEST
