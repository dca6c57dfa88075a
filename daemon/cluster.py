"""What differs on a SkyPilot cluster, as the watcher sees it: how many nodes bill, what each costs,
and what "stop the machine" means (end the job: SkyPilot takes the nodes down).

The nodes are SkyPilot's `SKYPILOT_NUM_NODES`; each is priced as one instance is priced: the
config's `[budget] hourly_rate_usd` (per node, on a cluster), else the head's live Spot price
(SkyPilot launches every node of a task with the same resources), else the ceiling. Each node
has its own disk, so EBS bills N times too.
"""
from __future__ import annotations

from typing import Any, Mapping

from .money import Money
from .ports.shutdown import Machine

MAX_NODES = 4096


class NodesError(ValueError):
    """SKYPILOT_NUM_NODES is missing or not a count (the CLI exits 78 with this line)."""


def nodes_from(environ: Mapping[str, str]) -> int:
    text = environ.get("SKYPILOT_NUM_NODES")
    if text is None:
        raise NodesError("SKYPILOT_NUM_NODES is not set: `amapiano-train watch` runs on the head node of a "
                         "SkyPilot task (scripts/skypilot/amapiano-train.yaml)")
    # ASCII digits only: '²'.isdigit() is True and int('²') raises; int('٣') is 3, a count nobody wrote.
    if not (text.strip().isascii() and text.strip().isdigit()) or not 1 <= int(text) <= MAX_NODES:
        raise NodesError(f"SKYPILOT_NUM_NODES must be a whole number from 1 to {MAX_NODES} (got {text[:40]!r})")
    return int(text)


class ClusterMoney(Money):
    """The ledger of the whole cluster: the same Money, every hour billed `nodes` times."""
    GO_ON = "launch the job again (sky jobs launch)"

    def __init__(self, nodes: int, *args: Any, **kwargs: Any):
        self.nodes = nodes
        super().__init__(*args, **kwargs)
        self.ebs_per_h *= nodes

    # Money keeps one instance's price (config, Spot thread, ceiling); the ledger reads the cluster's.
    @property
    def price(self) -> tuple[float, str, str | None]:
        rate, source, at = self.node_price
        return rate * self.nodes, f"{self.nodes} nodes x {source}", at

    @price.setter
    def price(self, value: tuple[float, str, str | None]) -> None:
        self.node_price = value

    def to_json(self) -> tuple[dict | None, dict | None]:
        cost, budget = super().to_json()
        if cost is not None:
            cost.update(nodes=self.nodes, node_rate_usd_per_h=self.node_price[0], node_rate_source=self.node_price[1])
        return cost, budget


class EndJob(Machine):
    """Watch mode's shutdown mechanism: the watcher ends the SkyPilot job (its exit status says how,
    daemon/rules/job_end.py); `sky launch --down -i`'s autostop or the managed job's controller then
    takes the nodes down. Whatever the configured action, on a cluster stopping the nodes is SkyPilot's."""

    # Not "stopping the instance now": the watcher stops no instance, and a person reading that
    # would look for a stopped EC2 instance (or wonder why `sky status` still shows the cluster).
    STOPPING = "ending the SkyPilot job now; SkyPilot takes the nodes down"
    ACTION = "Action: the group checkpoints and stops, the watcher ends the job ('{}' is for one instance)."

    def __init__(self, machine: Machine):
        self.__dict__.update(vars(machine))  # the same config, instance and mirror: only the act differs

    def resolve(self, action: str) -> str:
        return action

    def perform(self, action: str) -> tuple[bool, str]:
        return True, f"skipped: the job ends; SkyPilot takes the nodes down (action '{action}' is for one instance)"
