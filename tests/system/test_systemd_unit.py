"""systemd/*.service: verified and rated by systemd-analyze, and run under a real systemd.

The exposure test holds `systemd-analyze security --offline=true` at <= 2.0 for both units.
The nspawn test boots systemd as PID 1 in a systemd-nspawn container (Debian's
systemd-container) on the host's own /usr and Python, starts the real unit, and checks what a
person would: it reaches active through READY=1 inside its sandbox (no capabilities, a seccomp
filter, UMask=0027: files 0640, directories 0750), a hung supervisor is killed by the watchdog
and started again, journald files each log line under the right PRIORITY, and the TensorBoard
unit comes up with it, serves the run's curves on 127.0.0.1:6006 and stops with it. With
AMAPIANO_REQUIRE_SYSTEMD=1 (set by .ci/run) a missing tool is a failure, not a skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import DEMO_TOML, FAST, REPO, dump_toml, merge

UNIT = REPO / "systemd" / "amapiano-train.service"
TENSORBOARD = REPO / "systemd" / "amapiano-train-tensorboard.service"
MAX_EXPOSURE = 2.0
HARNESS = Path(__file__).with_name("nspawn_harness.sh")
REQUIRED = os.environ.get("AMAPIANO_REQUIRE_SYSTEMD") == "1"
pytestmark = pytest.mark.systemd


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not installed (Debian: apt-get install systemd systemd-container)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return path


def unit_exec_start(unit: Path = UNIT) -> str:
    return re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M).group(1)


def verify(tmp_path: Path, unit_text: str, unit: Path = UNIT) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` in a root holding our units, systemd's own units and ExecStarts."""
    root = tmp_path / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for ours in (UNIT, TENSORBOARD):  # each names the other (PartOf=, WantedBy=)
        exe = root / unit_exec_start(ours).split()[0].lstrip("/")
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        (units / ours.name).write_text(unit_text if ours == unit else ours.read_text())
    return subprocess.run([need("systemd-analyze"), "verify", f"--root={root}", f"etc/systemd/system/{unit.name}"],
                          capture_output=True, text=True, timeout=60, cwd=root)


@pytest.mark.parametrize("unit", [UNIT, TENSORBOARD], ids=lambda u: u.stem)
def test_unit_verifies_without_a_word(tmp_path, unit):
    result = verify(tmp_path, unit.read_text(), unit)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


