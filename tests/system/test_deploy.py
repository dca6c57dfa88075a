"""scripts/deploy_training.sh: --dry-run shows every step and changes nothing."""
from __future__ import annotations

import subprocess

from conftest import REPO

SCRIPT = REPO / "scripts" / "deploy_training.sh"


def deploy(tmp_path, *args):
    return subprocess.run([str(SCRIPT), "--dry-run", "--prefix", str(tmp_path / "opt"), "--etc", str(tmp_path / "etc"),
                           "--unit-dir", str(tmp_path / "units"), "--user", "amapiano-test-nobody", *args],
                          capture_output=True, text=True, timeout=60)


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
