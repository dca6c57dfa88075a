"""An IMDSv2 server of our own on 127.0.0.1, strict like AWS: no token, no answer.

It can also misbehave the ways a metadata service (or something squatting on its address) can,
switched at run time from the test's thread (`set_fault`, `clear_faults`):

  "slow"         headers at once, then the body one byte every `drip_s` (a per-read timeout never trips)
  "short"        Content-Length 100, 6 bytes, then the connection closes
  "huge"         `huge_bytes` of body (800 MiB unless told), streamed, never held in memory;
                 without a Content-Length unless `huge_declared`
  "undecodable"  a 200 whose body is not UTF-8

A fault applies to every GET that carries a valid token; `token=True` applies it to the token
request too. `fail_with` (a status) and `delay_s` (silence before answering) are the older faults.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("slow", "short", "huge", "undecodable")
CHUNK = b" " * (1 << 20)  # whitespace: any prefix of it is as harmless as the whole


class ImdsServer:
    def __init__(self, identity: dict | None = None):
        self.identity = identity or {"instanceId": "i-0123456789abcdef0", "instanceType": "g5.xlarge",
                                     "availabilityZone": "us-east-1a", "region": "us-east-1"}
        self.spot_action: dict | None = None
        self.rebalance: dict | None = None
        self.tokens: dict[str, float] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.fail_with: int | None = None
        self.delay_s = 0.0  # > the client's timeout: IMDS not answering in time (every request)
        self.fault: str | None = None
        self.fault_token = False
        self.drip_s = 0.5
        self.huge_bytes = 800 * 2**20
        self.huge_declared = False
        self.sent_bytes = 0  # body bytes the faulty answers got onto the wire (a client that stops reading stops it)
        self._closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: str = "", faulty: bool = True) -> None:
                if server.delay_s:
                    time.sleep(server.delay_s)
                server.requests.append((self.command, self.path, status))
                fault = server.fault if faulty and status == 200 else None
                try:
                    server._answer(self, status, body.encode(), fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (delay_s, or it stopped reading a fault)

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self._send(404)
                ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "0"))
                if not 1 <= ttl <= 21600:
                    return self._send(400)
                token = uuid.uuid4().hex
                server.tokens[token] = time.monotonic() + ttl
                self._send(200, token, faulty=server.fault_token)

            def do_GET(self):
                token = self.headers.get("X-aws-ec2-metadata-token")
                if token not in server.tokens or server.tokens[token] < time.monotonic():
                    return self._send(401)
                if server.fail_with:
                    return self._send(server.fail_with)
                routes = {"/latest/dynamic/instance-identity/document": server.identity,
                          "/latest/meta-data/spot/instance-action": server.spot_action,
                          "/latest/meta-data/events/recommendations/rebalance": server.rebalance,
                          "/latest/meta-data/instance-id": (server.identity or {}).get("instanceId")
                          if isinstance(server.identity, dict) else None}
                value = routes.get(self.path)
                if value is None and not server.fault:
                    return self._send(404)
                self._send(200, value if isinstance(value, str) else json.dumps(value))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    # -- faults ----------------------------------------------------------------------------------
    def set_fault(self, kind: str | None, token: bool = False) -> None:
        """Every answer from now on misbehaves as `kind` (one of FAULTS); None: answers well again."""
        assert kind is None or kind in FAULTS, kind
        self.fault, self.fault_token = kind, token

    def clear_faults(self) -> None:
        self.fault, self.fault_token, self.fail_with, self.delay_s = None, False, None, 0.0

    def _answer(self, h: BaseHTTPRequestHandler, status: int, data: bytes, fault: str | None) -> None:
        h.send_response(status)
        if fault == "short":
            h.send_header("Content-Length", "100")
            h.end_headers()
            h.wfile.write(data[:6].ljust(6, b"{"))
            return  # HTTP/1.0: the connection closes with 94 bytes owed
        if fault == "undecodable":
            data = b"\xff\xfe\x00{\"instanceId\": \"\x80\x81\"}"
        if fault == "huge":
            if self.huge_declared:
                h.send_header("Content-Length", str(self.huge_bytes))
            h.end_headers()
            left = self.huge_bytes
            while left > 0 and not self._closed.is_set():
                n = min(left, len(CHUNK))
                h.wfile.write(CHUNK[:n])
                self.sent_bytes += n
                left -= n
            return
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if fault == "slow":
            h.wfile.flush()
            for i in range(len(data)):
                if self._closed.wait(self.drip_s):
                    return
                h.wfile.write(data[i:i + 1])
                h.wfile.flush()
                self.sent_bytes += 1
            return
        h.wfile.write(data)

    # -- notices ---------------------------------------------------------------------------------
    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def announce_interruption(self, action: str = "stop", in_seconds: int = 120) -> None:
        from datetime import datetime, timedelta, timezone

        when = datetime.now(timezone.utc) + timedelta(seconds=in_seconds)
        self.spot_action = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def close(self) -> None:
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
