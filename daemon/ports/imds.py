"""EC2 instance metadata (IMDSv2): who we are, and whether AWS is taking the instance back.

IMDSv2 needs a session token (PUT /latest/api/token) on every GET. The token is refreshed a
minute before it expires, and a 401 (expired or revoked early) gets a new one and one retry,
never a crash. Timeouts are short: off EC2 the address does not answer at all.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..common.clock import Clock

TOKEN_TTL_S = 21600


class ImdsError(Exception):
    """IMDS did not answer usefully (not on EC2, or a network problem)."""


class Imds:
    def __init__(self, base_url: str, timeout: float = 1.0, clock: Clock | None = None, token_ttl: int = TOKEN_TTL_S):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.clock = clock or Clock()
        self.token_ttl = token_ttl
        self._token: str | None = None
        self._token_expires = 0.0

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.base_url}{path}", method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise ImdsError(f"{self.base_url}: {getattr(e, 'reason', e)}") from None

    def token(self) -> str:
        if self._token is None or self.clock.monotonic() >= self._token_expires - 60:
            status, body = self._request("PUT", "/latest/api/token",
                                         {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl)})
            if status != 200:
                raise ImdsError(f"{self.base_url}: token request answered {status}")
            self._token = body.decode().strip()
            self._token_expires = self.clock.monotonic() + self.token_ttl
        return self._token

    def get(self, path: str) -> str | None:
        """The text at /latest/<path>, or None when there is nothing there (404)."""
        for attempt in (1, 2):
            status, body = self._request("GET", f"/latest/{path}", {"X-aws-ec2-metadata-token": self.token()})
            if status == 401 and attempt == 1:
                self._token = None  # expired or revoked: a new one, once
                continue
            if status == 404:
                return None
            if status != 200:
                raise ImdsError(f"{self.base_url}/latest/{path}: answered {status}")
            return body.decode()
        raise ImdsError(f"{self.base_url}/latest/{path}: still 401 with a new token")

    def get_json(self, path: str) -> Any:
        text = self.get(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ImdsError(f"{self.base_url}/latest/{path}: not JSON ({text[:80]!r})") from None

    def identity(self) -> dict:
        """instanceId, instanceType, availabilityZone, region, ..."""
        doc = self.get_json("dynamic/instance-identity/document")
        if not isinstance(doc, dict) or "instanceId" not in doc:
            raise ImdsError(f"{self.base_url}: no instance identity document")
        return doc

    def spot_action(self) -> dict | None:
        """{"action": "stop"|"terminate"|"hibernate", "time": "...Z"} once an interruption is scheduled."""
        return self.get_json("meta-data/spot/instance-action")

    def rebalance(self) -> dict | None:
        """{"noticeTime": "...Z"}: the instance is at elevated risk of interruption."""
        return self.get_json("meta-data/events/recommendations/rebalance")
