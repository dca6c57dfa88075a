"""scripts/start-gpu.sh launch: a persistent Spot request that stops (not terminates) on
interruption, from a launch template, tagged with the run; against moto's EC2 on 127.0.0.1."""
from __future__ import annotations

import os
import subprocess

from conftest import REPO

START = str(REPO / "scripts" / "start-gpu.sh")
TOOL = str(REPO / "scripts" / "gpu_instance.py")


def run(aws, *args, script=START):
    env = {**os.environ, "AWS_ENDPOINT_URL": aws, "AWS_REGION": "us-east-1"}
    return subprocess.run([script, *args], capture_output=True, text=True, env=env, timeout=120)


def tags(resource) -> dict:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_bad_input_is_one_line_and_a_sysexits_status(aws, tmp_path):
    for args, status, says in [
        (("launch", "no spaces please", "--ami", "ami-1"), 64, "RUN must be 1-63 letters"),
        (("launch", "r1", "--volume-gb", "2"), 64, "from 8 to 16384"),
        (("launch", "r1", "--max-price", "free"), 64, "USD per hour"),
        (("not-an-id",), 64, "is not an instance id"),
        (("launch", "r1", "--ami", "ami-1", "--instance-type", "g4dn.xlarge", "--user-data", str(tmp_path / "none")),
         65, "No such file"),
        (("launch", "r1", "--instance-type", "g4dn.xlarge"), 64, "give --ami and --instance-type"),
    ]:
        out = run(aws, *args)
        assert out.returncode == status and says in out.stderr, (args, out.returncode, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    big = tmp_path / "big.sh"
    big.write_bytes(b"#" * 20000)
    out = run(aws, "launch", "r1", "--ami", "ami-1", "--instance-type", "g4dn.xlarge", "--user-data", str(big))
    assert out.returncode == 65 and "at most 16384" in out.stderr
    assert run(aws, "terminate", "i-0123456789abcdef0", script=TOOL).returncode == 64  # no --yes
    help_text = " ".join(run(aws, "launch", "--help").stdout.split())
    assert "persistent Spot request" in help_text and "interruption behaviour is \"stop\"" in help_text


def test_launch_asks_for_persistent_spot_that_stops_and_tags_the_run(aws, tmp_path):
    import base64

    import boto3

    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    user_data = tmp_path / "boot.sh"
    user_data.write_text("#!/bin/sh\nsystemctl enable --now amapiano-train\n")
    out = run(aws, "launch", "week1", "--ami", "ami-12345678", "--instance-type", "g4dn.xlarge",
              "--instance-profile", "amapiano-train", "--volume-gb", "300", "--user-data", str(user_data))
    assert out.returncode == 0, out.stderr
    assert "launch template amapiano-train-week1: created (version 1)" in out.stdout
    assert "persistent Spot request, interruption: stop" in out.stdout
    [version] = ec2.describe_launch_template_versions(LaunchTemplateName="amapiano-train-week1")[
        "LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert data["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {
        "SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}}
    assert data["InstanceInitiatedShutdownBehavior"] == "stop"  # poweroff from inside stops, never terminates
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 300
    assert base64.b64decode(data["UserData"]).startswith(b"#!/bin/sh")
    [inst] = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:amapiano-train:run", "Values": ["week1"]}])[
        "Reservations"] for i in r["Instances"]]
    assert inst["State"]["Name"] == "running" and inst["InstanceType"] == "g4dn.xlarge"
    assert inst["InstanceLifecycle"] == "spot"  # the request itself asked for Spot
    assert tags(inst)["amapiano-train:run"] == "week1"
    assert f"{inst['InstanceId']}: running" in out.stdout
    assert ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")[
        "InstanceInitiatedShutdownBehavior"]["Value"] == "stop"

    # A second launch for the same run would bill twice: refused, naming the instance.
    again = run(aws, "launch", "week1")
    assert again.returncode == 1 and inst["InstanceId"] in again.stderr and "start-gpu.sh" in again.stderr
    # Stopped (as AWS does on an interruption), it is started again, same id, same disk.
    assert run(aws, inst["InstanceId"], script=str(REPO / "scripts" / "stop-gpu.sh")).returncode == 0
    start = run(aws, inst["InstanceId"])
    assert start.returncode == 0 and f"{inst['InstanceId']}: running" in start.stdout
    # Ended for good, then a new launch from the template as it is; a new option makes a new version.
    end = run(aws, "terminate", inst["InstanceId"], "--yes", script=TOOL)
    assert end.returncode == 0 and f"{inst['InstanceId']}: terminated" in end.stdout, end.stderr
    relaunch = run(aws, "launch", "week1", "--instance-type", "g5.xlarge", "--no-wait")
    assert relaunch.returncode == 0 and "launch template amapiano-train-week1: version 2" in relaunch.stdout
    latest = ec2.describe_launch_template_versions(LaunchTemplateName="amapiano-train-week1", Versions=["2"])[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert latest["InstanceType"] == "g5.xlarge" and latest["InstanceMarketOptions"]["SpotOptions"][
        "SpotInstanceType"] == "persistent"


def test_on_demand_launch_has_no_spot_options(aws):
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    out = run(aws, "launch", "od", "--ami", "ami-12345678", "--instance-type", "g5.xlarge", "--on-demand", "--no-wait")
    assert out.returncode == 0, out.stderr
    data = ec2.describe_launch_template_versions(LaunchTemplateName="amapiano-train-od")["LaunchTemplateVersions"][0][
        "LaunchTemplateData"]
    assert "InstanceMarketOptions" not in data and data["InstanceInitiatedShutdownBehavior"] == "stop"
    [inst] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert inst.get("InstanceLifecycle") in (None, "on-demand") and tags(inst)["amapiano-train:run"] == "od"


def test_no_region_is_a_config_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    out = subprocess.run([START, "i-0123456789abcdef0"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 78 and "AWS_REGION" in out.stderr, out.stderr
