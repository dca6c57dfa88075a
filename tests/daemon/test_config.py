"""Config validation: a person's mistake stops the program with one line naming file and key, exit 78."""
from __future__ import annotations

import os

import pytest

from conftest import DEMO_TOML, PROD_TOML, cli, write_config
from daemon.common.config import ConfigError, Duration, load_config


def test_shipped_configs_are_valid_and_carry_the_seed_values():
    prod = load_config(PROD_TOML)
    assert prod.model.source == "pretrained" and prod.model.pretrained == "facebook/musicgen-small"
    assert prod.train.epochs == 20 and prod.train.batch_size == "auto" and prod.train.per_step == 32
    assert prod.train.val_every == 60 and prod.train.checkpoint_every == 50  # ~1,200 steps in the whole run
    assert prod.idle.timeout == 2 * 3600
    assert prod.milestone.at == "62.5%"  # week 5 of 8, as a share of training (it arrives however fast)
    assert prod.milestone.min_authenticity_pct == 35 and prod.milestone.max_cost_usd == 600
    assert prod.milestone.max_val_loss == 3.5
    demo = load_config(DEMO_TOML)
    assert demo.model.source == "tiny" and demo.milestone.after < 600


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("90s", 90), ("15m", 900), ("2h", 7200),
                                           ("35d", 35 * 86400), ("1h30m", 5400), ("1w", 604800)])
def test_durations(text, seconds):
    assert Duration.parse(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "2 hours", "h2", "-5s", "2x", "1 5m", "１０s", "5m s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        Duration.parse(text)


@pytest.mark.parametrize("override, expected", [
    ({"train": {"epocs": 3}}, "[train] unknown key 'epocs' (did you mean 'epochs'?)"),
    ({"trian": {"epochs": 3}}, "unknown key 'trian' (did you mean 'train'?)"),
    ({"train": {"epochs": "20"}}, "[train] epochs must be an integer (got '20')"),
    ({"train": {"epochs": 0}}, "[train] epochs must be > 0 (got 0)"),
    ({"train": {"lr": True}}, "[train] lr must be a number (got true)"),
    ({"idle": {"timeout": "2 hours"}}, "[idle] timeout must be a duration"),
    ({"idle": {"timeout": 7200}}, "[idle] timeout must be a duration string"),
    ({"idle": {"action": "shutdown"}}, "[idle] action must be one of 'auto', 'ec2-stop', 'terminate', 'poweroff', 'none'"),
    ({"milestone": {"min_authenticity_pct": 135}}, "[milestone] min_authenticity_pct must be between 0 and 100"),
    ({"model": {"tiny": {"num_heads": 5}}}, "[model.tiny] hidden_size must be divisible by num_heads"),
    ({"model": {"tiny": {"layers": 5}}}, "[model.tiny] unknown key 'layers'"),
    ({"idle": {"timeout": "10m", "warn_before": "1h"}}, "[idle] warn_before must be shorter than timeout"),
    ({"budget": {"alert_fractions": [0.5, 1.5]}}, "[budget] alert_fractions must each be in (0, 1]"),
    ({"train": {"epochs": 20}, "milestone": {"at": "epoch 21"}}, "[milestone] at is epoch 21, after the run's last"),
    ({"milestone": {"at": "epoch ９"}}, "[milestone] at must be"),
    # past these a number is a typo that costs hours or memory (they were accepted)
    ({"milestone": {"samples": 100000000}}, "[milestone] samples must be between 1 and 4096"),
    ({"milestone": {"sample_seconds": 1e9}}, "[milestone] sample_seconds must be between"),
    ({"data": {"frames": 100000000}}, "[data] frames must be between 1 and 100000"),
    ({"email": {"smtp_port": 70000}}, "[email] smtp_port must be between 1 and 65535"),
    ({"aws": {"imds_url": "ftp://x"}}, "[aws] imds_url must be an http:// URL"),
    ({"budget": {"max_usd": 1e308}}, "[budget] max_usd must be between"),
    ({"idle": {"timeout": "1us"}}, "(got '1us')"),
])
def test_bad_values_name_file_and_key(tmp_path, override, expected):
    path = write_config(tmp_path, override)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message and message.count("(got ") <= 1


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    cfg = load_config(write_config(tmp_path))
    assert cfg.run.state_dir == tmp_path / "state"
    assert cfg.state_file == tmp_path / "state" / "state.json"


@pytest.mark.parametrize("content, expected", [
    ("[train\nepochs = 3\n", "invalid TOML"),
    ("epochs = 3\n", "top-level key 'epochs' must be a [section]"),
    ("[train]\nepochs = 1\nepochs = 2\n", "invalid TOML"),
])
def test_config_check_cli_exits_78_with_one_line(tmp_path, content, expected):
    path = tmp_path / "config.toml"
    path.write_text(content)
    result = cli("config", "check", str(path))
    assert result.returncode == 78
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0]


def test_config_check_cli_missing_file(tmp_path):
    result = cli("config", "check", str(tmp_path / "nope.toml"))
    assert result.returncode == 78
    assert "nope.toml: no such file" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_a_config_that_is_no_regular_file_is_one_line_at_once(tmp_path, kind):
    """A FIFO blocked `config check` (and the supervisor's start) for ever; /dev/zero read until
    memory ran out."""
    path = tmp_path / "config.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    result = cli("config", "check", str(path), timeout=30)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "cannot read" in lines[0], result.stderr


def test_config_check_cli_ok(tmp_path):
    result = cli("config", "check", str(PROD_TOML))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_supervise_refuses_a_bad_config_before_doing_anything(tmp_path):
    path = write_config(tmp_path, {"supervisor": {"max_crashes": -1}})
    result = cli("supervise", "--config", str(path), timeout=60)
    assert result.returncode == 78
    assert "[supervisor] max_crashes must be > 0 (got -1)" in result.stderr
    assert not (tmp_path / "state").exists()  # nothing created, nothing half-written


@pytest.mark.parametrize("text, expected", [
    ("[budget]\nmax_usd = inf\n", "[budget] max_usd must be a finite number (got inf)"),
    ("[budget]\nhourly_rate_usd = inf\n", "[budget] hourly_rate_usd must be a finite number (got inf)"),
    ("[budget]\nmax_usd = nan\n", "[budget] max_usd must be a finite number (got nan)"),
    ("[idle]\ntimeout = \"99999999999d\"\n", "[idle] timeout must be at most 3650d"),
    ("[supervisor]\npoll_interval = \"0.001ms\"\n", "[supervisor] poll_interval must be at least 100ms"),
    ("[budget]\ncheck_every = \"1ms\"\n", "[budget] check_every must be at least 100ms"),
    ("[train]\nepochs = 99999999999999\n", "[train] epochs is out of range"),
])
def test_numbers_are_finite_durations_bounded_and_periods_sane(tmp_path, text, expected):
    """Each of these once passed: an infinite cap never fires, an infinite rate writes invalid
    JSON, an unbounded duration overflows, a microsecond poll burns a core."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert expected in str(e.value) and "\n" not in str(e.value)
    r = cli("config", "check", str(path))
    assert r.returncode == 78 and expected in r.stderr and "Traceback" not in r.stderr


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = write_config(tmp_path, {"train": {"epochs": 3}})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # once "invalid TOML ... line 1, column 1"
    assert load_config(path).train.epochs == 3
