"""The chaos suite (issue 10, item 7): a long run in compressed time under faults drawn at random,
against the real daemon (moto for EC2 and S3, aiosmtpd, our IMDS server), and the invariants
that must hold through all of it:

1. never unwatched: while the test has not killed or frozen the supervisor, one is alive, it
   pings the (emulated) systemd watchdog, and state.json's updated_at keeps advancing (or, while
   the state directory is full or read-only, its log keeps saying state.write_failed);
2. spend is monotonic and exact to the second: the ledger never goes back, and compute spend is
   the rate times the boot-clock seconds since the run began, downtime included, counted once;
3. no checkpoint is lost or read corrupt: every committed marker's .pt verifies, unless the test
   damaged it itself, and only those are ever quarantined (with a log line);
4. training finishes with the same per-step losses as an undisturbed run (1e-6);
5. a SIGKILL during a checkpoint's background write (worker.sigkill-mid-save: the worker holds a
   checkpoint's temp file open) leaves the previous checkpoint committed and intact, the next
   start removes the partial file (checkpoint.partial_removed names it) and resumes from that
   previous checkpoint.

The test plays systemd: it restarts a supervisor that died (not after exit 65/78, as the unit's
RestartPreventExitStatus says) and kills one whose watchdog pings stop. A supervisor that exits
or is left dead while the instance bills is a violation; the run then goes on the way a person
would (the exit-65 advice, or a writable disk) so that every other invariant is still checked.

AMAPIANO_CHAOS_SEED replays a run; AMAPIANO_CHAOS_FAULTS sets how many faults (default 100).
The daemon's workers hold each write of a step that 16 divides for SLOW_SAVE_S (the test-only
AMAPIANO_TEST_SLOW_SAVE_S), so that a background write lasts long enough to be killed inside.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Daemon, tmpfs, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(720)]

FAULTS = int(os.environ.get("AMAPIANO_CHAOS_FAULTS", "100"))
EPOCHS = 200                      # 1600 steps: training lasts through the chaos, then finishes
STEPS = EPOCHS * 8
RATE = 3600.0                     # $1 a second of boot time: spend to the second is spend to the dollar
WATCHDOG_S = 5.0                  # the unit's WatchdogSec, compressed
RESTART_S = 0.5                   # the unit's RestartSec, compressed
STATE_BOUND_S = 10.0              # updated_at advances at least this often (the ledger changes every 200 ms)
START_GRACE_S = 30.0              # from a (re)start to READY and the first state.json
FROZEN_WORKER_BOUND_S = 35.0      # loading_timeout (20 s) + a slow tick, for a worker frozen while loading
SUP_SETTINGS = {"poll_interval": "100ms", "restart_backoff_initial": "200ms", "restart_backoff_max": "1s",
                "max_restarts_without_progress": 1000, "max_crashes": 1000, "crash_window": "1h",
                "stop_timeout": "20s", "heartbeat_timeout": "3s", "loading_timeout": "20s",
                "validation_timeout": "5s", "checkpoint_timeout": "5s"}
TRAIN = {"train": {"epochs": EPOCHS, "checkpoint_every": 4, "val_every": 40, "log_every": 1,
                   "keep_checkpoints": 3}}
SLOW_SAVE = "0.5%16"              # a write of 4 MB otherwise lasts milliseconds: too short to land in
MID_SAVE_WAIT_S = 8.0             # how long worker.sigkill-mid-save waits for a write in flight

# kind -> weight; every kind is drawn at least once a run, the rest by weight.
KINDS = {
    "worker.sigkill": 12, "worker.sigstop+cont": 5, "worker.sigstop-forever": 5, "worker.sigkill-mid-save": 6,
    "supervisor.sigkill": 9, "supervisor.sigstop+cont": 4, "supervisor.sigstop-forever": 3,
    "disk.full": 6, "disk.read-only": 6, "imds.503": 5, "imds.timeout": 5, "s3.refusing": 5, "smtp.down": 5,
    "corrupt.state.json": 6, "corrupt.heartbeat": 6, "corrupt.marker": 6, "corrupt.pt-byte-flip": 6,
    "corrupt.hold": 6,
    # the borders (issue 17): a metadata service that drips, cuts short, floods or garbles; a bucket
    # that lists but refuses reads; a pickle and a foreign or future state.json planted in it
    "imds.slow": 3, "imds.short": 3, "imds.huge": 2, "imds.undecodable": 3, "s3.refuse-reads": 4,
    "s3.planted-pickle": 3, "s3.planted-state+supervisor.sigkill": 3,
    # the same faults where a restarted supervisor meets them: it must come up and watch
    "corrupt.state.json+supervisor.sigkill": 2, "disk.full+supervisor.sigkill": 2,
    "disk.read-only+supervisor.sigkill": 2,
}
GARBAGE = [b"\x00\xff garbage \xfe", b"{\"step\": \"x\", \"pid\": -3, \"activity\": 7", b"[]", b"",
           b"{\"until\": 5}", b"{\"until\": \"+999999-01-01T00:00:00Z\"}", b"{\"until\": \"not a date\"}",
           b"{\"step\": 1e999, \"time\": {\"a\": 1}, \"activity\": \"validating\"}", b"null", b"\"text\""]


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def losses(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in ("train/loss", "val/loss")}


class Chaos:
    """The run, the faults and the invariants. One thread: inject, then `pump` checks while time passes."""

    def __init__(self, tmp_path: Path, config: Path, rng: random.Random, notify, imds, smtp, s3, bucket: str,
                 faulty=None):
        self.tmp, self.config, self.rng, self.notify = tmp_path, config, rng, notify
        self.imds, self.smtp, self.s3, self.bucket, self.faulty = imds, smtp, s3, bucket, faulty
        self.run_id: str | None = None              # the run's id: nothing from the bucket may change it
        self.planted: set[str] = set()              # .pt names planted in the bucket (set aside when read)
        self.pickle_ran = tmp_path / "the-planted-pickle-ran"
        self.state_dir = tmp_path / "state"
        self.ckpt_dir = self.state_dir / "checkpoints"
        self.state_file = self.state_dir / "state.json"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "NOTIFY_SOCKET": str(notify.path),
                    "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)), "AMAPIANO_TEST_SLOW_SAVE_S": SLOW_SAVE}
        self.daemons: list[Daemon] = []
        self.sup: Daemon | None = None
        self.sup_started = 0.0
        self.ready_at: float | None = None
        self.last_ping = 0.0
        self.msg_seen = 0
        self.frozen_sup: str | None = None        # "cont" or "forever"
        self.restart_due: float | None = None       # systemd's RestartSec after a death
        self.blocked_until_writable = False
        self.injected: collections.Counter[str] = collections.Counter()
        self.checks: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.undo: list[tuple[float, str, object]] = []
        self.storage_fault: str | None = None
        self.storage_window: tuple[float, int] | None = None   # (since, write_failed lines then)
        self.last_updated: tuple[str | None, float] = (None, time.monotonic())
        self.spent_max = 0.0
        self.t0: float | None = None                # boottime the ledger starts from
        self.damaged: dict[str, str] = {}           # .pt name -> its marker's sha256 when the test flipped a byte
        self.garbled_markers: set[int] = set()
        self.frozen_workers: dict[int, float] = {}
        self.cont_at: list[tuple[float, int]] = []
        self.last_ckpt_check = 0.0
        self.filler = self.state_dir / "filler.bin"
        self.mid_save: list[dict] = []               # the kills inside a background write, checked at the end

    # -- systemd, played by the test ----------------------------------------------------------
    def start(self) -> None:
        self.notify.drain()
        self.msg_seen = len(self.notify.messages)
        self.sup = Daemon(self.config, self.env)
        self.daemons.append(self.sup)
        self.sup_started = time.monotonic()
        self.ready_at, self.frozen_sup, self.restart_due = None, None, None
        self.last_updated = (self.last_updated[0], time.monotonic())

    def kill_supervisor(self, why: str) -> None:
        assert self.sup is not None
        self.sup.kill()   # the whole control group, as systemd does after the main process died
        self.sup, self.frozen_sup = None, None
        self.restart_due = time.monotonic() + RESTART_S
        self.frozen_workers.clear()

    def violation(self, text: str) -> None:
        self.violations.append(f"t={time.monotonic() - self.began:.1f}s {text}")
        print("VIOLATION", self.violations[-1], flush=True)

    def _systemd(self, now: float) -> None:
        if self.sup is None:
            if self.restart_due is not None and now >= self.restart_due and not self.blocked_until_writable:
                self.start()
            elif self.blocked_until_writable and self.storage_fault != "disk.read-only":
                self.blocked_until_writable = False
                self.start()
            return
        rc = self.sup.proc.poll()
        if rc is not None:
            log = self.sup.log_text()[-1500:]
            self.sup._log.close()
            self.sup = None
            self.frozen_workers.clear()
            if rc in (65, 78):  # RestartPreventExitStatus: systemd leaves it down, the GPU bills unwatched
                self.violation(f"supervisor exited {rc}; systemd does not restart it: the instance bills "
                               f"unwatched (storage fault: {self.storage_fault}). Log tail: {log[-600:]}")
                if rc == 65 and self.state_file.exists():  # what its message tells a person to do
                    os.replace(self.state_file, self.state_dir / f"state.json.bad.{len(self.violations)}")
                    self.restart_due = now + RESTART_S
                else:
                    self.blocked_until_writable = True
            else:
                self.violation(f"supervisor exited {rc} on its own. Log tail: {log[-600:]}")
                self.restart_due = now + RESTART_S
            return
        for m in self.notify.drain()[self.msg_seen:]:
            if m.startswith("READY=1") and self.ready_at is None:
                self.ready_at = now
                self.last_ping = now
                self.checks["READY after (re)start"] += 1
            elif m == "WATCHDOG=1":
                self.last_ping = now
        self.msg_seen = len(self.notify.messages)
        if self.ready_at is None:
            if now - self.sup_started > START_GRACE_S and self.frozen_sup is None:
                self.violation(f"no READY=1 within {START_GRACE_S:.0f} s of a start")
                self.kill_supervisor("no READY")
            return
        if now - self.last_ping > WATCHDOG_S:
            if self.frozen_sup == "forever":
                self.checks["frozen supervisor killed by the watchdog"] += 1
            else:
                self.violation(f"watchdog expired: no WATCHDOG=1 for {now - self.last_ping:.1f} s from a "
                               f"supervisor the test did not freeze (storage fault: {self.storage_fault})")
            self.kill_supervisor("watchdog")

    # -- the invariants -------------------------------------------------------------------------
    def _state(self) -> dict | None:
        try:
            data = json.loads(self.state_file.read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_failed_lines(self) -> int:
        return self.sup.log_text().count('"event":"state.write_failed"') if self.sup else 0

    def _check_state(self, now: float) -> None:
        state = self._state()
        if state is not None:
            self._check_money(state)
            self._check_run_id(state)
        watching = self.sup is not None and self.frozen_sup is None and self.ready_at is not None
        updated = state.get("updated_at") if state else None
        if updated is not None and updated != self.last_updated[0]:
            self.last_updated = (updated, now)
            if watching:
                self.checks["state.json updated_at advanced"] += 1
            return
        if not watching or self.storage_fault or now - self.sup_started < START_GRACE_S:
            return
        if now - self.last_updated[1] > STATE_BOUND_S:
            self.violation(f"state.json updated_at stuck at {updated} for {now - self.last_updated[1]:.1f} s "
                           "while the supervisor runs")
            self.last_updated = (updated, now)

    def _check_run_id(self, state: dict) -> None:
        rid = state.get("run_id")
        if not isinstance(rid, str):   # garbage the test wrote itself (corrupt.state.json)
            rid = self.run_id
        if self.run_id is None:
            self.run_id = rid
        elif rid != self.run_id:
            self.violation(f"the run changed from {self.run_id} to {rid} (a planted state.json taken?)")
            self.run_id = rid
        if self.pickle_ran.exists():
            self.violation("a pickle planted in the bucket ran")
            self.pickle_ran.rmdir()

    def _check_money(self, state: dict) -> None:
        cost = state.get("cost")
        if not cost:
            return
        total, compute, acc = cost["total_usd"], cost["compute_usd"], cost["accounted_boottime_s"]
        if total < self.spent_max - 1e-6:
            self.violation(f"spend went back: {total} after {self.spent_max}")
        self.spent_max = max(self.spent_max, total)
        if self.t0 is None:
            self.t0 = acc - compute * 3600 / RATE
        if abs(compute - (acc - self.t0) * RATE / 3600) > 1e-6 * max(1.0, compute):
            self.violation(f"spend {compute} is not rate x boot seconds {(acc - self.t0) * RATE / 3600}")
        if cost.get("boots") != 1 or cost.get("unpriced_s"):
            self.violation(f"ledger boots={cost.get('boots')} unpriced_s={cost.get('unpriced_s')}")
        self.checks["spend monotonic and exact"] += 1

    def _check_checkpoints(self, now: float, final: bool = False) -> None:
        from daemon.common import checkpoints

        if not final and now - self.last_ckpt_check < 1.0:
            return
        self.last_ckpt_check = now
        for marker in checkpoints.list_checkpoints(self.ckpt_dir):
            wrong = checkpoints.verify(marker)
            if wrong is None:
                self.checks["committed checkpoint verifies"] += 1
                continue
            if self.damaged.get(marker.path.name) == marker.meta.get("sha256"):
                continue  # the test flipped that byte; it must be quarantined when read
            time.sleep(0.3)  # a prune or a re-save of the same step may be under way: look again
            again = checkpoints.read_marker(marker.marker)
            if again is None or checkpoints.verify(again) is None:
                continue
            self.violation(f"committed checkpoint does not verify: {checkpoints.verify(again)}")

    def _check_frozen_workers(self, now: float) -> None:
        for pid, since in list(self.frozen_workers.items()):
            if not _alive(pid):
                self.checks["frozen worker killed by the liveness rule"] += 1
                del self.frozen_workers[pid]
            elif now - since > FROZEN_WORKER_BOUND_S and self.frozen_sup is None:
                self.violation(f"worker {pid}, frozen {now - since:.0f} s ago, still not killed")
                del self.frozen_workers[pid]

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for item in [u for u in self.undo if u[0] <= now]:
                self.undo.remove(item)
                self._undo(item[1], item[2])
            for when, pid in [c for c in self.cont_at if c[0] <= now]:
                self.cont_at.remove((when, pid))
                _signal(pid, signal.SIGCONT)
                if self.sup is not None and pid == self.sup.proc.pid:
                    self.frozen_sup = None
                    self.last_updated = (self.last_updated[0], now)
            if self.storage_fault == "disk.full":
                _fill(self.filler)  # a failed checkpoint deletes its temp file: take the freed space back
            self._systemd(now)
            self._check_state(now)
            self._check_frozen_workers(now)
            self._check_checkpoints(now)
            if now >= end:
                return
            time.sleep(0.05)

    # -- the faults -----------------------------------------------------------------------------
    def worker_pid(self) -> int | None:
        if self.sup is None or self.sup.proc.poll() is not None:
            return None
        for task in Path(f"/proc/{self.sup.proc.pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                try:
                    argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv[1:3] == [b"-m", b"trainer"] and int(kid) not in self.frozen_workers:
                    return int(kid)
        return None

    def inject(self, kind: str) -> bool:
        """One fault; False if its target is not there right now (the caller draws again)."""
        rng, now = self.rng, time.monotonic()
        if kind.endswith("+supervisor.sigkill"):
            first = kind.split("+")[0]
            if self.sup is None or self.frozen_sup is not None or self.ready_at is None or not self.inject(first):
                return False
            self.kill_supervisor("test")
            return True
        if kind.startswith("worker."):
            pid = self.worker_pid()
            if pid is None:
                return False
            if kind == "worker.sigkill-mid-save":
                return self._kill_mid_save(pid)
            if kind == "worker.sigkill":
                _signal(pid, signal.SIGKILL)
            else:
                _signal(pid, signal.SIGSTOP)
                if kind == "worker.sigstop+cont":
                    self.cont_at.append((now + rng.uniform(0.3, 2.0), pid))
                else:
                    self.frozen_workers[pid] = now
        elif kind.startswith("supervisor."):
            if self.sup is None or self.frozen_sup is not None or self.ready_at is None:
                return False
            if kind == "supervisor.sigkill":
                self.kill_supervisor("test")
            else:
                _signal(self.sup.proc.pid, signal.SIGSTOP)
                self.frozen_sup = "cont" if kind == "supervisor.sigstop+cont" else "forever"
                if self.frozen_sup == "cont":
                    # shorter than the watchdog's slack (WATCHDOG_S less the ping interval)
                    self.cont_at.append((now + rng.uniform(0.3, 1.5), self.sup.proc.pid))
        elif kind in ("disk.full", "disk.read-only"):
            if self.storage_fault is not None:
                return False
            if kind == "disk.full":
                _fill(self.filler)
            elif not _read_only(self.state_dir):
                return False
            self.storage_fault = kind
            self.storage_window = (now, self._write_failed_lines())
            self.undo.append((now + rng.uniform(1.0, 3.0), kind, None))
        elif kind.startswith("imds."):
            if self.imds.fail_with or self.imds.delay_s or self.imds.fault:
                return False
            if kind == "imds.503":
                self.imds.fail_with = 503
            elif kind == "imds.timeout":
                self.imds.delay_s = 1.5   # the daemon's imds_timeout is 1 s
            else:   # slow, short, huge, undecodable; now and then the token request too
                self.imds.set_fault(kind.split(".")[1], token=rng.random() < 0.3)
            self.undo.append((now + rng.uniform(1.0, 4.0), kind, None))
        elif kind == "s3.refuse-reads":
            if self.faulty.mode != "pass":
                return False
            self.faulty.mode = "refuse-reads"
            self.undo.append((now + rng.uniform(2.0, 6.0), kind, None))
        elif kind.startswith("s3.planted-"):
            return self._plant(kind)
        elif kind == "s3.refusing":
            if not self._bucket_exists():
                return False
            for obj in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
            self.s3.delete_bucket(Bucket=self.bucket)
            self.undo.append((now + rng.uniform(2.0, 6.0), kind, None))
        elif kind == "smtp.down":
            if self.smtp.controller is None:
                return False
            self.smtp.down()
            self.undo.append((now + rng.uniform(1.0, 4.0), kind, None))
        elif kind.startswith("corrupt."):
            if self.storage_fault == "disk.read-only":
                return False
            return self._corrupt(kind)
        else:
            raise AssertionError(kind)
        return True

    def _writing(self, pid: int) -> str | None:
        """The checkpoint temp file the worker holds open (a background write in flight), or None."""
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            return None
        for fd in fds:
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.parent == self.ckpt_dir and re.fullmatch(r"\.step_\d{8}\.pt\..*\.tmp", target.name):
                return target.name
        return None

    def _kill_mid_save(self, pid: int) -> bool:
        """SIGKILL the worker while it writes a checkpoint; what must hold is checked at the end."""
        from daemon.common import checkpoints

        deadline = time.monotonic() + MID_SAVE_WAIT_S
        while (partial := self._writing(pid)) is None:
            if time.monotonic() > deadline or self.worker_pid() != pid:
                return False
            self.pump(0.02)
        _signal(pid, signal.SIGKILL)
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        written = checkpoints.step_of(partial[1:].split(".pt.")[0] + ".pt")
        previous = checkpoints.newest(self.ckpt_dir)
        if previous is not None and previous.step >= written:
            self.violation(f"killed while writing step {written}, but step {previous.step} is committed")
        elif previous is not None and checkpoints.verify(previous) is not None \
                and self.damaged.get(previous.path.name) != previous.meta.get("sha256"):
            self.violation(f"killed mid-write: the previous checkpoint does not verify: {checkpoints.verify(previous)}")
        else:
            self.checks["mid-save kill: the previous checkpoint committed and intact"] += 1
        daemon = self.daemons[-1]
        self.mid_save.append({"partial": partial, "written": written, "previous": previous and previous.step,
                              "daemon": len(self.daemons) - 1, "offset": len(daemon.log_text())})
        return True

    def check_mid_save(self) -> None:
        """After the run: each partial file was removed by the next start, which resumed from the
        checkpoint before it (or an older one, if the test damaged that one meanwhile)."""
        for kill in self.mid_save:
            text = "".join([self.daemons[kill["daemon"]].log_path.read_text()[kill["offset"]:]]
                           + [d.log_path.read_text() for d in self.daemons[kill["daemon"] + 1:]])
            events = [json.loads(m.group(1)) for m in re.finditer(r"^<\d>(\{.*\})$", text, re.M)]
            removed = [i for i, e in enumerate(events) if e.get("event") == "checkpoint.partial_removed"
                       and kill["partial"] in (e.get("files") or [])]
            if not removed or (self.ckpt_dir / kill["partial"]).exists():
                self.violation(f"{kill['partial']} (step {kill['written']}, killed mid-write) never removed")
                continue
            self.checks["mid-save kill: the partial file removed at the next start"] += 1
            resumed = next((e for e in events[removed[0]:] if e.get("event") == "train.resumed"), None)
            previous, kill["resumed"] = kill["previous"], resumed and resumed["step"]
            if kill["resumed"] == previous:
                self.checks["mid-save kill: resumed from the previous checkpoint"] += 1
            elif f"step_{previous:08d}.pt" in self.damaged or previous in self.garbled_markers:
                self.checks["mid-save kill: the previous checkpoint damaged by the test, an older one taken"] += 1
            else:
                self.violation(f"after a kill writing step {kill['written']}, resumed from "
                               f"{kill['resumed']}, not the previous checkpoint {previous}")

    def _corrupt(self, kind: str) -> bool:
        from daemon.common import checkpoints

        garbage = self.rng.choice(GARBAGE)
        try:
            if kind == "corrupt.state.json":
                self.state_file.write_bytes(garbage)
            elif kind == "corrupt.heartbeat":
                (self.state_dir / "heartbeat.json").write_bytes(garbage)
            elif kind == "corrupt.hold":
                (self.state_dir / "hold.json").write_bytes(garbage)
            else:
                # Never the last intact ones: with every checkpoint damaged the daemon rightly stops
                # and asks a person (tests/trainer/worker/test_checkpoint.py), which ends the run.
                # Intact: not damaged or garbled by an earlier fault (counting those let two faults
                # leave nothing intact, seed 891623435).
                intact = [m for m in checkpoints.list_checkpoints(self.ckpt_dir)
                          if m.path.name not in self.damaged and m.step not in self.garbled_markers]
                if len(intact) < 3:
                    return False
                m = self.rng.choice(intact)
                if kind == "corrupt.marker":
                    m.marker.write_bytes(garbage)
                    self.garbled_markers.add(m.step)
                else:
                    with open(m.path, "r+b") as f:
                        size = f.seek(0, os.SEEK_END)
                        at = self.rng.randrange(size)
                        f.seek(at)
                        byte = f.read(1)
                        f.seek(at)
                        f.write(bytes([byte[0] ^ 0xFF]))
                    self.damaged[m.path.name] = m.meta["sha256"]
        except FileNotFoundError:   # pruned just now
            return False
        except OSError:   # the disk is full: truncated to nothing, which is garbage too
            pass
        return True

    def _undo(self, kind: str, _arg) -> None:
        if kind in ("disk.full", "disk.read-only"):
            if kind == "disk.full":
                self.filler.unlink(missing_ok=True)
            else:
                subprocess.run(["umount", "-l", str(self.state_dir)], check=True)  # the read-only bind
            since, lines = self.storage_window
            watched = self.sup is not None and self.frozen_sup is None and self.ready_at is not None \
                and self.ready_at < since and time.monotonic() - since > 1.0
            if watched:
                if self._write_failed_lines() > lines:
                    self.checks["state.write_failed logged while the disk was faulted"] += 1
                else:
                    self.violation(f"{kind} for {time.monotonic() - since:.1f} s and no state.write_failed")
            self.storage_fault, self.storage_window = None, None
            self.last_updated = (self.last_updated[0], time.monotonic())
        elif kind.startswith("imds."):
            self.imds.clear_faults()
        elif kind == "s3.refuse-reads":
            self.faulty.mode = "pass"
        elif kind == "s3.refusing":
            self.s3.create_bucket(Bucket=self.bucket)
        elif kind == "smtp.down":
            self.smtp.up()

    def _plant(self, kind: str) -> bool:
        """What anyone with the instance role can write: a state.json of another run or dated 2099
        at $0, or a committed checkpoint (marker and digest consistent) whose bytes are a pickle
        that would run code, a few checkpoints ahead so the next restore takes it."""
        from bucket_faults import plant_checkpoint, plant_state

        if not self._bucket_exists():
            return False
        if kind == "s3.planted-state":
            plant_state(self.s3, self.bucket, "run", self.rng.choice(["planted", self.run_id or "planted"]),
                        "2099-01-01T00:00:00Z", 0.0)
            return True
        step = ((self._state() or {}).get("trainer") or {}).get("last_checkpoint_step")
        if not isinstance(step, int) or step + 40 > STEPS:
            return False
        step += 40
        plant_checkpoint(self.s3, self.bucket, "run", step, pickle.dumps(_Payload(self.pickle_ran)))
        self.planted.add(f"step_{step:08d}.pt")
        return True

    def _bucket_exists(self) -> bool:
        return any(b["Name"] == self.bucket for b in self.s3.list_buckets().get("Buckets", []))

    def calm(self) -> None:
        """Every fault undone: the run must now finish by itself."""
        for item in list(self.undo):
            self.undo.remove(item)
            self._undo(item[1], item[2])
        for _, pid in self.cont_at:
            _signal(pid, signal.SIGCONT)
        self.cont_at.clear()
        if self.frozen_sup is not None and self.sup is not None:
            _signal(self.sup.proc.pid, signal.SIGCONT)
            self.frozen_sup = None
            self.last_ping = time.monotonic()
        self.last_updated = (self.last_updated[0], time.monotonic())


class _Payload:
    """Unpickled by a general unpickler, it makes a directory: the proof that planted code ran."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return os.mkdir, (str(self.flag),)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _read_only(where: Path) -> bool:
    """The state directory turns read-only (EROFS), as ext4's errors=remount-ro does. `mount -o
    remount,ro` itself is refused (EBUSY) while a process holds a file there open for writing (the
    supervisor's and the worker's lock files), so a read-only bind of the directory goes on top:
    every path opened from now on is read-only; descriptors already open keep working. The bind's
    own remount is refused (EBUSY) too if a file was opened for writing through it in between (a
    state.json temp file): tried again for a moment, else the bind is undone and nothing injected."""
    subprocess.run(["mount", "--bind", str(where), str(where)], check=True)
    for _ in range(40):
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], capture_output=True).returncode == 0:
            return True
        time.sleep(0.05)
    subprocess.run(["umount", "-l", str(where)], check=True)
    return False


