"""Who may trigger a check of the remote at once: `POST /_site/hook`.

Accepted: GitHub-style push webhooks signed with HMAC-SHA256 over the body (`X-Hub-Signature-256:
sha256=<hex>`), and plain token requests (`Authorization: Bearer <secret>` or `X-Hook-Token:
<secret>`), the secret being `WEBHOOK_SECRET`. Comparisons are constant-time. A signed delivery is
accepted once: the same delivery id or signature again is a replay. Requests beyond a small rate
are refused before any check. The body is never trusted for what to build: a valid hook only
wakes the watcher, which asks the remote itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_BODY = 1 << 20  # GitHub's push payloads are far smaller
REPLAY_MEMORY = 4096  # deliveries remembered
BURST, PER_SECOND = 10, 2.0  # the rate limit: a bucket of 10, refilled by 2 per second
_SIGNATURE = re.compile(r"^sha256=([0-9a-f]{64})$")


@dataclass(frozen=True)
class Verdict:
    status: int  # HTTP status
    reason: str

    @property
    def accepted(self) -> bool:
        return self.status == 202


class HookGuard:
    def __init__(self, secret: str | None, *, burst: int = BURST, per_second: float = PER_SECOND,
                 clock=time.monotonic):
        self.secret = secret.encode() if secret else None
        self.burst, self.per_second, self.clock = burst, per_second, clock
        self._tokens = float(burst)
        self._refilled = clock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def _take_token(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.per_second)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _replayed(self, keys: list[str]) -> bool:
        if any(key in self._seen for key in keys):
            return True
        for key in keys:
            self._seen[key] = None
        while len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)
        return False

    def precheck(self, content_length: int | None) -> Verdict | None:
        """Before the body is read: configured, not too frequent, not too large."""
        if self.secret is None:
            return Verdict(404, "webhook not configured (set WEBHOOK_SECRET)")
        with self._lock:
            if not self._take_token():
                return Verdict(429, "too many requests")
        if content_length is None:
            return Verdict(411, "Content-Length required")
        if content_length > MAX_BODY:
            return Verdict(413, f"body larger than {MAX_BODY} bytes")
        return None

    def check(self, headers: dict[str, str], body: bytes) -> Verdict:
        """After the body was read: a valid signature or token. `headers` keys are lower-case."""
        assert self.secret is not None
        signature = headers.get("x-hub-signature-256")
        if signature is not None:
            match = _SIGNATURE.match(signature.strip())
            expected = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            if not match or not hmac.compare_digest(match.group(1), expected):
                return Verdict(403, "bad signature")
            keys = [f"sig:{expected}"]
            if headers.get("x-github-delivery"):
                keys.append(f"delivery:{headers['x-github-delivery']}")
            with self._lock:
                if self._replayed(keys):
                    return Verdict(409, "replayed delivery")
            return Verdict(202, f"signed {headers.get('x-github-event', 'hook')}")
        token = headers.get("x-hook-token")
        authorization = headers.get("authorization", "")
        if token is None and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        if token is None:
            return Verdict(401, "unsigned request")
        if not hmac.compare_digest(token.encode(), self.secret):
            return Verdict(403, "bad token")
        return Verdict(202, "token")
