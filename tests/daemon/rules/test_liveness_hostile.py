"""The heartbeat's checkpoint_write_s (and its other figures) against hostile values, through the
port the supervisor reads it with (daemon/heartbeat.py) into the liveness rule (issue 18): a value
that is no finite number is unknown, never a raise in the tick (which would skip the liveness rule
and leave a frozen worker running) and never a longer allowance than MAX_WRITE_S gives."""
from __future__ import annotations

import math
import os

import pytest

from daemon import heartbeat
from daemon.rules import liveness
from daemon.rules.liveness import Allowances, LivenessMemory

ALLOW = Allowances(training=10.0, loading=60.0, validating=20.0, checkpointing=30.0)
PID, STARTED = 4242, 1000.0
HUGE = "1" + "0" * 400  # valid JSON: an integer no float holds


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1e400", "NaN", "-Infinity", "-5", '"41.5"', "true", "[1]",
                                   '{"s": 1}', "null", "1e300"])
@pytest.mark.parametrize("field", ["checkpoint_write_s", "samples_per_s", "train_loss"])
def test_a_heartbeat_figure_that_is_no_finite_number_is_unknown_and_a_frozen_worker_is_still_killed(
        tmp_path, field, value):
    path = tmp_path / "heartbeat.json"
    path.write_text(f'{{"pid": {PID}, "activity": "checkpointing", "step": 12, "{field}": {value}}}')
    os.utime(path, (1100.0, 1100.0))
    beat = heartbeat.read(path)
    assert beat is not None and beat.fields["step"] == 12, "the rest of the heartbeat is still read"
    kept = beat.fields.get(field)
    assert kept is None or (isinstance(kept, float) and math.isfinite(kept)), kept
    memory = LivenessMemory()
    for now in (1100.0, 1100.0 + 6 * liveness.MAX_WRITE_S + 1):
        hung, memory = liveness.decide(liveness.snapshot(now, PID, STARTED, beat), ALLOW, memory)
    assert hung and "checkpointing" in hung, "a frozen worker outlived every allowance"
