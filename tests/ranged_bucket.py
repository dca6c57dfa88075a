"""A bucket that misbehaves on chosen ranged GETs, for the restore's tests: a real HTTP server on
127.0.0.1 in front of moto's server (the port's `[aws] endpoint_url` points at it).

Every request goes through to moto. A `Fault` picks the GETs whose Range starts at `start` (any
ranged GET when None), the first `times` of them (every one when None), and does to each:

    "stall"   no answer at all (until the bucket is closed)
    "drip"    headers at once, then the body a byte every 0.2 s (inside any per-read timeout)
    "short"   a body shorter than the range, with a Content-Length that says so (a consistent lie)
    "cut"     the whole range's Content-Length, half the body, then the connection closed
    "garble"  the right length, some bytes flipped
    "change"  `then()` (the test replaces the object in the bucket), then the part as first read

`rate` slows every body to that many bytes a second a response (so that parts overlap, or a
restore is still running when the daemon is stopped). `log` keeps, for each object GET, its
path, Range, If-Match and status; `max_in_flight` the most object bodies being sent at once.
"""
from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlparse

KINDS = ("stall", "drip", "short", "cut", "garble", "change")


@dataclass
class Fault:
    kind: str
    start: int | None = None
    times: int | None = 1
    then: Callable[[], None] | None = None

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


def range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    first = header[len("bytes="):].split("-", 1)[0]
    return int(first) if first.isdigit() else None


class RangedBucket:
    def __init__(self, upstream: str, fault: Fault | None = None, rate: float | None = None):
        self.upstream = urlparse(upstream)
        self.fault, self.rate = fault, rate
        self.log: list[dict] = []
        self.in_flight = self.max_in_flight = self.sent = 0   # sent: body bytes of object GETs
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
        self._httpd.bucket = self
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _take(self, method: str, range_header: str | None) -> Fault | None:
        """The fault for this request, if it is one the fault picks (counted)."""
        with self._lock:
            f = self.fault
            if f is None or method != "GET" or range_header is None or f.times == 0:
                return None
            if f.start is not None and range_start(range_header) != f.start:
                return None
            if f.times is not None:
                f.times -= 1
            return f

    def gets(self, start: int | None = None) -> list[dict]:
        """The object GETs so far (those whose Range starts at `start`, when given)."""
        with self._lock:
            return [g for g in self.log if start is None or range_start(g["range"]) == start]

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Proxy(BaseHTTPRequestHandler):
    """Each request through to moto, then the fault its bucket picks for it."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):   # quiet: the test reads the bucket's log
        return None

    def _handle(self) -> None:
        bucket = self.server.bucket
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(bucket.upstream.hostname, bucket.upstream.port, timeout=60)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        fault = bucket._take(self.command, self.headers.get("Range"))
        if fault is not None and fault.kind == "stall":
            bucket.log.append({"path": self.path, "range": self.headers.get("Range"), "status": 0, "fault": "stall",
                               "if_match": self.headers.get("If-Match")})
            bucket._closing.wait(600)
            self.close_connection = True
            return
        if self.command == "GET" and "/" in urlparse(self.path).path.lstrip("/"):
            with bucket._lock:
                bucket.log.append({"path": self.path, "range": self.headers.get("Range"), "if_match": self.headers.get("If-Match"),
                                   "status": resp.status, "fault": fault.kind if fault else None})
        length = len(data)
        if fault is not None and fault.kind == "short":
            data = data[: len(data) // 2]
            length = len(data)
        elif fault is not None and fault.kind == "garble":
            data = data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:]
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind == "change" and fault.then is not None:
            fault.then()   # before the part ends: every part asked after it meets the new object
        try:
            self._send(data, fault)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True   # the client gave up: what a deadline is for

    def _send(self, data: bytes, fault: Fault | None) -> None:
        bucket = self.server.bucket
        with bucket._lock:
            bucket.in_flight += 1
            bucket.max_in_flight = max(bucket.max_in_flight, bucket.in_flight)
        try:
            if fault is not None and fault.kind == "drip":
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    if bucket._closing.wait(0.2):
                        return
                return
            if fault is not None and fault.kind == "cut":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            step = max(1, int(bucket.rate / 20)) if bucket.rate else len(data) or 1
            for at in range(0, len(data), step):   # rate: 20 writes a second
                self.wfile.write(data[at:at + step])
                with bucket._lock:
                    bucket.sent += len(data[at:at + step])
                if bucket.rate and bucket._closing.wait(0.05):
                    return
        finally:
            with bucket._lock:
                bucket.in_flight -= 1

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
