"""scripts/skypilot/amapiano-train.yaml: a task SkyPilot accepts, that starts our worker.

SkyPilot's own parser (sky.Task.from_yaml_config) runs when skypilot is importable; it is not a
test dependency (it pins click < 8.2 and brings ~100 packages), so otherwise the YAML is checked
against SkyPilot's schemas, copied into tests/skypilot_schema.json (Apache-2.0), with the same
validator SkyPilot uses. Either way the shell in setup and run is parsed, the config that setup
writes passes `amapiano-train config check`, and run starts a node of a cluster.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import REPO

TASK = REPO / "scripts" / "skypilot" / "amapiano-train.yaml"
SCHEMAS = REPO / "tests" / "skypilot_schema.json"
ENVS = {"BUCKET": "amapiano-test-bucket"}


@pytest.fixture(scope="module")
def task() -> dict:
    return yaml.safe_load(TASK.read_text())


def sky_validator(schema: dict) -> jsonschema.protocols.Validator:
    """SkyPilot's validator (sky/utils/validator.py): Draft 7 plus case-(in)sensitive enums."""
    def enum(lower):
        def check(_validator, enums, instance, _schema):
            norm = (lambda s: s.lower()) if lower else (lambda s: s)
            if norm(instance) not in [norm(e) for e in enums]:
                yield jsonschema.ValidationError(f"{instance!r} is not one of {enums!r}")
        return check

    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, validators={
        "case_insensitive_enum": enum(True), "case_sensitive_enum": enum(False)})
    return cls(schema)


def test_task_matches_skypilots_schemas(task):
    schemas = json.loads(SCHEMAS.read_text())
    sky_validator(schemas["task"]).validate({k: v for k, v in task.items() if v is not None})
    sky_validator(schemas["resources"]).validate(task["resources"])
    for target, mount in task["file_mounts"].items():
        assert isinstance(mount, dict), target
        sky_validator(schemas["storage"]).validate(mount)


def test_the_schema_check_can_fail(task):
    schemas = json.loads(SCHEMAS.read_text())
    with pytest.raises(jsonschema.ValidationError):
        sky_validator(schemas["task"]).validate({**task, "num_node": 2})
    with pytest.raises(jsonschema.ValidationError):
        sky_validator(schemas["storage"]).validate({"source": "s3://b/p", "mode": "MOUNT_CACHE"})


def test_skypilot_parses_the_task(task, tmp_path, monkeypatch):
    sky = pytest.importorskip("sky", reason="skypilot not installed (the schema test above stands in)")
    monkeypatch.setenv("HOME", str(tmp_path))  # SkyPilot keeps its state under ~/.sky
    monkeypatch.chdir(REPO)  # workdir: . is where `sky launch` runs
    parsed = sky.Task.from_yaml_config(task, env_overrides=list(ENVS.items()))
    assert parsed.num_nodes == 1
    resources = list(parsed.resources)
    assert {next(iter(r.accelerators)) for r in resources} == {"T4", "A10G", "L4"}
    assert all(r.use_spot for r in resources)
    mounts = {path: (s.source, s.mode.value) for path, s in parsed.storage_mounts.items()}
    assert mounts["/checkpoints"] == ("s3://amapiano-test-bucket/musicgen-small-amapiano", "MOUNT_CACHED")
    assert "torch.distributed.run" in parsed.run


def test_bucket_is_required(task):
    assert "BUCKET" in task["envs"] and task["envs"]["BUCKET"] is None  # sky refuses to launch without --env
    assert all("${BUCKET}" in m["source"] for m in task["file_mounts"].values())


def test_run_starts_the_worker_through_torchrun_on_every_node(task):
    run = " ".join(task["run"].split())
    for arg in ('--nnodes="$SKYPILOT_NUM_NODES"', '--nproc_per_node="$SKYPILOT_NUM_GPUS_PER_NODE"',
                '--node_rank="$SKYPILOT_NODE_RANK"', '--master_addr="$HEAD"', "--max_restarts=0",
                '-m trainer --config "$CONFIG"'):
        assert arg in run, arg
    assert 'HEAD=$(echo "$SKYPILOT_NODE_IPS" | head -n1)' in run
    assert task["num_nodes"] == 1


def bash(script: str, env: dict[str, str], cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"], **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("part", ["setup", "run"])
def test_shell_parses(task, part):
    result = subprocess.run(["bash", "-n"], input=task[part], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


def test_run_starts_a_node_of_a_two_node_cluster_with_no_switch_to_ask_for(task, tmp_path):
    """Two nodes train as one group (tests/trainer/worker/test_two_nodes.py), so a cluster needs no
    DISTRIBUTED=1: node 1 of 2 starts torchrun with the head (the first of SKYPILOT_NODE_IPS) as
    its rendezvous. .venv/bin/python stands in as a script that records what it was given."""
    assert "DISTRIBUTED" not in task["envs"] and "DISTRIBUTED" not in task["run"]
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/argv"\n')
    (venv / "python").chmod(0o755)
    env = {**{k: str(v) for k, v in task["envs"].items() if v is not None}, **ENVS,
           "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "1", "SKYPILOT_NODE_RANK": "1",
           "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2", "HOME": str(tmp_path)}
    result = bash(task["run"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:2] == ["-m", "torch.distributed.run"], argv
    for arg in ("--nnodes=2", "--nproc_per_node=1", "--node_rank=1", "--master_addr=10.0.0.1", "--max_restarts=0"):
        assert arg in argv, (arg, argv)


def test_setup_writes_a_config_that_passes_the_check(task, tmp_path):
    """setup's own lines, minus scripts/setup.sh, with this venv standing in for .venv."""
    script = task["setup"].replace('TORCH_VERSION="$TORCH_VERSION" ./scripts/setup.sh\n', "")
    script = script.replace(".venv/bin/amapiano-train", f"{sys.executable} -m daemon.cli")
    config = tmp_path / "cluster.toml"
    result = bash(script, {**ENVS, "CONFIG": str(config), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert re.search(r'^state_dir = "/checkpoints/state"$', text, re.M)
    assert re.search(r'^cache_dir = "/cache"$', text, re.M)
    assert re.search(r'^log_dir = "/checkpoints/log"$', text, re.M)