@pytest.mark.parametrize("unit", [UNIT, TENSORBOARD], ids=lambda u: u.stem)
def test_sandbox_exposure_is_low(unit):
    """`systemd-analyze security --offline=true` rates the unit file itself (0 best, 10 worst)."""
    result = subprocess.run([need("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"{unit.name}: exposure {exposure} {found.group(2)}")
    open_items = [line for line in result.stdout.splitlines() if line.startswith("\u2717")]
    assert exposure <= MAX_EXPOSURE, "\n".join(open_items)


def test_verify_would_catch_a_typo(tmp_path):
    """The check above can fail: verify exits 0 on an unknown key, but it says so."""
    result = verify(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KilMode=mixed"))
    assert "KilMode" in result.stderr


def test_unit_carries_the_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "RestartPreventExitStatus=65 78", "KillMode=mixed",
                 "StateDirectory=amapiano-train", "CacheDirectory=amapiano-train", "LogsDirectory=amapiano-train",
                 "ConfigurationDirectory=amapiano-train", "User=amapiano", "NoNewPrivileges=yes"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    watchdog = int(re.search(r"^WatchdogSec=(\d+)$", text, re.M).group(1))
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    prod = tomllib.loads((REPO / "etc" / "amapiano-train" / "config.toml").read_text())
    from daemon.common.config import Duration

    stop_timeout = Duration.parse(prod.get("supervisor", {}).get("stop_timeout", "90s"))
    assert stop > stop_timeout, "systemd must wait longer than the supervisor waits for the checkpoint"
    assert watchdog >= 30
    assert not re.search(r"^PrivateDevices=yes", text, re.M), "PrivateDevices hides /dev/nvidia*"
    # The GPU through the device ACL; the JIT and NVML's /proc/driver/nvidia left alone.
    for line in ("DevicePolicy=closed", "DeviceAllow=char-nvidia rw", "DeviceAllow=char-nvidiactl rw",
                 "DeviceAllow=char-nvidia-uvm rw", "CapabilityBoundingSet=", "UMask=0027"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not re.search(r"^MemoryDenyWriteExecute=yes", text, re.M), "CUDA, NVRTC and Triton map W+X code"
    assert not re.search(r"^ProcSubset=pid", text, re.M), "NVML reads /proc/driver/nvidia"


def test_tensorboard_unit_reads_and_follows_the_run():
    text = TENSORBOARD.read_text()
    for line in ("PartOf=amapiano-train.service", "WantedBy=amapiano-train.service", "Restart=on-failure",
                 "BindReadOnlyPaths=/var/log/amapiano-train", "ProtectSystem=strict"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert "--host 127.0.0.1 --port 6006" in unit_exec_start(TENSORBOARD)
    # No *Directory=: with DynamicUser= they would chown the run's log directory to it.
    assert not re.search(r"^(StateDirectory|LogsDirectory|CacheDirectory)=", text, re.M)


# ---------------------------------------------------------------------------- under systemd

def ensure_nspawn_runtime_dir() -> None:
    """nspawn refuses to clean up /run/systemd/nspawn when /run is not a tmpfs (a container host)."""
    d = Path("/run/systemd/nspawn")
    d.mkdir(parents=True, exist_ok=True)
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(d)], capture_output=True, text=True)
    if fstype.stdout.strip() != "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(d)], check=True)


def sandbox_relaxations(*paths: Path) -> str:
    """Unit settings that would hide this machine's checkout or Python from the service.

    On an instance the venv is /opt/amapiano-train/venv on the system Python; here the venv's
    interpreter and the editable install live wherever the checkout and Python are, which may
    be under /root, /home or /tmp. Only for those is the matching protection relaxed.
    """
    lines = []
    if any(str(p).startswith(("/root", "/home")) for p in paths):
        lines.append("ProtectHome=read-only")
    if any(str(p).startswith(("/tmp", "/var/tmp")) for p in paths):
        lines.append("PrivateTmp=no")
    return "".join(line + "\n" for line in lines)


def build_root(root: Path, results: Path) -> None:
    for d in ("usr", "etc", "var", "tmp", "root", "opt/amapiano-train/venv", "results"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o755)
    for link in ("bin", "lib", "lib64", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    for name in ("os-release", "passwd", "group", "shadow", "nsswitch.conf"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    (root / "etc" / "machine-id").touch()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")  # TensorBoard looks it up
    with open(root / "etc" / "passwd", "a") as f:
        f.write("amapiano:x:990:990:amapiano-train:/var/lib/amapiano-train:/usr/sbin/nologin\n")
    with open(root / "etc" / "group", "a") as f:
        f.write("amapiano:x:990:\n")
    with open(root / "etc" / "shadow", "a") as f:
        f.write("amapiano:!:19000::::::\n")

    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    shutil.copy(TENSORBOARD, units / TENSORBOARD.name)
    (units / f"{UNIT.name}.wants").mkdir()  # `systemctl enable amapiano-train-tensorboard`
    (units / f"{UNIT.name}.wants" / TENSORBOARD.name).symlink_to(f"../{TENSORBOARD.name}")
    dropin = units / f"{UNIT.name}.d"
    dropin.mkdir()
    # Only what the test needs to differ: a short watchdog so a hang is caught in seconds,
    # short stop timeouts, debug logs, and access to this machine's checkout and Python.
    paths = (REPO, Path(sys.prefix), Path(os.path.realpath(sys.base_prefix)))
    (dropin / "test.conf").write_text(
        "[Service]\nWatchdogSec=3\nTimeoutStopSec=20\nRestartSec=1\n" + sandbox_relaxations(*paths) +
        f"ExecStart=\nExecStart={unit_exec_start()} --log-level debug\n")
    (units / f"{TENSORBOARD.name}.d").mkdir()
    relaxed = sandbox_relaxations(*paths)
    if "PrivateTmp=no" in relaxed:  # DynamicUser= implies a private /tmp that PrivateTmp=no cannot undo;
        # and without a private one, ProtectSystem=strict leaves /tmp read-only: TensorBoard needs a temp dir
        relaxed += "DynamicUser=no\nUser=amapiano\nReadWritePaths=/tmp\n"
    (units / f"{TENSORBOARD.name}.d" / "test.conf").write_text("[Service]\n" + relaxed)
    (units / "harness.service").write_text(
        "[Unit]\nDescription=test harness\nAfter=multi-user.target\n"
        "[Service]\nType=oneshot\nExecStart=/results/harness.sh\nTimeoutStartSec=400\n"
        "ExecStopPost=/bin/systemctl poweroff --no-block\n"
        "[Install]\nWantedBy=multi-user.target\n")
    (units / "multi-user.target.wants").mkdir()
    (units / "multi-user.target.wants" / "harness.service").symlink_to("../harness.service")
    shutil.copy(HARNESS, results / "harness.sh")
    (results / "harness.sh").chmod(0o755)

    quiet = {k: FAST[k] for k in ("idle", "budget", "aws", "milestone")}
    table = merge(merge(tomllib.loads(DEMO_TOML.read_text()), quiet), {
        "run": {"state_dir": "/var/lib/amapiano-train", "cache_dir": "/var/cache/amapiano-train",
                "log_dir": "/var/log/amapiano-train"},
        "data": {"frames": 24, "synthetic_train_clips": 64, "synthetic_valid_clips": 8},
        "train": {"epochs": 400, "batch_size": 4, "grad_accum_steps": 2, "log_every": 1, "checkpoint_every": 4},
        "supervisor": {"poll_interval": "200ms", "restart_backoff_initial": "500ms", "stop_timeout": "10s"},
    })
    (root / "etc" / "amapiano-train").mkdir()
    (root / "etc" / "amapiano-train" / "config.toml").write_text(dump_toml(table) + "\n")


def journal_events(path: Path) -> list[tuple[int, dict]]:
    out = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        if isinstance(message, str) and message.startswith("{"):
            out.append((int(entry["PRIORITY"]), json.loads(message)))
    return out


def _journal_tail(results: Path) -> str:
    path = results / "journal.json"
    if not path.exists():
        return ""
    return "\n".join(json.loads(line).get("MESSAGE", "") if isinstance(json.loads(line).get("MESSAGE"), str) else ""
                     for line in path.read_text().splitlines()[-40:])


def props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def props_colon(path: Path) -> dict[str, str]:
    """/proc/PID/status lines: `Umask:\t0027`."""
    return {k: v.strip() for k, v in (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)}


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_unit_under_a_real_systemd(tmp_path):
    nspawn = need("systemd-nspawn")
    if os.geteuid() != 0:
        (pytest.fail if REQUIRED else pytest.skip)("systemd-nspawn needs root")
    if not Path("/usr/lib/systemd/systemd").exists():
        (pytest.fail if REQUIRED else pytest.skip)("no /usr/lib/systemd/systemd (apt-get install systemd)")
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix):
        pytest.skip("needs the project's virtualenv (scripts/setup.sh)")
    ensure_nspawn_runtime_dir()
    root, results = tmp_path / "root", tmp_path / "results"
    results.mkdir(parents=True)
    build_root(root, results)
    results.chmod(0o777)

    python_home = Path(os.path.realpath(sys.base_prefix))
    binds = ["--bind-ro=/usr", f"--bind-ro={python_home}", f"--bind-ro={REPO}",
             f"--bind-ro={venv}:/opt/amapiano-train/venv", f"--bind={results}:/results"]
    try:
        boot = subprocess.run([nspawn, "-D", str(root), *binds, "--private-network", "--register=no",
                               "--keep-unit", "--console=pipe", "-b"],
                              capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired:
        pytest.fail("container did not power off in 420 s:\n" + (results / "harness.log").read_text()[-4000:])
    log = (results / "harness.log").read_text() if (results / "harness.log").exists() else boot.stderr
    assert (results / "finished").exists(), f"harness did not finish:\n{log[-4000:]}"
    assert (results / "steps").exists(), f"a step failed:\n{log[-3000:]}\n" + _journal_tail(results)

    # Reached active through READY=1 (Type=notify: `systemctl start` returned 0 only then).
    assert (results / "start_rc").read_text().strip() == "0"
    started = props(results / "show_started")
    assert started["ActiveState"] == "active" and started["SubState"] == "running"
    assert re.match(r"(STARTING|RUNNING) step", props(results / "show_training")["StatusText"])

    # ... inside its sandbox: no capabilities, a seccomp filter, UMask=0027, for the worker too.
    for who in ("supervisor", "worker"):
        status = props_colon(results / f"{who}_status")
        assert status["Umask"] == "0027" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", (who, status)
        assert int(status["CapBnd"], 16) == 0 and int(status["CapAmb"], 16) == 0, (who, status)
    # Files 0640, directories 0750. The event files and the worker's lock are opened with
    # 0666/0644 and no chmod, so their 0640 is the umask's doing, not daemon/common/atomic's.
    modes = [line.split(" ", 3) for line in (results / "modes").read_text().splitlines()]
    assert modes and all(owner == "amapiano" for _, _, owner, _ in modes)
    for mode, kind, _, path in modes:
        assert int(mode, 8) & ~(0o750 if kind == "d" else 0o640) == 0, (mode, path)
    assert {p for m, k, _, p in modes if k == "d" and m == "750"} >= {
        "/var/lib/amapiano-train", "/var/log/amapiano-train", "/var/cache/amapiano-train"}
    assert any("events.out.tfevents" in p and m == "640" for m, _, _, p in modes)

    # TensorBoard came up with the run (enabled = wanted by it), served its curves from the
    # read-only log directory, and stopped with it (PartOf=).
    assert props(results / "tensorboard_started")["ActiveState"] == "active"
    assert {"train", "supervisor"} <= set(json.loads((results / "tensorboard_runs").read_text()))
    assert props(results / "tensorboard_stopped")["ActiveState"] == "inactive"

    # The killed worker came back from its checkpoint.
    assert int((results / "resumed_from_step").read_text()) > 0

    # The hung (SIGSTOPped) supervisor was killed by the watchdog and started again.
    after = props(results / "show_after_watchdog")
    assert after["ActiveState"] == "active" and int(after["NRestarts"]) >= 1
    assert after["MainPID"] != (results / "hung_pid").read_text().strip()
    raw = (results / "journal.json").read_text()
    assert "Watchdog timeout" in raw

    # FAILED is visible in systemctl's STATUS and the unit stays up (no restart loop).
    failed = props(results / "show_failed")
    assert failed["ActiveState"] == "active" and failed["StatusText"].startswith("FAILED")
    stopped = props(results / "show_stopped")
    assert stopped["ActiveState"] == "inactive" and stopped["Result"] == "success"
    assert json.loads((results / "state.json").read_text())["phase"] == "FAILED"

    # journald filed every level under its syslog priority.
    events = journal_events(results / "journal.json")
    by_level = {}
    for prio, e in events:
        by_level.setdefault(e["level"], set()).add(prio)
    assert by_level.get("debug") == {7} and by_level.get("info") == {6}
    assert by_level.get("warning") == {4} and by_level.get("error") == {3}, by_level
    warned = (results / "journal_warning.txt").read_text()
    assert '"worker.gave_up"' in warned and '"worker.exited"' in warned
    assert '"level":"info"' not in warned  # -p warning shows no info lines
