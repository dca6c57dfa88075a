"""`[train] batch_size = "auto"`, `clips_per_step` and `compile = "auto"`: what config check takes
and refuses (one line naming file, section and key), and the width they allow."""
from __future__ import annotations

import dataclasses

import pytest
from conftest import cli, write_config

from daemon.common import exits
from daemon.common.config import ConfigError, TrainConfig, load_config
from daemon.worker import processes


def test_auto_is_the_default_and_the_clips_per_step_follow_what_was_set(tmp_path):
    assert (TrainConfig().batch_size, TrainConfig().compile, TrainConfig().per_step) == ("auto", "auto", 32)
    auto = load_config(write_config(tmp_path, {"train": {"batch_size": "auto", "clips_per_step": 16,
                                                         "compile": "auto", "grad_accum_steps": 4}})).train
    assert (auto.batch_size, auto.per_step, auto.compile, auto.eval_batch) == ("auto", 16, "auto", 8)
    fixed = load_config(write_config(tmp_path, {"train": {"batch_size": 4, "grad_accum_steps": 2}})).train
    assert (fixed.per_step, fixed.eval_batch, fixed.compile) == (8, 4, "auto")
    same = load_config(write_config(tmp_path, {"train": {"batch_size": 4, "grad_accum_steps": 2,
                                                         "clips_per_step": 8, "compile": True}})).train
    assert (same.per_step, same.compile) == (8, True)


REFUSED = [
    ({"train": {"batch_size": "automatic"}}, "[train] batch_size must be an integer or 'auto' (got 'automatic')"),
    ({"train": {"batch_size": 0}}, "[train] batch_size must be \"auto\" or a number of clips from 1 to 4096"),
    ({"train": {"compile": "sometimes"}}, "[train] compile must be true or false or 'auto' (got 'sometimes')"),
    ({"train": {"batch_size": "auto", "grad_accum_steps": 8}},
     "[train] grad_accum_steps is chosen with batch_size = \"auto\""),
    ({"train": {"batch_size": 4, "grad_accum_steps": 2, "clips_per_step": 32}},
     "[train] clips_per_step (32) must be batch_size x grad_accum_steps (8) or 0"),
    ({"train": {"batch_size": "auto", "clips_per_step": 32, "grad_accum_steps": 4, "nproc_per_node": 3}},
     "[train] clips_per_step (32) must divide by nproc_per_node (3)"),
    ({"train": {"batch_size": "auto", "clips_per_step": 128, "grad_accum_steps": 4}},
     "[train] clips_per_step (128) is more than [data] synthetic_train_clips (64)"),
    ({"train": {"clips_per_step": -1}}, "[train] clips_per_step must be between 0 and 100000"),
]


@pytest.mark.parametrize("override, expected", REFUSED, ids=[str(r[0]["train"])[:50] for r in REFUSED])
def test_what_cannot_work_is_refused_in_one_line(tmp_path, override, expected):
    path = write_config(tmp_path, override)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_config_check_refuses_grad_accum_beside_auto_with_exit_78(tmp_path):
    r = cli("config", "check", str(write_config(tmp_path, {"train": {"batch_size": "auto", "grad_accum_steps": 2}})))
    assert r.returncode == exits.CONFIG and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "set clips_per_step" in r.stderr and "Traceback" not in r.stderr


def test_auto_width_divides_the_clips_per_step(tmp_path):
    cfg = load_config(write_config(tmp_path, {"train": {"batch_size": "auto", "clips_per_step": 24,
                                                        "grad_accum_steps": 4}}))
    train = dataclasses.replace(cfg.train, nproc_per_node="auto", device="cuda")
    assert [processes(train, gpus=n) for n in (1, 2, 3, 4, 5, 8, 16)] == [1, 2, 3, 4, 4, 8, 12]
