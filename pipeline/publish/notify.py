"""Deploy notifications: with NOTIFY_URL set, a JSON event is POSTed for every build that succeeds or fails,
and for a recovery (a success after failures), signed with HMAC-SHA256 of NOTIFY_SECRET.

    POST NOTIFY_URL
    Content-Type: application/json
    X-Pequod-Event: deploy.succeeded | deploy.failed | deploy.recovered | preview.succeeded | preview.failed
    X-Pequod-Delivery: <uuid>
    X-Pequod-Signature-256: sha256=<hex HMAC-SHA256 of the body with NOTIFY_SECRET>

Delivery runs in a thread of its own (a publish never waits for it): a timeout per attempt, retries with
back-off, and what could not be delivered is logged and recorded in the status (shown on the deploy page).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT = 5.0
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # after the first attempt: five attempts in all
QUEUE_LENGTH = 100


def event_for(result: str, recovered: bool) -> str:
    if result != "success":
        return "deploy.failed"
    return "deploy.recovered" if recovered else "deploy.succeeded"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    """Posts events to `url` from a background thread. `record(ok, message)` is told each final outcome."""

    def __init__(self, url: str, secret: str | None, record: Callable[[bool, str], None],
                 retry_delays: tuple[float, ...] = RETRY_DELAYS):
        self.url, self.secret, self.record, self.retry_delays = url, secret, record, retry_delays
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_LENGTH)
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event; never blocks (a full queue drops it, and says so)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.error("notification queue full: %s for %s dropped", event.get("event"), event.get("commit"))
            self.record(False, "notification queue full: an event was dropped")

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        # Imported here: urllib.request brings http.client, email and ssl (~2 MiB), which a watcher without
        # NOTIFY_URL never needs.
        import urllib.error
        import urllib.request
        import uuid

        body = json.dumps(event).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "pequod",
                   "X-Pequod-Event": event["event"], "X-Pequod-Delivery": str(uuid.uuid4())}
        if self.secret:
            headers["X-Pequod-Signature-256"] = signature(self.secret, body)
        error = ""
        for attempt, delay in enumerate((0.0, *self.retry_delays)):
            time.sleep(delay)
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - a setting
                    if 200 <= response.status < 300:
                        self.record(True, f"{event['event']} delivered")
                        return
                    error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                error = str(getattr(exc, "reason", exc))
            log.warning("notification %s, attempt %d: %s", event["event"], attempt + 1, error)
        message = f"{event['event']} for {event.get('commit', '')[:12]} not delivered: {error}"
        log.error("%s", message)
        self.record(False, message)
