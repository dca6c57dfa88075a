"""Cross-field config rules: whatever would make the run fail or a rule misbehave later is refused
by `config check` in one line naming file, section and key (78), and `plan` says the same line.

Each refused case below passed `config check` once and failed later: every rank exiting 78, a halt
job raising at every poll, an infinite ledger, every worker killed as hung, a milestone at
"1e-300%" of training, an idle rule switched off by a threshold of 0."""
from __future__ import annotations

import json

import pytest
from conftest import cli, write_config

from daemon.common import exits
from daemon.common.config import ConfigError, load_config

REFUSED = [
    # 1. width vs batch: every rank exited 78 at start (trainer/worker/distributed.py)
    ({"train": {"nproc_per_node": 3, "batch_size": 8}}, "[train] batch_size (8) must divide by nproc_per_node (3)"),
    ({"train": {"nproc_per_node": 16, "batch_size": 8}}, "[train] batch_size (8) must divide by nproc_per_node (16)"),
    # one optimizer step needs more clips than the synthetic split holds (a run-time ConfigError)
    ({"data": {"synthetic_train_clips": 16}, "train": {"batch_size": 8, "grad_accum_steps": 4}},
     "[train] batch_size x grad_accum_steps (32) is more than [data] synthetic_train_clips (16)"),
    # 2. an action that needs the command, and no command: IndexError at every poll of the halt
    ({"idle": {"action": "poweroff"}, "supervisor": {"poweroff_command": []}},
     "[idle] action = \"poweroff\" needs a command, and [supervisor] poweroff_command is empty"),
    ({"budget": {"action": "poweroff"}, "supervisor": {"poweroff_command": []}},
     "[budget] action = \"poweroff\" needs a command"),
    ({"milestone": {"completion_action": "poweroff"}, "supervisor": {"poweroff_command": []}},
     "[milestone] completion_action = \"poweroff\" needs a command"),
    ({"supervisor": {"poweroff_command": ["systemctl", ""]}},
     "[supervisor] poweroff_command must be words that are not empty"),
    ({"supervisor": {"poweroff_command": ["  "]}}, "[supervisor] poweroff_command must be words that are not empty"),
    # a terminate waits for the mirror's confirmation: with no bucket it never comes
    ({"idle": {"action": "terminate"}}, "[idle] action = \"terminate\" needs [aws] s3_bucket"),
    ({"milestone": {"completion_action": "terminate"}}, "[milestone] completion_action = \"terminate\" needs [aws] s3_bucket"),
    # 3. products of prices: "total_usd": Infinity in state.json
    ({"budget": {"ebs_gb": 1e308, "ebs_usd_per_gb_month": 1e308}},
     "[budget] ebs_gb x ebs_usd_per_gb_month / 730 h is more than $10000 an hour"),
    ({"budget": {"ebs_gb": 1e9, "ebs_usd_per_gb_month": 0.08}}, "[budget] ebs_gb x ebs_usd_per_gb_month"),
    ({"budget": {"hourly_rate_usd": 1e308}}, "[budget] hourly_rate_usd must be between 0 and 10000"),
    ({"budget": {"ceiling_usd_per_hour": 1e300}}, "[budget] ceiling_usd_per_hour must be between 0.001 and 10000"),
    # 4. liveness deadlines shorter than a heartbeat can be seen: every worker killed as hung
    ({"supervisor": {"heartbeat_timeout": "1ms"}}, "[supervisor] heartbeat_timeout must be at least 2s"),
    ({"supervisor": {"poll_interval": "2s", "heartbeat_timeout": "3s"}},
     "[supervisor] heartbeat_timeout must be at least 4s (2 x poll_interval)"),
    ({"supervisor": {"checkpoint_timeout": "1s"}}, "[supervisor] checkpoint_timeout must be at least 2s"),
    ({"supervisor": {"validation_timeout": "500ms"}}, "[supervisor] validation_timeout must be at least 2s"),
    ({"supervisor": {"loading_timeout": "5s"}}, "[supervisor] loading_timeout must be at least 10s"),
    ({"supervisor": {"stop_timeout": "1ms"}}, "[supervisor] stop_timeout must be at least 5s"),
    # 5. strict percent syntax, in a sane range
    ({"milestone": {"at": "+50%"}}, "[milestone] at must be"),
    ({"milestone": {"at": "5_0%"}}, "[milestone] at must be"),
    ({"milestone": {"at": "1e-300%"}}, "[milestone] at must be"),
    ({"milestone": {"at": "0.5%"}}, "[milestone] at must be"),
    ({"milestone": {"at": "100.5%"}}, "[milestone] at must be"),
    ({"milestone": {"at": "50 %"}}, "[milestone] at must be"),
    ({"milestone": {"at": "epoch +3"}}, "[milestone] at must be"),
    ({"milestone": {"at": "epoch 1_0"}}, "[milestone] at must be"),
    ({"red_flags": {"val_loss_stall": "+15%"}}, "[red_flags] val_loss_stall must be"),
    ({"red_flags": {"val_loss_stall": "1e1%"}}, "[red_flags] val_loss_stall must be"),
    # a threshold of 0 % counts every reading as busy: the idle rule never fires with NVML
    ({"idle": {"gpu_util_threshold_pct": 0}}, "[idle] gpu_util_threshold_pct must be between 1 and 100"),
    # other cross-field rules
    ({"supervisor": {"shutdown_retry_initial": "1h", "shutdown_retry_max": "15m"}},
     "[supervisor] shutdown_retry_initial must not exceed shutdown_retry_max"),
    ({"train": {"device": "cpu", "precision": "bf16"}}, "[train] precision \"bf16\" needs a GPU, and [train] device is \"cpu\""),
    ({"milestone": {"prompts": []}}, "[milestone] prompts must hold at least one prompt"),
    ({"milestone": {"clap_model": "laion/larger_clap_music", "descriptions": []}},
     "[milestone] descriptions must hold at least one description"),
    ({"milestone": {"clap_model": "laion/larger_clap_music", "genres": ["amapiano"]}},
     "[milestone] genres must name at least one genre besides amapiano"),
    ({"dataset": {"part_md5": ["f04fa01752a8cc64f6e1ca142a0fef1d"]}}, "[dataset] part_md5 must list one MD5 per part"),
    ({"email": {"retry_every": "2d", "give_up_after": "1d"}}, "[email] retry_every must be shorter than give_up_after"),
]


