"""An IMDSv2 server of our own on 127.0.0.1, strict like AWS: no token, no answer."""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: str = "") -> None:
                if server.delay_s:
                    time.sleep(server.delay_s)
                server.requests.append((self.command, self.path, status))
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (delay_s)

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self._send(404)
                ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "0"))
                if not 1 <= ttl <= 21600:
                    return self._send(400)
                token = uuid.uuid4().hex
                server.tokens[token] = time.monotonic() + ttl
                self._send(200, token)

            def do_GET(self):
                token = self.headers.get("X-aws-ec2-metadata-token")
                if token not in server.tokens or server.tokens[token] < time.monotonic():
                    return self._send(401)
                if server.fail_with:
                    return self._send(server.fail_with)
                routes = {"/latest/dynamic/instance-identity/document": server.identity,
                          "/latest/meta-data/spot/instance-action": server.spot_action,
                          "/latest/meta-data/events/recommendations/rebalance": server.rebalance,
                          "/latest/meta-data/instance-id": server.identity["instanceId"]}
                value = routes.get(self.path)
                if value is None:
                    return self._send(404)
                self._send(200, value if isinstance(value, str) else json.dumps(value))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def announce_interruption(self, action: str = "stop", in_seconds: int = 120) -> None:
        from datetime import datetime, timedelta, timezone

        when = datetime.now(timezone.utc) + timedelta(seconds=in_seconds)
        self.spot_action = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
