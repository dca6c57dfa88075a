"""What a policy can ask for: plain values that the one executor (daemon/executor.py) carries out.

Policies and collaborators return these; none of them touches a process, a file or the network.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendAlert:
    kind: str
    subject: str
    body: str
    once: str = ""  # a key: sent once per run, daemon restarts included (daemon/ports/mail.py Outbox)
    attachments: tuple[str, ...] = ()  # files mailed while they fit, best first (daemon/ports/mail_attach.py)
    attachments_at: str = ""  # the bucket folder that holds them too (s3://.../reports/): named when one does not fit


@dataclass(frozen=True)
class StartWorker:
    """Launch the worker; it resumes from the newest valid checkpoint."""


@dataclass(frozen=True)
class CheckpointWorker:
    """SIGUSR2: write a checkpoint now and keep training (a Spot rebalance notice)."""

    reason: str


@dataclass(frozen=True)
class StopWorker:
    """Checkpoint and stop the worker, and do not start it again (halt)."""

    reason: str


@dataclass(frozen=True)
class PauseWorker:
    """Checkpoint and stop the worker until ReleaseWorker (the milestone needs the GPU)."""

    reason: str


@dataclass(frozen=True)
class ReleaseWorker:
    reason: str


@dataclass(frozen=True)
class SpotInterrupted:
    """AWS takes the instance back: checkpoint and stop the worker, upload, let AWS act."""

    deadline: str | None


@dataclass(frozen=True)
class KillWorker:
    """A hung worker (heartbeat past its deadline): dump its stack, SIGKILL, restart like a crash."""

    reason: str


@dataclass(frozen=True)
class Shutdown:
    """The configured shutdown action (ec2-stop, poweroff, none), after a bounded wait for mail."""

    action: str
    reason: str


@dataclass(frozen=True)
class Upload:
    """Mirror the newest committed checkpoint at or past min_step (and state.json) to S3."""

    why: str
    min_step: int = 0


Action = (SendAlert | StartWorker | CheckpointWorker | StopWorker | PauseWorker | ReleaseWorker
          | SpotInterrupted | KillWorker | Shutdown | Upload)
