"""A reader that opens a report page over and over while it is rewritten (a browser, `aws s3
sync`, `scp` at the wrong moment): every version it saw, to check that none was half a page."""
from __future__ import annotations

import threading
from pathlib import Path


class PageReader:
    def __init__(self, page: Path):
        self.page, self.seen = page, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                self.seen.append(self.page.read_bytes())
            except FileNotFoundError:
                pass

    def __enter__(self) -> "PageReader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(30)

    def torn(self) -> list[int]:
        """The sizes of the versions seen that were not a whole page."""
        return [len(s) for s in self.seen if not (s.startswith(b"<!DOCTYPE html>") and s.endswith(b"</html>\n"))]
