"""`amapiano-train watch`: the supervisor in watch mode, on the head node of a SkyPilot cluster.

It does everything `supervise` does on one instance except start the worker: SkyPilot's run
script starts torchrun on every node, and the watcher adopts this node's group through the pid
file the script writes (daemon/ports/group.py). Then the same jobs and the same rules: the
heartbeat and checkpoints on the shared state directory (the bucket mount), one ledger for the
cluster (daemon/cluster.py), the budget cap, the idle rule, the milestone and the completion, the
red flags, the alerts, the mirror, state.json and TensorBoard.

Where one instance restarts its worker and stops its machine, the watcher ends the job, and its
exit status tells SkyPilot what to do (daemon/rules/job_end.py): 0 when a rule stopped the group
or training completed (not run again), 75 when the group stalled, stopped unasked or met a Spot
notice (recovered: `recover_on_exit_codes`), 1 on a crash (`max_restarts_on_errors`). A SIGTERM
(`sky jobs cancel`, `sky down`, the node going away) checkpoints the group, is recorded in
state.json, and exits 75: a cancelled job stays cancelled whatever its status, a lost node is recovered.

Why its own command rather than `supervise --watch`: it takes what only a cluster has (the run
script's pid file, SKYPILOT_NUM_NODES) and answers with the job's status, not systemd's.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from .actions import SendAlert, Shutdown
from .cluster import ClusterMoney, EndJob
from .common import exits, stopfile
from .common.atomic import read_json
from .common.clock import Clock, iso
from .ports.group import WatchedGroup
from .ports.shutdown import mail_status
from .rules import job_end
from .states import Phase
from .supervisor import Supervisor

LIVE = (Phase.STARTING.value, Phase.RUNNING.value, Phase.BACKOFF.value, Phase.PAUSED.value, Phase.STOPPING.value)


class Watcher(Supervisor):
    ENDING = "SkyPilot job will end and SkyPilot takes the nodes down"

    def __init__(self, cfg: Any, log: Any, nodes: int, pid_file: Path, failure_file: Path | None = None, **kw: Any):
        clock = kw.pop("clock", None) or Clock()
        before = read_json(cfg.state_file) or {}  # as the last watcher left it (open_run writes it anew)
        group = WatchedGroup(pid_file, failure_file or cfg.failure_file, cfg.heartbeat_file,
                             stopfile.path(cfg.run.state_dir), clock, self._why, config=cfg.source)
        super().__init__(cfg, log, worker=group, clock=clock, **kw)
        s = self.state
        # The two differences from one instance: the bill is the cluster's, "stop the machine" is "end the job".
        run = (s.run_id, s.started_at)
        self.money = ClusterMoney(nodes, cfg, log, self.clock, self.instance, s.cost, s.budget, run)
        self.shutdown_stages.machine = EndJob(self.shutdown_stages.machine)
        self.job: job_end.JobEnd | None = None
        self.last_exit: Any = None
        self._since = self.clock.monotonic()
        self.cluster: dict[str, Any] = {"nodes": nodes, "pid_file": str(pid_file)}
        if before.get("phase") in LIVE:  # the last watcher never ended its job: its node went away
            last = {"phase": before["phase"], "last_seen": before.get("updated_at")}
            self.cluster["previous_job"] = {**last, "ended": "lost without a stop (a preemption or a node "
                                            "failure); SkyPilot relaunched the job"}
            log.warning("cluster.previous_job_lost", **last)
        if stopfile.clear(stopfile.path(cfg.run.state_dir)):  # an earlier job's, for a group that is gone
            log.info("cluster.stale_stop_request_removed")

    def _why(self) -> str:
        """What the stop request tells the group (and its log): the hold's reason, or the job's end."""
        if self.lifecycle.hold is not None:
            return self.lifecycle.hold.reason
        return self.job.reason if self.job is not None else "the job is ending"

    # -- adopting instead of starting ----------------------------------------------------------
    def _may_start_worker(self) -> bool:
        """The group is SkyPilot's: "starting" it is adopting it, once, when the run script has."""
        return not self.lifecycle.launches and not self.mirror.restore_pending and self.worker.running

    def cost_job(self) -> None:
        super().cost_job()
        # Relaunched over the cap (the ledger is on the bucket, the cap fired before): stop at once.
        if self.money.over_cap and self.worker.running and self.shutdown_stages.halt is None:
            self.executor.execute([Shutdown(self.cfg.budget.action, "budget cap reached")])

    # -- ending the job ------------------------------------------------------------------------
    def tick(self) -> None:
        super().tick()
        if self.job is not None:
            return
        lc, t = self.lifecycle, self.state.trainer
        halt = self.shutdown_stages.halt
        early = self.worker.ended_unwatched() if not lc.launches else None
        snap = job_end.JobSnapshot(
            group_running=self.worker.running or self.worker.unread, adopted=lc.launches > 0,
            waited_s=self.clock.monotonic() - self._since, adopt_limit_s=self.cfg.supervisor.loading_timeout,
            busy=self.evaluation.busy or self.evaluation.final_pending or self.shutdown_stages.in_progress,
            halted=self.finished.is_set(), halt_reason=halt.reason if halt else None, phase=lc.phase,
            exit_kind=self.last_exit.kind if self.last_exit else None, exit_code=t.last_exit_code,
            killed=lc.kill_reason, unwatched=early is not None, unwatched_exit=early.code if early else None)
        if (end := job_end.decide(snap)) is not None:
            self.end(end)

    def _on_worker_exit(self, ended: Any, now: float) -> None:
        self.last_exit = ended
        super()._on_worker_exit(ended, now)

    def end(self, end: job_end.JobEnd) -> None:
        self.job = end
        self.log.warning("cluster.job_ends", exit=end.code, reason=end.reason)
        self.cluster["job_end"] = {"exit": end.code, "reason": end.reason, "at": iso(self.clock.now())}
        if self.state.shutdown is None and self.shutdown_stages.halt is None:
            self.state.shutdown = {"reason": end.reason, "action": "end the job", "at": iso(self.clock.now()),
                                   "result": f"exit {end.code}"}
            # No rule's shutdown alert went before this end (a stall, a crash, a group that never came).
            self.executor.execute([SendAlert("shutdown", f"the job ends ({end.reason})", _told(end))])
        self.request_stop()

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None and self.job is None:
            notice = "interruption" in self.spot_seen
            why = (f"{signal.Signals(signum).name}: " + ("preempted (a Spot interruption notice came first)" if notice
                   else "the job was cancelled (sky jobs cancel, sky down) or its node is going away"))
            self.job = job_end.JobEnd(job_end.RECOVER, why)
            self.cluster["job_end"] = {"exit": job_end.RECOVER, "reason": why, "at": iso(self.clock.now())}
            self.state.shutdown = {"reason": why, "action": "end the job", "at": iso(self.clock.now()),
                                   "result": "the group was asked to checkpoint and stop"}
        super().request_stop(signum, _frame)

    def shutdown(self) -> None:
        # The job's end went out as an alert a moment ago: a server that refused the first try gets its
        # retries (as a rule's shutdown waits for its mail) before this process, and the outbox, end.
        deadline = self.clock.monotonic() + self.cfg.email.shutdown_wait
        while (self.job is not None and not self.worker.running and mail_status(self.outbox.to_json())[0]
               and self.clock.monotonic() < deadline):
            time.sleep(0.2)
        super().shutdown()

    def _collect(self) -> None:
        super()._collect()
        self.state.extra["cluster"] = dict(self.cluster)

    def run(self) -> int:
        super().run()
        return self.job.code if self.job is not None else exits.FAILED


def _told(end: job_end.JobEnd) -> str:
    what = {exits.OK: "SkyPilot does not run it again; autostop takes the nodes down.",
            job_end.RECOVER: "SkyPilot recovers the job (recover_on_exit_codes) from the newest checkpoint."}
    return (f"The watcher on the head node ends the SkyPilot job with exit {end.code}: {end.reason}. "
            + what.get(end.code, "SkyPilot retries it max_restarts_on_errors times; `sky jobs logs` says more."))
