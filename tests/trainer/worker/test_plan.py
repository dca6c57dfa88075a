"""`amapiano-train plan`: per GPU, before paying, from the same memory model the worker uses."""
from __future__ import annotations

import json
import sys
import tomllib

import pytest
from conftest import PROD_TOML, cli, dump_toml, merge, write_config

from daemon.common import exits

FIELDS = {"gpu", "precision", "micro_batch", "grad_accum", "gradient_checkpointing", "est_memory_gb", "fits",
          "est_hours", "est_cost_usd", "mfu", "mfu_basis", "samples_per_s", "host_gib_needed", "host_gib",
          "snapshot_gib", "async_checkpoints", "compile"}


def plan(*args: str) -> list[dict]:
    r = cli("plan", *args, "--json", env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert r.returncode == exits.OK, r.stderr
    return json.loads(r.stdout)


def test_plan_json_for_musicgen_small_on_every_gpu(tmp_path):
    rows = {r["gpu"]: r for r in plan("--config", str(PROD_TOML), "--clips", "8000", "--price", "1.5")}
    assert set(rows) == {"T4", "A10G", "L4", "A100-40GB", "A100-80GB", "H100", "H200"}
    assert all(FIELDS <= set(r) for r in rows.values())
    t4, h100 = rows["T4"], rows["H100"]
    # batch_size = "auto", 32 clips a step. 8 x 1,503 positions in fp16 need ~26 GiB without
    # checkpointing: a T4 (15 GiB) needs it on, and then 16 clips a micro-batch still fit.
    assert (t4["precision"], t4["micro_batch"], t4["grad_accum"], t4["gradient_checkpointing"], t4["fits"]) == \
        ("fp16", 16, 2, True, True)
    assert (h100["precision"], h100["micro_batch"], h100["gradient_checkpointing"], h100["fits"]) == \
        ("bf16", 32, False, True)
    assert h100["est_hours"] < 1 < t4["est_hours"]
    assert h100["mfu_basis"].startswith("measured") and t4["mfu_basis"].startswith("estimated")
    assert h100["compile"] and t4["async_checkpoints"] and t4["host_gib"] == 16  # a g4dn.xlarge holds the copy
    assert t4["est_cost_usd"] == pytest.approx(t4["est_hours"] * 1.5, abs=0.01)


def test_one_gpu_by_loose_name_and_no_price_is_unknown_not_zero(tmp_path):
    config = write_config(tmp_path, {"aws": {"imds_url": ""}, "budget": {"hourly_rate_usd": 0.0}})
    [row] = plan("--config", str(config), "--gpu", "t4")
    assert row["gpu"] == "T4" and row["est_cost_usd"] is None and row["usd_per_hour"] is None
    assert row["precision"] == "fp16" and row["fits"]  # the tiny model fits anything


@pytest.mark.parametrize("args, says", [(["--gpu", "Voodoo2"], "not one of"), (["--clips", "0"], "--clips"),
                                        (["--price", "nan"], "--price"), (["--price", "-1"], "--price"),
                                        (["--price", "inf"], "--price"), (["--mfu", "1e-300"], "--mfu")])
def test_bad_arguments_exit_78_with_one_line(tmp_path, args, says):
    r = cli("plan", "--config", str(write_config(tmp_path)), *args)
    assert r.returncode == exits.CONFIG and says in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plan_imports_no_torch(tmp_path):
    """It runs before anyone installs torch: the memory model and the table are standard library."""
    import subprocess

    code = ("import sys; from trainer.worker import plan; from daemon.common.config import load_config; "
            f"cfg = load_config({str(PROD_TOML)!r}); "
            "plan.plan_row(plan.memory.arch_of_config(cfg), plan.GPUS[0], cfg, 8000, None, None); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def rows_for(tmp_path, strategy: str, nproc: int, nodes: int, price: str = "10") -> dict:
    """The production config (musicgen-small) at this width, planned on A100s of 40 GB."""
    table = merge(tomllib.loads(PROD_TOML.read_text()), {"train": {"strategy": strategy, "nproc_per_node": nproc}})
    config = tmp_path / f"{strategy}-{nproc}.toml"
    config.write_text(dump_toml(table) + "\n")
    [row] = plan("--config", str(config), "--gpu", "A100-40GB", "--clips", "80000", "--price", price,
                 "--nodes", str(nodes))
    return row


def test_plan_nodes_shards_fsdp_over_every_gpu_of_the_cluster_and_bills_every_node(tmp_path):
    """FSDP on 2 nodes x 2 GPUs holds what it holds on 4 nodes x 1: a quarter of the state per GPU.
    The price is one node's (an instance, all its GPUs), billed once per node as the watcher's ledger bills."""
    one = rows_for(tmp_path, "fsdp", 1, 1)
    two_by_two, four_by_one = rows_for(tmp_path, "fsdp", 2, 2), rows_for(tmp_path, "fsdp", 1, 4)
    assert (two_by_two["nodes"], two_by_two["gpus"], four_by_one["gpus"]) == (2, 4, 4)
    assert two_by_two["est_memory_gb"] == four_by_one["est_memory_gb"] < one["est_memory_gb"]
    assert two_by_two["est_hours"] == pytest.approx(four_by_one["est_hours"], rel=0.01)
    assert two_by_two["est_hours"] == pytest.approx(one["est_hours"] / 4, rel=0.05)  # linear scaling, said so
    assert two_by_two["est_cost_usd"] == pytest.approx(two_by_two["est_hours"] * 10 * 2, rel=0.01)
    assert four_by_one["est_cost_usd"] == pytest.approx(four_by_one["est_hours"] * 10 * 4, rel=0.01)
    assert one["est_cost_usd"] == pytest.approx(one["est_hours"] * 10, rel=0.01)


def test_plan_nodes_ddp_keeps_the_whole_model_on_each_gpu(tmp_path):
    """DDP on 2 nodes: each GPU holds the whole state and the same slice (8 clips) as one GPU alone, where
    FSDP would shard it; half the hours at twice the hourly bill (linear scaling assumed) costs the same."""
    one, two, sharded = rows_for(tmp_path, "ddp", 1, 1), rows_for(tmp_path, "ddp", 1, 2), rows_for(tmp_path, "fsdp", 1, 2)
    assert (two["gpus"], two["micro_batch"] // 2) == (2, one["micro_batch"])
    assert two["est_memory_gb"] == one["est_memory_gb"] > sharded["est_memory_gb"]
    assert two["est_hours"] == pytest.approx(one["est_hours"] / 2, rel=0.01)
    assert two["est_cost_usd"] == pytest.approx(two["est_hours"] * 10 * 2, rel=0.01)
    assert two["est_cost_usd"] == pytest.approx(one["est_cost_usd"], rel=0.01)


def test_plan_nodes_text_names_the_cluster(tmp_path):
    config = write_config(tmp_path, {"train": {"strategy": "fsdp", "nproc_per_node": 2}})
    r = cli("plan", "--config", str(config), "--gpu", "T4", "--price", "0.5", "--nodes", "2",
            env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert r.returncode == exits.OK, r.stderr
    assert "2 nodes x 2 GPUs = 4 GPUs, fsdp (memory per GPU, sharded over the 4)" in r.stdout, r.stdout
    assert "cost: hours x $0.5/h x 2 nodes" in r.stdout, r.stdout


@pytest.mark.parametrize("nodes", ["0", "-2", "5000"])
def test_plan_nodes_out_of_range_exit_78_with_one_line(tmp_path, nodes):
    r = cli("plan", "--config", str(write_config(tmp_path)), "--nodes", nodes)
    assert r.returncode == exits.CONFIG and "--nodes" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_plan_nodes_refuses_a_step_the_cluster_cannot_split(tmp_path):
    """3 nodes of 1 GPU and 4 clips a step: the ranks would exit 78 on it (distributed.init); plan says it first."""
    r = cli("plan", "--config", str(write_config(tmp_path)), "--nodes", "3")
    assert r.returncode == exits.CONFIG and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "batch_size (4) must divide by the 3 GPUs (3 nodes x 1)" in r.stderr, r.stderr
