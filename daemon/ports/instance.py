"""Where we run: the EC2 instance identity (IMDSv2) and the AWS clients for its region.

IMDS can answer 503 or time out at start, or at any time. The identity is re-tried with backoff
for the daemon's whole life (never "not EC2" for good after one miss); until it is known, Spot
notices cannot be read and ec2-stop cannot be called, and both say so at warning level.

IMDS is read on an outside thread (`watch`, daemon/outside_jobs.py), never on the scheduler's:
the scheduler reads what it left (`identity`, `notices`), each set in one assignment.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from .aws import Aws
from ..common.config import Config
from .imds import Imds, ImdsError

RETRY_MAX_S = 300.0


class Instance:
    def __init__(self, cfg: Config, log: Any, clock: Any):
        self.cfg, self.log, self.clock = cfg, log, clock
        self.imds = Imds(cfg.aws.imds_url, cfg.aws.imds_timeout, clock) if cfg.aws.imds_url else None
        self.identity: dict | None = None
        self.aws: Aws | None = Aws(cfg.aws, cfg.aws.region) if cfg.aws.region else None
        self.misses = 0
        self._next_try = 0.0
        self.facts: dict | None = None   # what stopping can do here (aws.instance_facts), once known
        self.notices: tuple[dict | None, dict | None] | None = None  # (interruption, rebalance), last read
        self._refreshing = threading.Lock()  # the outside threads (and restore_state before them) share IMDS

    @property
    def on_ec2(self) -> bool:
        return self.identity is not None

    def refresh(self) -> bool:
        """Try to learn the identity (if due); True once it is known. Reads IMDS: never call it
        from the scheduler's thread."""
        if self.identity is not None or self.imds is None:
            return self.identity is not None
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> bool:
        if self.identity is not None:
            return True  # another thread learnt it while this one waited
        now = self.clock.monotonic()
        if now < self._next_try:
            return False
        try:
            doc = self.imds.identity()
        except ImdsError as e:
            self.misses += 1
            delay = min(RETRY_MAX_S, 2.0 ** min(self.misses, 9))
            self._next_try = now + delay
            level = "info" if self.misses == 1 and not self.cfg.aws.region else "warning"
            getattr(self.log, level)("aws.identity_unknown", reason=str(e), attempt=self.misses,
                                     retry_in_s=delay, note="no Spot notices, no live price, no ec2-stop until known")
            return False
        if self.aws is None and isinstance(doc.get("region"), str):
            self.aws = Aws(self.cfg.aws, doc["region"])  # before the identity: a reader that sees it finds both
        self.identity = doc
        self.log.info("aws.instance", instance_id=doc["instanceId"], instance_type=doc["instanceType"],
                      zone=doc["availabilityZone"], after_misses=self.misses)
        return True

    def ec2_stop(self) -> str:
        if self.identity is None or self.aws is None:
            raise RuntimeError("not on EC2 (no instance identity yet)")
        return self.aws.stop_instance(self.identity["instanceId"])

    def terminate(self) -> str:
        if self.identity is None or self.aws is None:
            raise RuntimeError("not on EC2 (no instance identity yet)")
        return self.aws.terminate_instance(self.identity["instanceId"])

    def learn_facts(self) -> dict | None:
        """Market, Spot request type and interruption behaviour, shutdown behaviour (read once).
        Only from the identity already known: the halt job runs on the scheduler's thread."""
        if self.facts is None and self.identity is not None and self.aws is not None:
            try:
                self.facts = self.aws.instance_facts(self.identity["instanceId"])
                self.log.info("aws.instance_facts", **self.facts, can_stop=self.can_stop)
            except Exception as e:
                self.log.warning("aws.instance_facts_failed", error=f"{type(e).__name__}: {e}")
        return self.facts

    @property
    def can_stop(self) -> bool | None:
        """StopInstances works for on-demand and for a persistent Spot request that stops on
        interruption; a one-time Spot instance can only be terminated. None: not known yet."""
        f = self.facts
        if f is None:
            return None
        return f["lifecycle"] != "spot" or (f["spot_request_type"] == "persistent"
                                             and f["interruption_behavior"] == "stop")

    def section(self) -> dict | None:
        """state.json's `instance` section (shown by `status`)."""
        if self.identity is None:
            return None
        i = self.identity
        return {"instance_id": i.get("instanceId"), "instance_type": i.get("instanceType"),
                "zone": i.get("availabilityZone"), **(self.facts or {}), "can_stop": self.can_stop}

    def watch(self) -> None:
        """The outside thread's job: learn the identity (when due), then read the Spot notices into
        `notices`; when IMDS cannot tell, the last ones read stay (AWS does not take a notice back)."""
        if not self.refresh():
            return
        assert self.imds is not None
        try:
            self.notices = self.imds.spot_action(), self.imds.rebalance()
        except ImdsError as e:
            self.log.warning("spot.imds_failed", error=str(e))

    def ses_factory(self) -> Callable[[], Any] | None:
        """A factory for the SES client (mail through SES), in our region once it is known (the
        identity may come after the mail transport is made)."""
        if self.cfg.email.transport != "ses":
            return None
        return lambda: Aws(self.cfg.aws, self.cfg.aws.region or (self.identity or {}).get("region")
                           or "us-east-1").client("ses")
