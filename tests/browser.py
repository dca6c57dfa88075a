"""A real browser for the report tests: Debian's headless Chromium driven through the Chrome
DevTools Protocol over a pipe (--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4), so
no port is opened and no library beyond the standard one is needed. Every wait is bounded.

    with Browser() as b:
        page = b.load(path)       # console errors, each <audio>'s duration, each <img>'s width, a screenshot
"""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)

PROBE = """JSON.stringify({
  audio: [...document.querySelectorAll('audio')].map(a => ({src: a.getAttribute('src'), ready: a.readyState,
          duration: a.duration, error: a.error ? a.error.code : null})),
  images: [...document.querySelectorAll('img')].map(i => ({complete: i.complete, width: i.naturalWidth})),
  scripts: document.querySelectorAll('script').length,
  height: document.documentElement.scrollHeight,
  text: document.body ? document.body.innerText : ''})"""


@dataclass
class Page:
    errors: list[str] = field(default_factory=list)      # console errors, exceptions, failed loads, CSP violations
    audio: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    scripts: int = 0
    text: str = ""
    screenshot: Path | None = None
    requests: list[str] = field(default_factory=list)    # every URL the page asked for


class Browser:
    def __init__(self, timeout: float = 60.0):
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="report-browser-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends as fds 3 (commands in) and 4 (replies out)
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--window-size=1200,900", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies[-1] = {"closed": True}
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._id in self._replies or -1 in self._replies,
                                       timeout=timeout or self.timeout):
                raise TimeoutError(f"no reply to {method} in {timeout or self.timeout}s")
            reply = self._replies.pop(self._id, None)
        if reply is None:
            raise RuntimeError(f"chromium exited during {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _drain(self, page: Page, session: str) -> list[dict]:
        seen = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return seen
            if ev.get("sessionId") != session:
                continue
            seen.append(ev)
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                page.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                page.errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                page.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent":
                page.requests.append(p.get("request", {}).get("url", "")[:120])
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                page.errors.append(f"load failed: {p.get('errorText')} ({p.get('type')})")

    def load(self, path: Path, screenshot: Path | None = None, settle: float = 20.0) -> Page:
        """Open `path` from file://, wait (bounded) until every <audio> has its metadata or an
        error, and report what a person would see; a full-page screenshot if asked."""
        page = Page()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        deadline = time.monotonic() + settle
        state: dict = {}
        loaded = False
        while time.monotonic() < deadline:
            loaded = loaded or any(ev.get("method") == "Page.loadEventFired" for ev in self._drain(page, session))
            result = self.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
            state = json.loads(result.get("result", {}).get("value") or "{}")
            audios = state.get("audio", [])
            if loaded and all(a["ready"] >= 1 or a["error"] for a in audios) and \
                    all(i["complete"] for i in state.get("images", [])):
                break
            time.sleep(0.2)
        time.sleep(0.3)
        self._drain(page, session)
        page.audio, page.images = state.get("audio", []), state.get("images", [])
        page.scripts, page.text = state.get("scripts", 0), state.get("text", "")
        if screenshot is not None:
            height = min(int(state.get("height") or 900), 16000)
            self.send("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": height, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=session)
            shot = self.send("Page.captureScreenshot", {"format": "png"}, session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            page.screenshot = screenshot
        self.send("Target.closeTarget", {"targetId": target})
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
