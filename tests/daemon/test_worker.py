"""The worker process port: a state dir that refuses the failure file's removal must not make
every tick raise, and an earlier run's failure file is never read as this run's."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

from daemon.worker import WorkerProcess


def test_a_failure_file_that_cannot_be_removed_neither_raises_nor_is_blamed_on_the_next_run(tmp_path, monkeypatch):
    failure = tmp_path / "worker_failure.json"
    failure.write_text(json.dumps({"type": "OSError", "message": "an earlier run's"}))
    real_unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if self == failure:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    worker = WorkerProcess(tmp_path / "config.toml", failure)
    monkeypatch.setattr(worker, "command", lambda: [sys.executable, "-c", "raise SystemExit(3)"])
    worker.start()  # once raised OSError out of every tick while the state dir was read-only
    ended = worker.wait(30)
    assert ended is not None and ended.code == 3 and ended.message is None
