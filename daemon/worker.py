"""The trainer worker as a child process: start, poll, signal, and read why it died.

The mechanics only; what to do about an exit is daemon/rules/restart.py's business.

With `[train] nproc_per_node` above 1 the child is torchrun (`torch.distributed.run`, its own
restarts off: the supervisor decides restarts), which starts one worker per GPU. The group is
still one child here: it ends as a whole (torchrun ends every rank when one dies; a rank dies
with torchrun), and rank 0 writes the failure file with its real exit status, since torchrun
itself exits 1 whatever its ranks did. Signals go to the ranks, not to torchrun, which would
answer SIGUSR1/SIGUSR2 by dying and SIGTERM by killing the ranks 30 s later, checkpoint or not.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from .common import oom
from .common.atomic import read_json
from .common.config import TrainConfig
from .common.launch import python_command, spawn
from .rules.restart import DOES_NOT_FIT, OOM_BACKOFF, WorkerExit


def visible_gpus(environ: dict | None = None) -> int:
    """CUDA devices this machine offers the worker, without torch: CUDA_VISIBLE_DEVICES when set,
    else NVML's count, else 0."""
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        listed = [d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return 0 if listed[:1] == ["-1"] else len(listed)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def processes(train: TrainConfig, gpus: int | None = None) -> int:
    """How many worker processes: nproc_per_node, "auto" being one per visible GPU (1 on the CPU),
    as many as divide the micro-batch: `config check` cannot see the GPUs, and 3 GPUs for a batch of
    8 made every rank exit 78. An idle GPU costs less than a run that never starts."""
    if train.nproc_per_node != "auto":
        return train.nproc_per_node
    if train.device == "cpu":
        return 1
    width = max(1, visible_gpus() if gpus is None else gpus)
    unit = train.batch_size if isinstance(train.batch_size, int) else train.per_step  # "auto": any micro-batch
    while unit % width:
        width -= 1
    return width


def group_command(nproc: int, worker_args: list[str]) -> list[str]:
    """torchrun starting `python -m trainer WORKER_ARGS` nproc times on this machine."""
    return python_command("torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                          "--max-restarts", "0", "--monitor-interval", "0.2", "-m", "trainer", *worker_args)


def children(pid: int) -> list[int]:
    """The live child processes of pid (torchrun's ranks), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class WorkerProcess:
    """One run of `python -m trainer --config FILE` (through torchrun when nproc > 1), with its failure file."""

    pausable = True  # a milestone evaluation may stop it for the GPU, and start it again

    def __init__(self, config_path: Path, failure_file: Path, extra_args: tuple[str, ...] = (), nproc: int = 1):
        self.config_path = config_path
        self.failure_file = failure_file
        self.extra_args = extra_args
        self.nproc = nproc
        self._proc: subprocess.Popen | None = None
        self._stale: int | None = None  # mtime_ns of an earlier run's failure file we could not delete
        self.oom_file = oom.path(failure_file.parent)  # a group's OOM back-off (daemon/common/oom.py)
        self._oom_before: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def owns(self, pid: object) -> bool:
        """pid is the worker, or one of its ranks under torchrun (rank 0 writes the heartbeat with its own)."""
        leader = self.pid if self.running else None
        return isinstance(pid, int) and leader is not None and (pid == leader or pid in children(leader))

    def command(self) -> list[str]:
        args = ["--config", str(self.config_path), "--failure-file", str(self.failure_file), *self.extra_args]
        return group_command(self.nproc, args) if self.nproc > 1 else python_command("trainer", *args)

    def start(self) -> int:
        self._stale = None
        try:
            self.failure_file.unlink(missing_ok=True)
        except OSError:  # a read-only state dir: the worker will fail and say so; the tick goes on
            self._stale = self._mtime(self.failure_file)
        self._oom_before = self._mtime(self.oom_file)  # the record stays: only a newer one is this run's
        self._proc = spawn(self.command(), AMAPIANO_SUPERVISOR_PID=str(os.getpid()))
        return self._proc.pid

    @staticmethod
    def _mtime(path: Path) -> int | None:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    def _failure(self) -> dict:
        """This run's failure file, if it wrote one (an earlier run's, left undeletable, is not its).
        A group back-off this run recorded says more than rank 0's file (which then shows only a
        collective cut short by the rank that left)."""
        mtime = self._mtime(self.oom_file)
        if self.nproc > 1 and mtime is not None and mtime != self._oom_before:
            record = oom.read(self.oom_file.parent)
            if record is not None:
                if record.micro_batch is None:
                    return {"type": DOES_NOT_FIT, "message": record.error}
                return {"type": OOM_BACKOFF, "micro_batch": record.micro_batch,
                        "message": f"{record.error} on rank {record.rank} at step {record.step}: the group "
                                   f"restarts at micro-batch {record.micro_batch}"}
        if self._stale is not None and self._mtime(self.failure_file) == self._stale:
            return {}
        return read_json(self.failure_file) or {}

    def poll(self) -> WorkerExit | None:
        """None while running; how it ended once it has (reaps the child)."""
        if self._proc is None:
            return None
        rc = self._proc.poll()
        if rc is None:
            return None
        self._proc = None
        return self.ended(rc)

    def ended(self, rc: int) -> WorkerExit:
        """How a group that exited rc ended: rank 0's failure file and the group's OOM record say why."""
        failure = self._failure()
        if rc < 0:
            return WorkerExit(code=None, signal=signal.Signals(-rc).name,
                              error_type=failure.get("type"), message=failure.get("message"))
        if self.nproc > 1 and rc != 0 and isinstance(failure.get("exit"), int):
            rc = failure["exit"]  # rank 0's own status, which torchrun's 1 hides
        return WorkerExit(code=rc, error_type=failure.get("type"), message=failure.get("message"),
                          micro_batch=failure.get("micro_batch") if failure.get("type") == OOM_BACKOFF else None)

    def signal(self, sig: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        if self.nproc == 1:
            self._proc.send_signal(sig)
            return
        ranks = children(self._proc.pid)
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL or (not ranks and sig != signal.SIGUSR2):
            # No rank yet: torchrun itself stops the start-up (SIGUSR1 would kill it outright).
            self._proc.send_signal(signal.SIGTERM if sig == signal.SIGUSR1 else sig)

    def wait(self, timeout: float) -> WorkerExit | None:
        if self._proc is None:
            return None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
