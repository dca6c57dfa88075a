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


def test_auto_width_takes_as_many_gpus_as_divide_the_micro_batch(tmp_path):
    """`config check` cannot see the GPUs: 3 GPUs under nproc_per_node = "auto" with a batch of 8
    made every rank exit 78 (width must divide the micro-batch), and the run never started."""
    import dataclasses

    from conftest import write_config
    from daemon.common.config import load_config
    from daemon.worker import processes

    cfg = load_config(write_config(tmp_path, {"train": {"batch_size": 8}}))
    train = dataclasses.replace(cfg.train, nproc_per_node="auto", device="cuda")
    assert [processes(train, gpus=n) for n in (1, 2, 3, 4, 6, 8, 16)] == [1, 2, 2, 4, 4, 8, 8]
    assert processes(dataclasses.replace(train, device="cpu"), gpus=8) == 1
    assert processes(dataclasses.replace(train, nproc_per_node=2), gpus=8) == 2
