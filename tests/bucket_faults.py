"""A hostile bucket, for the tests and the chaos suite: a state.json planted by someone else, and
a bucket that lists its objects but refuses to hand them over.

`FaultyBucket` is a real HTTP server on 127.0.0.1 in front of moto's server. The daemon's
`[aws] endpoint_url` points at it; every request is passed through to moto unless `mode` says
otherwise:

    "pass"          everything goes through (the bucket is fine)
    "refuse-reads"  listings go through, every GET/HEAD of an object is 403 AccessDenied
                    (a role that lost s3:GetObject, a bucket policy that denies it)
    "throttle"      every request is 503 SlowDown (S3 overloaded)
    "stall"         every request is read and never answered (a network that black-holes replies)
    "drip"          every reply's headers at once, then its body one byte every 0.5 s (each read
                    arrives within any per-read timeout; only a total deadline ends it)
    "slow"          every PUT (an upload) waits `slow_s` seconds, then goes through (a far or
                    congested bucket: each upload succeeds, late)

The mode can be switched at any time (the chaos suite flips it and back).
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

MODES = ("pass", "refuse-reads", "throttle", "stall", "drip", "slow")
_ERROR = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{msg}</Message></Error>"


def _is_object(path: str) -> bool:
    """Path-style addressing (an IP endpoint): /bucket is the bucket, /bucket/key an object."""
    return "/" in urlparse(path).path.lstrip("/")


class FaultyBucket:
    def __init__(self, upstream: str, mode: str = "pass"):
        self.upstream = urlparse(upstream)
        self.mode = mode
        self.slow_s = 1.0
        self.requests: list[tuple[str, str, int]] = []   # (method, path, status) as answered
        self._closing = threading.Event()
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, status: int, code: str, msg: str) -> None:
                data = b"" if self.command == "HEAD" else _ERROR.format(code=code, msg=msg).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                bucket.requests.append((self.command, self.path, status))

            def _handle(self) -> None:
                body, mode = self._body(), bucket.mode
                if mode == "stall":
                    bucket.requests.append((self.command, self.path, 0))
                    bucket._closing.wait(600)
                    self.close_connection = True
                    return
                if mode == "slow" and self.command == "PUT":
                    bucket._closing.wait(bucket.slow_s)
                if mode == "throttle":
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if mode == "refuse-reads" and self.command in ("GET", "HEAD") and _is_object(self.path):
                    return self._error(403, "AccessDenied", "Access Denied")
                conn = http.client.HTTPConnection(bucket.upstream.hostname, bucket.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                # a HEAD's length is the object's, not its (empty) body's
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                bucket.requests.append((self.command, self.path, resp.status))
                if self.command == "HEAD":
                    return
                if mode != "drip":
                    return self.wfile.write(data)
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        if bucket._closing.wait(0.5):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True   # the client gave up: what a deadline is for

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def refused(self) -> int:
        """How many object reads were refused so far."""
        return sum(1 for _, _, status in self.requests if status == 403)

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_json(run_id: str, updated_at: str, total_usd: float, started_at: str = "2026-01-01T00:00:00Z") -> dict:
    """A state.json this version loads: a run with a ledger of `total_usd` (all compute)."""
    return {"schema_version": 1, "run_id": run_id, "phase": "RUNNING", "started_at": started_at,
            "phase_since": started_at, "updated_at": updated_at,
            "cost": {"boot_id": "planted-boot", "accounted_boottime_s": 10.0, "storage_accounted_at": started_at,
                     "compute_usd": total_usd, "storage_usd": 0.0, "total_usd": total_usd, "boots": 1},
            "alerts": []}


def plant_state(s3, bucket: str, prefix: str, run_id: str = "planted", updated_at: str = "2099-01-01T00:00:00Z",
                total_usd: float = 0.0) -> dict:
    """Put a foreign (another run_id) and future-dated (2099) state.json where the mirror keeps
    its own, as anyone with the instance role could. Returns what was planted."""
    doc = state_json(run_id, updated_at, total_usd)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/state.json" if prefix else "state.json",
                  Body=json.dumps(doc).encode())
    return doc


def plant_checkpoint(s3, bucket: str, prefix: str, step: int, data: bytes = b"not a real checkpoint") -> dict:
    """A committed checkpoint (bytes, then its marker) as the mirror lays it out; returns the marker."""
    import hashlib

    name = f"step_{step:08d}"
    key = f"{prefix}/checkpoints/" if prefix else "checkpoints/"
    marker = {"step": step, "file": f"{name}.pt", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    s3.put_object(Bucket=bucket, Key=f"{key}{name}.pt", Body=data, Metadata={"sha256": marker["sha256"]})
    s3.put_object(Bucket=bucket, Key=f"{key}{name}.json", Body=json.dumps(marker).encode())
    return marker


def now_plus(seconds: float) -> str:
    return iso(datetime.fromtimestamp(time.time() + seconds, timezone.utc))
