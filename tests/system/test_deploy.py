"""scripts/deploy_training.sh: --dry-run shows every step and changes nothing."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "deploy_training.sh"


def deploy(tmp_path, *args, script=SCRIPT, env=None):
    return subprocess.run([str(script), "--dry-run", "--prefix", str(tmp_path / "opt"), "--etc", str(tmp_path / "etc"),
                           "--unit-dir", str(tmp_path / "units"), "--user", "amapiano-test-nobody", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_dry_run_lists_the_install_and_touches_nothing(tmp_path):
    result = deploy(tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    steps = ["+ useradd --system", f"-m venv {tmp_path}/opt/venv", "pip install --quiet torch",
             f"pip install --quiet --upgrade {tmp_path}/opt/src", f"{tmp_path}/etc/config.toml.dist",
             f"install -m 0644 {REPO}/etc/amapiano-train/config.toml {tmp_path}/etc/config.toml\n",
             f"amapiano-train config check {tmp_path}/etc/config.toml",
             f"{tmp_path}/units/amapiano-train.service", f"{tmp_path}/units/amapiano-train-tensorboard.service",
             "+ systemctl daemon-reload", "+ systemctl enable amapiano-train.service amapiano-train-tensorboard.service"]
    positions = [out.find(s) for s in steps]
    assert all(p >= 0 for p in positions), [s for s, p in zip(steps, positions) if p < 0]
    assert positions == sorted(positions), "steps out of order"
    assert "systemctl restart" not in out
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_keeps_the_persons_config(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.toml").write_text("# mine\n")
    result = deploy(tmp_path, "--start")
    assert result.returncode == 0, result.stderr
    assert "keeping the existing" in result.stdout
    assert f"+ install -m 0644 {REPO}/etc/amapiano-train/config.toml {tmp_path}/etc/config.toml\n" not in result.stdout
    assert "+ systemctl restart amapiano-train.service" in result.stdout
    assert (tmp_path / "etc" / "config.toml").read_text() == "# mine\n"


def test_bad_option_and_help():
    bad = subprocess.run([str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option '--frobnicate'" in bad.stderr
    helped = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--dry-run" in helped.stdout


def fake_source(tmp_path):
    """A source tree the way a person's clone leaves it: their uid on every file, and the script."""
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "systemd").mkdir()
    (src / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (src / "systemd" / "amapiano-train.service").write_text("[Service]\n")
    shutil.copy(SCRIPT, src / "scripts" / "deploy_training.sh")
    for path in [src, *src.rglob("*")]:
        os.chown(path, 4242, 4242)
    return src


@pytest.mark.skipif(os.geteuid() != 0, reason="the extraction keeps owners only when root runs it")
def test_the_source_is_extracted_owned_by_root_not_by_the_cloner(tmp_path):
    """Root extracting a tar keeps the archived owners: the cloner (uid 4242) owned the code the
    next deploy installs as root. The script's own tar lines, run for real."""
    src = fake_source(tmp_path)
    result = deploy(tmp_path, script=src / "scripts" / "deploy_training.sh")
    assert result.returncode == 0, result.stderr
    tars = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ tar ")]
    assert len(tars) == 2  # create, extract
    (tmp_path / "opt" / "src.new").mkdir(parents=True)
    for command in tars:
        subprocess.run(command, check=True, timeout=60)
    extracted = tmp_path / "opt" / "src.new"
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [extracted, *extracted.rglob("*")]} == {(0, 0)}


def test_no_polkit_is_said_in_one_line_not_skipped_in_silence(tmp_path):
    """Without /etc/polkit-1/rules.d the poweroff rule was skipped without a word, and the
    `poweroff` action (and ec2-stop's fall-back) was then denied at the cap."""
    result = deploy(tmp_path, env={"POLKIT_DIR": str(tmp_path / "no-rules.d"),
                                   "PKLA_DIR": str(tmp_path / "no-pkla" / "50-local.d")})
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "polkit" in line]
    assert len(said) == 1 and "poweroff" in said[0] and "ec2-stop" in said[0], result.stderr
    assert "50-amapiano-train" not in result.stdout


def test_an_older_polkit_gets_its_own_kind_of_rule(tmp_path):
    """polkit before 0.106 (Ubuntu 22.04's, the Deep Learning AMIs') reads .pkla files, not rules.d."""
    (tmp_path / "localauthority").mkdir()
    result = deploy(tmp_path, env={"POLKIT_DIR": str(tmp_path / "no-rules.d"),
                                   "PKLA_DIR": str(tmp_path / "localauthority" / "50-local.d")})
    assert result.returncode == 0, result.stderr
    assert f"+ write {tmp_path}/localauthority/50-local.d/50-amapiano-train.pkla" in result.stdout
    assert "polkit" not in result.stderr
