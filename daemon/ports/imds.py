"""EC2 instance metadata (IMDSv2): who we are, and whether AWS is taking the instance back.

IMDSv2 needs a session token (PUT /latest/api/token) on every GET. The token is refreshed a
minute before it expires, and a 401 (expired or revoked early) gets a new one and one retry,
never a crash. Timeouts are short: off EC2 the address does not answer at all.

Whatever answers at that address is outside: each request has a total deadline (connect,
headers and body, however slowly they drip: a per-read timeout never trips on a byte every half
second) and a body cap, and a reply that is slow, cut short, too big, not UTF-8 or not JSON is
ImdsError, "unknown" to the caller, never a library's exception.
"""
from __future__ import annotations

import http.client
import io
import json
import socket
import time
import urllib.parse
from typing import Any

from ..common.clock import Clock

TOKEN_TTL_S = 21600
MAX_BYTES = 64 * 1024  # the identity document is ~500 bytes, a notice ~60
IDENTITY_KEYS = ("instanceId", "instanceType", "availabilityZone")


class ImdsError(Exception):
    """IMDS did not answer usefully (not on EC2, a network problem, or a reply we refuse)."""


class _Reader(io.RawIOBase):
    """Reads from a connected socket, each read waiting only for what is left of one deadline.
    Real time, not the injected clock: this bounds a real socket, whatever clock the rules see."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline

    def wait(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.wait()
        return self.sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client sees as the connection's socket: sends and the reply's file are bounded by
    the deadline. Closing it is left to `Imds._request`, after the body is read."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._reader = _Reader(sock, deadline)

    def sendall(self, data: bytes) -> None:
        self._reader.wait()
        self._reader.sock.sendall(data)

    def makefile(self, _mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(self._reader)

    def close(self) -> None:
        pass


class Imds:
    def __init__(self, base_url: str, timeout: float = 1.0, clock: Clock | None = None, token_ttl: int = TOKEN_TTL_S):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout  # seconds for one whole request, not per read
        self.clock = clock or Clock()
        self.token_ttl = token_ttl
        self._token: str | None = None
        self._token_expires = 0.0
        url = urllib.parse.urlsplit(self.base_url)
        self._host, self._port, self._prefix = url.hostname or "", url.port or 80, url.path

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body): the body only for a 200, and at most MAX_BYTES of it."""
        deadline = time.monotonic() + self.timeout
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        sock = None
        try:
            conn.connect()
            sock, conn.sock = conn.sock, _DeadlineSocket(conn.sock, deadline)
            conn.request(method, self._prefix + path, headers=headers)
            resp = conn.getresponse()
            return resp.status, (self._body(resp, path) if resp.status == 200 else b"")
        except (TimeoutError, socket.timeout):
            raise ImdsError(f"{self.base_url}{path}: no answer within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError, ValueError) as e:  # ValueError: a header http.client refuses
            raise ImdsError(f"{self.base_url}{path}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()
            if sock is not None:
                sock.close()

    def _body(self, resp: http.client.HTTPResponse, path: str) -> bytes:
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_BYTES:
            raise ImdsError(f"{self.base_url}{path}: reply over {MAX_BYTES // 1024} KiB ({declared} bytes declared)")
        body = bytearray()
        while chunk := resp.read(8192):
            body += chunk
            if len(body) > MAX_BYTES:
                raise ImdsError(f"{self.base_url}{path}: reply over {MAX_BYTES // 1024} KiB")
        if declared and declared.isdigit() and len(body) < int(declared):
            raise ImdsError(f"{self.base_url}{path}: reply cut short ({len(body)} of {declared} bytes)")
        return bytes(body)

    def _text(self, body: bytes, path: str) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ImdsError(f"{self.base_url}{path}: reply is not UTF-8") from None

    def token(self) -> str:
        if self._token is None or self.clock.monotonic() >= self._token_expires - 60:
            status, body = self._request("PUT", "/latest/api/token",
                                         {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl)})
            if status != 200:
                raise ImdsError(f"{self.base_url}: token request answered {status}")
            token = self._text(body, "/latest/api/token").strip()
            if not (0 < len(token) <= 4096 and token.isascii() and token.isprintable()):
                raise ImdsError(f"{self.base_url}: the token request answered something that is not a token")
            self._token = token
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
            return self._text(body, f"/latest/{path}")
        raise ImdsError(f"{self.base_url}/latest/{path}: still 401 with a new token")

    def get_json(self, path: str) -> Any:
        text = self.get(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # also a number too long for int(), an array too deep
            raise ImdsError(f"{self.base_url}/latest/{path}: not JSON ({text[:80]!r})") from None

    def identity(self) -> dict:
        """instanceId, instanceType, availabilityZone, region, ..."""
        doc = self.get_json("dynamic/instance-identity/document")
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc[k] for k in IDENTITY_KEYS):
            raise ImdsError(f"{self.base_url}: no instance identity document (needs {', '.join(IDENTITY_KEYS)})")
        return doc

    def spot_action(self) -> dict | None:
        """{"action": "stop"|"terminate"|"hibernate", "time": "...Z"} once an interruption is scheduled."""
        return self.get_json("meta-data/spot/instance-action")

    def rebalance(self) -> dict | None:
        """{"noticeTime": "...Z"}: the instance is at elevated risk of interruption."""
        return self.get_json("meta-data/events/recommendations/rebalance")
