"""What a policy can ask for: plain values that the supervisor's executor carries out."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendAlert:
    kind: str
    subject: str
    body: str


@dataclass(frozen=True)
class StopWorker:
    """Checkpoint and stop the worker, and do not start it again."""

    reason: str


@dataclass(frozen=True)
class Shutdown:
    """The configured shutdown action (ec2-stop, poweroff, none), after a bounded wait for mail."""

    action: str
    reason: str


Action = SendAlert | StopWorker | Shutdown