def _fill(path: Path) -> None:
    """Fill the file system until it says ENOSPC."""
    try:
        f = open(path, "ab", buffering=0)  # noqa: SIM115 - ENOSPC at open means full already
    except OSError:   # full already
        return
    with f:
        for chunk in (1 << 20, 1 << 12):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def draw_faults(rng: random.Random, n: int) -> list[str]:
    kinds = list(KINDS)
    plan = kinds[:n] + rng.choices(kinds, weights=list(KINDS.values()), k=max(0, n - len(kinds)))
    rng.shuffle(plan)
    return plan


@pytest.fixture
def state_tmpfs(tmp_path):
    with tmpfs(tmp_path / "state", "size=32m", "a full and a read-only state directory need a tmpfs mount (root)") as where:
        yield where


def test_chaos(tmp_path, state_tmpfs, aws, imds, smtp_sink, notify_socket, fault_report):
    import boto3

    seed = int(os.environ.get("AMAPIANO_CHAOS_SEED", str(random.randrange(1 << 30))))
    print(f"chaos seed {seed} (replay: AMAPIANO_CHAOS_SEED={seed})", flush=True)
    rng = random.Random(seed)
    from bucket_faults import FaultyBucket

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="chaos")
    faulty = FaultyBucket(aws)   # the daemon's S3 and EC2 go through it; the test's own calls do not
    smtp_sink.up()
    imds.rebalance = {"noticeTime": "2026-01-01T00:00:00Z"}  # one early checkpoint-and-upload
    machine = {
        "supervisor": SUP_SETTINGS,
        "budget": {"hourly_rate_usd": RATE, "max_usd": 1e7, "check_every": "200ms", "ebs_gb": 0.0,
                   "alert_fractions": [0.99], "action": "none"},
        "idle": {"timeout": "1h", "warn_before": "10m", "check_every": "300ms", "action": "none"},
        "aws": {"imds_url": imds.url, "endpoint_url": faulty.url, "region": "us-east-1", "spot_poll": "500ms",
                "s3_bucket": "chaos", "s3_prefix": "run"},
        "milestone": {"at": "30d", "after": "30d"},   # not during this test
        "email": {"transport": "smtp", "to": ["person@example.com"], "sender": "bot@example.com",
                  "smtp_host": "127.0.0.1", "smtp_port": smtp_sink.port, "smtp_starttls": False,
                  "retry_every": "500ms", "timeout": "2s", "shutdown_wait": "2s"},
    }
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref_log = open(ref_dir / "trainer.log", "w")  # noqa: SIM115 - closed once the reference is done
    reference = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(write_config(ref_dir, TRAIN)),
                                  "--log-format", "json"], stdout=ref_log, stderr=subprocess.STDOUT)
    imds.huge_bytes = 64 * 2**20   # the daemon reads 64 KiB of it; the rest is the test's own CPU
    chaos = Chaos(tmp_path, write_config(tmp_path, TRAIN, machine), rng, notify_socket, imds, smtp_sink, s3, "chaos",
                  faulty)
    chaos.began = time.monotonic()
    plan = draw_faults(rng, FAULTS)
    try:
        chaos.start()
        deadline = time.monotonic() + 120
        while (chaos._state() or {}).get("trainer", {}).get("last_checkpoint_step") is None:
            assert time.monotonic() < deadline, "no first checkpoint in 120 s"
            chaos.pump(0.2)
        for kind in plan:
            chaos.pump(rng.uniform(0.3, 1.6))
            for _ in range(8):  # its target (a worker, a supervisor up) may be absent for a moment
                if chaos.inject(kind):
                    chaos.injected[kind] += 1
                    break
                chaos.pump(0.5)
            else:  # another kind, at random
                for k in rng.sample([k for k in KINDS if k != kind], len(KINDS) - 1):
                    if chaos.inject(k):
                        chaos.injected[k] += 1
                        break
        chaos_s = time.monotonic() - chaos.began
        chaos.pump(1.0)
        chaos.calm()
        deadline = time.monotonic() + 300
        while True:
            chaos.pump(0.5)
            state = chaos._state() or {}
            if state.get("phase") == "COMPLETED" and chaos.sup is not None:
                break
            if state.get("phase") == "FAILED":
                chaos.violation(f"the run FAILED: {state.get('failure')}")
                break
            if time.monotonic() > deadline:
                chaos.violation(f"training did not finish in 300 s after the chaos; phase {state.get('phase')}, "
                                f"step {state.get('trainer', {}).get('step')}")
                break
        chaos.pump(1.0)
        assert chaos.sup is not None and chaos.sup.proc.poll() is None, "no supervisor at the end"
        assert chaos.sup.stop(60) == 0
        stopped_at = boottime()
        chaos._check_checkpoints(time.monotonic(), final=True)
    finally:
        chaos.calm()
        for d in chaos.daemons:
            d.kill()
        faulty.close()
        if reference.poll() is None:
            reference.wait(300)

    # (2) the whole life, downtime included, billed once and to the second
    final = json.loads(chaos.state_file.read_text())["cost"]
    chaos._check_money({"cost": final})
    if abs(final["accounted_boottime_s"] - stopped_at) > 3:
        chaos.violation(f"ledger accounted to boottime {final['accounted_boottime_s']}, the daemon stopped at "
                        f"{stopped_at}: seconds lost or invented")
    else:
        chaos.checks["spend to the second over the daemon's life"] += 1

    # (3) only what the test damaged was quarantined, each with a log line; the last checkpoint is the end
    logs = "".join(d.log_path.read_text() for d in chaos.daemons)
    corrupt_lines = [json.loads(m.group(1)) for m in re.finditer(r"<\d>(\{[^\n]*\"event\":\"checkpoint\.corrupt\"[^\n]*\})", logs)]
    quarantined = sorted(p.name for p in (chaos.ckpt_dir / "corrupt").glob("*.pt")) if (chaos.ckpt_dir / "corrupt").exists() else []
    refused_lines = [json.loads(m.group(1)) for m in re.finditer(r"<\d>(\{[^\n]*\"event\":\"checkpoint\.refused\"[^\n]*\})", logs)]
    for name in quarantined:
        if re.sub(r"\.\d+\.pt$", ".pt", name) in chaos.planted:
            if any(e.get("step") == int(name[5:13]) for e in refused_lines):
                chaos.checks["planted checkpoint set aside with a log line, its pickle never run"] += 1
            else:
                chaos.violation(f"{name}, planted in the bucket, set aside without a checkpoint.refused line")
        elif name not in chaos.damaged:
            chaos.violation(f"{name} quarantined, but the test never damaged it")
        elif not any(e.get("step") == int(name[5:13]) for e in corrupt_lines):
            chaos.violation(f"{name} quarantined without a checkpoint.corrupt line")
        else:
            chaos.checks["damaged checkpoint quarantined with a log line"] += 1
    from daemon.common import checkpoints

    chaos.check_mid_save()  # (5) each kill inside a background write
    newest = checkpoints.newest(chaos.ckpt_dir)
    if newest is None or newest.step != STEPS:
        chaos.violation(f"the newest checkpoint is {newest and newest.step}, not the last step {STEPS}")

    # (4) the same losses as the undisturbed run
    ref_log.close()
    assert reference.returncode == 0, (ref_dir / "trainer.log").read_text()[-2000:]
    want = losses(ref_dir / "logs" / "tensorboard" / "train")
    got = losses(tmp_path / "logs" / "tensorboard" / "train")
    assert [s for s, _ in want["train/loss"]] == list(range(1, STEPS + 1))
    if [s for s, _ in got["train/loss"]] != list(range(1, STEPS + 1)):
        chaos.violation(f"train/loss steps are not 1..{STEPS}: {len(got['train/loss'])} points")
    for tag in ("train/loss", "val/loss"):
        mine = dict(got[tag])  # by step: a gap must not shift every later comparison
        bad = [(s, mine.get(s), b) for s, b in want[tag] if mine.get(s) is None or abs(mine[s] - b) > 1e-6]
        if bad or len(got[tag]) != len(want[tag]):
            chaos.violation(f"{tag} differs from the undisturbed run at {bad[:5]} ({len(got[tag])} vs {len(want[tag])})")
        else:
            chaos.checks[f"{tag}: {len(got[tag])} points equal to the undisturbed run"] += 1

    # a job that raised is a bug even when the guard kept the daemon alive
    failed_jobs = re.findall(r'"event":"job\.failed"[^\n]*', logs)
    if failed_jobs:
        chaos.violation(f"{len(failed_jobs)} scheduler jobs raised, e.g. {failed_jobs[0][:300]}")

    n = sum(chaos.injected.values())
    restarts = len(chaos.daemons) - 1
    fault_report(f"chaos (seed {seed}): {n} faults in {chaos_s:.0f} s over a {STEPS}-step run, "
                 f"{restarts} supervisor restarts, {len(chaos.violations)} violations")
    for k, v in sorted(chaos.injected.items()):
        fault_report(f"  injected {k}: {v}")
    for k, v in sorted(chaos.checks.items()):
        fault_report(f"  passed {k}: {v}")
    for kill in chaos.mid_save:
        fault_report(f"  killed writing step {kill['written']}: previous {kill['previous']}, resumed from "
                     f"{kill.get('resumed')}, {kill['partial']} removed")
    for v in chaos.violations:
        fault_report(f"  VIOLATION {v[:400]}")
    assert n == FAULTS
    assert not chaos.violations, "\n".join(chaos.violations)
