"""Who may trigger a check of the remote at once: `POST /_site/hook`.

Accepted: GitHub-style push webhooks signed with HMAC-SHA256 over the body (`X-Hub-Signature-256:
sha256=<hex>`), and plain token requests (`Authorization: Bearer <secret>` or `X-Hook-Token:
<secret>`), the secret being `WEBHOOK_SECRET`. Comparisons are constant-time. A signed delivery is
accepted once: the same delivery id or signature again is a replay. A client whose requests were
refused too often is refused before any check (per client: others are not affected). The body is
never trusted for what to build: a valid hook only wakes the watcher, which asks the remote itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pipeline.preview_hosts import basic_password

MAX_BODY = 48 * 1024  # GitHub's push payloads are far smaller; the frontend buffers up to this size whole
REPLAY_MEMORY = 4096  # deliveries remembered
CLIENT_MEMORY = 4096  # clients whose refused requests are counted
BURST, PER_SECOND = 10, 2.0  # refused requests a client may make: a bucket of 10, refilled by 2 per second
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")


@dataclass(frozen=True)
class Verdict:
    status: int  # HTTP status
    reason: str

    @property
    def accepted(self) -> bool:
        return self.status == 202


class _Bucket:
    def __init__(self, tokens: float, at: float):
        self.tokens, self.at = tokens, at


class HookGuard:
    """The rate limit is per client and counts refused requests only: a client sending bad or unsigned
    requests is refused (429) before its bodies are read, and never uses up anyone else's budget; once
    its budget is spent, its valid requests wait too (until it refills, 2 per second)."""

    def __init__(self, secret: str | None, *, burst: int = BURST, per_second: float = PER_SECOND,
                 clock=time.monotonic):
        self.secret = secret.encode() if secret else None
        self.burst, self.per_second, self.clock = burst, per_second, clock
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, client: str) -> _Bucket:
        """The client's bucket, refilled to now (the least recently seen client is forgotten first)."""
        now = self.clock()
        bucket = self._clients.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        self._clients[client] = bucket
        while len(self._clients) > CLIENT_MEMORY:
            self._clients.popitem(last=False)
        return bucket

    def _replayed(self, keys: list[str]) -> bool:
        if any(key in self._seen for key in keys):
            return True
        for key in keys:
            self._seen[key] = None
        while len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)
        return False

    def precheck(self, content_length: int | None, client: str = "") -> Verdict | None:
        """Before the body is read: configured, the client not refused too often, a sane length."""
        if self.secret is None:
            return Verdict(404, "webhook not configured (set WEBHOOK_SECRET)")
        with self._lock:
            if self._bucket(client).tokens < 1:
                return Verdict(429, "too many refused requests from this client")
        if content_length is None:
            return self.refused(client, Verdict(411, "Content-Length required"))
        if content_length < 0:
            return self.refused(client, Verdict(400, "negative Content-Length"))
        if content_length > MAX_BODY:
            return self.refused(client, Verdict(413, f"body larger than {MAX_BODY} bytes"))
        return None

    def refused(self, client: str, verdict: Verdict) -> Verdict:
        """Count a refusal against the client's budget."""
        if not verdict.accepted:
            with self._lock:
                self._bucket(client).tokens -= 1
        return verdict

    def owner(self, client: str, authorization: str) -> Verdict:
        """Whether a request carrying `authorization` is the site owner's (the deploy data): the token as for
        rollbacks, counted against the client's budget when wrong, refused (429) when spent."""
        if self.secret is None:
            return Verdict(404, "this site has no token: set WEBHOOK_SECRET (the deploy data is shown only to "
                                "requests from inside its instance)")
        return self._charged(client, self.check_bearer(authorization))

    def basic(self, client: str, authorization: str) -> Verdict:
        """Whether a request may read a preview: HTTP Basic with the user `preview` and this guard's secret (the
        previews' password), a wrong one counted against the client's budget as for owner(); none is asking."""
        if self.secret is None:
            return Verdict(202, "previews are public")
        if not authorization:
            return Verdict(401, "this preview asks for its password (user: preview)")
        password = basic_password(authorization)
        accepted = password is not None and hmac.compare_digest(password.encode(), self.secret)
        return self._charged(client, Verdict(202, "password") if accepted else Verdict(401, "wrong password"))

    def _charged(self, client: str, verdict: Verdict) -> Verdict:
        with self._lock:  # checked and charged at once: concurrent guesses cannot overdraw the budget
            bucket = self._bucket(client)
            if bucket.tokens < 1:
                return Verdict(429, "too many refused requests from this client")
            if not verdict.accepted:
                bucket.tokens -= 1
        return verdict

    def check_bearer(self, authorization: str | None) -> Verdict:
        """Only `Authorization: Bearer <secret>` (rollbacks, the deploy data)."""
        assert self.secret is not None
        if not authorization or not authorization.lower().startswith("bearer "):
            return Verdict(401, "a token is needed: Authorization: Bearer <WEBHOOK_SECRET>")
        if not hmac.compare_digest(authorization[7:].strip().encode(), self.secret):
            return Verdict(403, "bad token")
        return Verdict(202, "token")

    def check(self, headers: dict[str, str], body: bytes) -> Verdict:
        """After the body was read: a valid signature or token. `headers` keys are lower-case."""
        assert self.secret is not None
        signature = headers.get("x-hub-signature-256")
        if signature is not None:
            match = _SIGNATURE.fullmatch(signature.strip())
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