@pytest.mark.parametrize("override, expected", REFUSED, ids=[e[:60] for _, e in REFUSED])
def test_refused_in_one_line_naming_file_section_and_key(tmp_path, override, expected):
    path = write_config(tmp_path, override)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and message.count("(got ") <= 1


ACCEPTED = [
    {"train": {"nproc_per_node": 2, "batch_size": 8}},
    {"train": {"nproc_per_node": 4, "batch_size": 8, "grad_accum_steps": 1}},
    {"milestone": {"at": "50%"}}, {"milestone": {"at": "62.5%"}}, {"milestone": {"at": "100%"}},
    {"milestone": {"at": "1%"}}, {"milestone": {"at": "epoch 2"}}, {"milestone": {"at": "35d"}},
    {"red_flags": {"val_loss_stall": "15%"}}, {"red_flags": {"val_loss_stall": "3d"}},
    # no command: no poweroff fall-back when StopInstances fails (the stop is retried and alerted)
    {"idle": {"action": "ec2-stop"}, "supervisor": {"poweroff_command": []}},
    {"idle": {"action": "terminate"}, "aws": {"s3_bucket": "runs"}, "supervisor": {"poweroff_command": []}},
    {"budget": {"ebs_gb": 64000, "ebs_usd_per_gb_month": 0.125, "hourly_rate_usd": 98.32}},
    {"supervisor": {"poll_interval": "100ms", "heartbeat_timeout": "3s", "checkpoint_timeout": "4s",
                    "validation_timeout": "4s", "loading_timeout": "20s", "stop_timeout": "10s"}},
    {"milestone": {"clap_model": "", "descriptions": [], "genres": []}},   # the descriptors alone
]


@pytest.mark.parametrize("override", ACCEPTED, ids=[json.dumps(o)[:60] for o in ACCEPTED])
def test_sensible_values_still_pass(tmp_path, override):
    load_config(write_config(tmp_path, override))


def _line(result) -> str:
    """The one stderr line, without the command's prefix."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0].split(": ", 1)[1]


BY_KIND = {"width": REFUSED[0], "command": REFUSED[3], "money": REFUSED[11], "liveness": REFUSED[15],
           "percent": REFUSED[22]}


@pytest.mark.parametrize("kind", BY_KIND)
def test_config_check_and_plan_refuse_with_the_same_line(tmp_path, kind):
    """Through the real CLI: `config check` exits 78 with the line, and `plan` (which once said the
    width fitted) exits 78 with the same line instead of a table."""
    override, expected = BY_KIND[kind]
    path = write_config(tmp_path, override)
    checked = cli("config", "check", str(path))
    assert checked.returncode == exits.CONFIG and checked.stdout == ""
    line = _line(checked)
    assert line.startswith(f"{path}: ") and expected in line
    planned = cli("plan", "--config", str(path), "--gpu", "T4", "--price", "1", env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert planned.returncode == exits.CONFIG and planned.stdout == ""
    assert _line(planned) == line


def test_a_nul_in_the_command_is_refused(tmp_path):
    """subprocess raises ValueError on an embedded NUL: the halt job would have raised at every poll."""
    path = write_config(tmp_path)  # FAST has a [supervisor] section: the key goes in it
    path.write_text(path.read_text().replace("[supervisor]\n", '[supervisor]\npoweroff_command = ["power\\u0000off"]\n', 1))
    r = cli("config", "check", str(path))
    assert r.returncode == exits.CONFIG and "[supervisor] poweroff_command must be words" in _line(r)


def test_plan_refuses_fewer_clips_than_one_optimizer_step(tmp_path):
    """With the token cache's (or --clips') count, plan says what the worker would exit 78 on."""
    path = write_config(tmp_path, {"train": {"batch_size": 8, "grad_accum_steps": 4}})
    r = cli("plan", "--config", str(path), "--clips", "20", "--gpu", "T4", env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert r.returncode == exits.CONFIG and r.stdout == ""
    assert "batch_size x grad_accum_steps (32) is more than the 20 training clips" in _line(r)


def test_the_imds_deadline_is_bounded(tmp_path):
    """restore_state asks IMDS for the region before READY: `imds_timeout = "1h"` passed and could
    hold the start past the unit's TimeoutStartSec."""
    with pytest.raises(ConfigError, match=r"\[aws\] imds_timeout must be > 0 and at most 10s"):
        load_config(write_config(tmp_path, {"aws": {"imds_timeout": "1h"}}))
    load_config(write_config(tmp_path, {"aws": {"imds_timeout": "10s"}}))
