#!/usr/bin/env python3
"""Launch, start, stop or end the training instance from a laptop, with boto3 (no AWS CLI needed).

    scripts/start-gpu.sh launch RUN --ami ami-... [--instance-type g4dn.xlarge] [--key-name K]
                         [--subnet-id S] [--security-group-id SG] [--instance-profile amapiano-train]
    scripts/start-gpu.sh i-0123456789abcdef0       start a stopped instance
    scripts/stop-gpu.sh  i-0123456789abcdef0       stop it (the EBS volume, and its storage cost, stay)
    scripts/gpu_instance.py status i-0123...        where it stands and how to reach it
    scripts/gpu_instance.py terminate i-0123... --yes   end it for good (cancels its Spot request first)

launch RUN writes the launch template amapiano-train-RUN (a new version when options are given;
the existing one when none are) and asks EC2 for one instance from it: a persistent Spot
request whose interruption behaviour is "stop" (--on-demand: no Spot), tagged
amapiano-train:run=RUN with its volume and request. When AWS takes the capacity back, it
stops the instance and keeps its EBS volume; when capacity returns, AWS starts the same
instance again, systemd starts amapiano-train, and the run resumes from its last checkpoint
on that disk. It refuses to launch a second instance for a RUN that has one (not terminated).
It is RunInstances with InstanceMarketOptions, not the legacy RequestSpotInstances: the
instance id comes back at once, and "no capacity" is an error now rather than an open request.

The instance id can also come from $AMAPIANO_INSTANCE_ID. Credentials and region come from the
usual AWS places (~/.aws, AWS_PROFILE, AWS_REGION); AWS_ENDPOINT_URL points it elsewhere.
Stopping a training instance this way skips the emergency checkpoint: prefer
`sudo systemctl stop amapiano-train` on it first. The permissions these commands need are in
etc/amapiano-train/iam-policy-launcher.json (the instance's own role: iam-policy.json).

Exit statuses: 0 done, 1 AWS refused or failed (the reason on stderr), 64 bad arguments,
65 an unusable --user-data file, 78 no boto3, region or credentials.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import sys
from pathlib import Path

OK, FAILED, USAGE, DATAERR, CONFIG = 0, 1, 64, 65, 78   # sysexits.h, as daemon/common/exits.py
RUN_TAG = "amapiano-train:run"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
USER_DATA_LIMIT = 16 * 1024  # EC2's limit, before base64
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and EX_USAGE, not argparse's usage block and 2
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE)


def _instance_id(text: str) -> str:
    if not INSTANCE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an instance id (i-0123456789abcdef0)")
    return text


def _run_name(text: str) -> str:
    if not RUN_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"RUN must be 1-63 letters, digits, '.', '_' or '-' (got {text!r})")
    return text


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 8 <= int(text) <= 16384:
        raise argparse.ArgumentTypeError(f"must be a whole number of GiB from 8 to 16384 (got {text!r})")
    return int(text)


def _price(text: str) -> str:
    try:
        ok = 0 < float(text) < 1000
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"must be USD per hour, > 0 (got {text!r})")
    return text


def build_parser() -> Parser:
    p = Parser(prog="gpu_instance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)

    def common(sp):
        sp.add_argument("--region", default=None, help="default: AWS_REGION / your AWS profile")
        sp.add_argument("--no-wait", action="store_true", help="return as soon as EC2 accepted the request")

    for name, text in (("start", "start a stopped instance and wait until it runs"),
                       ("stop", "stop an instance and wait until it is stopped (its EBS volume stays)"),
                       ("status", "where the instance stands and how to reach it")):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("instance_id", nargs="?", type=_instance_id, default=os.environ.get("AMAPIANO_INSTANCE_ID"))
        common(sp)
    t = sub.add_parser("terminate", help="end the instance for good: its Spot request is cancelled first",
                       description="Cancel the instance's persistent Spot request (else AWS launches a "
                                   "replacement) and terminate it; the root volume goes with it. Checkpoints "
                                   "survive only in the S3 mirror.")
    t.add_argument("instance_id", nargs="?", type=_instance_id, default=os.environ.get("AMAPIANO_INSTANCE_ID"))
    t.add_argument("--yes", action="store_true", help="required: terminating deletes the instance and its disk")
    common(t)

    lp = sub.add_parser("launch", help="a new instance for RUN: persistent Spot, stopped (not terminated) on "
                                       "interruption, restarted by AWS",
                        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    lp.add_argument("run", type=_run_name, metavar="RUN", help="the run's name: the tag amapiano-train:run=RUN")
    lp.add_argument("--ami", help="the image (Ubuntu 22.04/24.04 with the NVIDIA driver, e.g. a Deep Learning AMI)")
    lp.add_argument("--instance-type", help="e.g. g4dn.xlarge (T4), g5.xlarge (A10G)")
    lp.add_argument("--key-name", help="the EC2 key pair for ssh")
    lp.add_argument("--subnet-id", help="the subnet (and so the availability zone)")
    lp.add_argument("--security-group-id", action="append", default=None, metavar="SG",
                    help="repeatable; allow ssh (22) from your address only; TensorBoard goes through ssh -L")
    lp.add_argument("--instance-profile", metavar="NAME",
                    help="the instance profile whose role holds etc/amapiano-train/iam-policy.json")
    lp.add_argument("--volume-gb", type=_positive_int, default=None, help="root volume, gp3 (default 200)")
    lp.add_argument("--user-data", type=Path, metavar="FILE", help="a cloud-init script run at first boot")
    lp.add_argument("--max-price", type=_price, metavar="USD", help="Spot: the most per hour (default: on-demand price)")
    lp.add_argument("--on-demand", action="store_true", help="no Spot: billed at the on-demand price, never interrupted")
    common(lp)
    return p


def read_user_data(path: Path | None) -> str | None:
    """The --user-data file, base64 as a launch template holds it (ValueError/OSError: exit 65)."""
    if path is None:
        return None
    raw = path.read_bytes()
    if len(raw) > USER_DATA_LIMIT:
        raise ValueError(f"{path}: {len(raw)} bytes, EC2 takes at most {USER_DATA_LIMIT}")
    return base64.b64encode(raw).decode()


def template_data(args, user_data: str | None, creating: bool) -> dict:
    """The launch template's contents from the options given; a new version inherits the rest."""
    data: dict = {}
    if args.ami:
        data["ImageId"] = args.ami
    if args.instance_type:
        data["InstanceType"] = args.instance_type
    if args.key_name:
        data["KeyName"] = args.key_name
    if args.subnet_id or args.security_group_id:
        nic = {"DeviceIndex": 0, "AssociatePublicIpAddress": True}
        if args.subnet_id:
            nic["SubnetId"] = args.subnet_id
        if args.security_group_id:
            nic["Groups"] = list(args.security_group_id)
        data["NetworkInterfaces"] = [nic]
    if args.instance_profile:
        data["IamInstanceProfile"] = {"Name": args.instance_profile}
    if args.volume_gb or creating:
        data["BlockDeviceMappings"] = [{"DeviceName": "/dev/sda1", "Ebs": {
            "VolumeSize": args.volume_gb or 200, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}]
    if user_data:
        data["UserData"] = user_data
    if data:
        # A shutdown from inside (the daemon's poweroff fallback) stops, never terminates, and the
        # template alone (e.g. from the console) asks for the same market as launch does.
        data["InstanceInitiatedShutdownBehavior"] = "stop"
        data["MetadataOptions"] = {"HttpTokens": "required", "HttpEndpoint": "enabled"}  # IMDSv2, as the daemon reads it
        if market_options(args):
            data["InstanceMarketOptions"] = market_options(args)
    return data


def market_options(args) -> dict | None:
    if args.on_demand:
        return None
    spot = {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}
    if args.max_price:
        spot["MaxPrice"] = args.max_price
    return {"MarketType": "spot", "SpotOptions": spot}


def _tags(run: str, *kinds: str) -> list[dict]:
    return [{"ResourceType": k, "Tags": [{"Key": RUN_TAG, "Value": run}]} for k in kinds]


def launch(ec2, args, user_data: str | None, errors) -> int:
    name = f"amapiano-train-{args.run}"
    existing = [i for r in ec2.describe_instances(Filters=[
        {"Name": f"tag:{RUN_TAG}", "Values": [args.run]},
        {"Name": "instance-state-name", "Values": LIVE_STATES}])["Reservations"] for i in r["Instances"]]
    if existing:
        ids = ", ".join(f"{i['InstanceId']} ({i['State']['Name']})" for i in existing)
        print(f"gpu_instance: run {args.run} already has {ids}: start it with scripts/start-gpu.sh "
              f"{existing[0]['InstanceId']}, or terminate it first", file=sys.stderr)
        return FAILED
    try:
        found = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except errors as e:  # EC2 answers "not found" for a name it does not know
        if "NotFound" not in str(e):
            raise
        found = []
    data = template_data(args, user_data, creating=not found)
    if not found:
        if "ImageId" not in data or "InstanceType" not in data:
            print(f"gpu_instance: no launch template {name} yet: give --ami and --instance-type", file=sys.stderr)
            return USAGE
        version = str(ec2.create_launch_template(
            LaunchTemplateName=name, LaunchTemplateData=data,
            TagSpecifications=_tags(args.run, "launch-template"))["LaunchTemplate"]["LatestVersionNumber"])
        print(f"launch template {name}: created (version {version})")
    elif data:
        version = str(ec2.create_launch_template_version(
            LaunchTemplateName=name, SourceVersion="$Latest", LaunchTemplateData=data,
            VersionDescription="scripts/gpu_instance.py launch")["LaunchTemplateVersion"]["VersionNumber"])
        print(f"launch template {name}: version {version}")
    else:
        version = "$Latest"
        print(f"launch template {name}: as it is (latest version)")
    request = {"MinCount": 1, "MaxCount": 1, "LaunchTemplate": {"LaunchTemplateName": name, "Version": version},
               "TagSpecifications": _tags(args.run, "instance", "volume", *(() if args.on_demand else
                                                                          ("spot-instances-request",)))}
    if market_options(args):  # said in the request too: an older template version cannot make it one-time
        request["InstanceMarketOptions"] = market_options(args)
    inst = ec2.run_instances(**request)["Instances"][0]
    iid = inst["InstanceId"]
    kind = "on-demand" if args.on_demand else "persistent Spot request, interruption: stop"
    print(f"{iid}: {inst['State']['Name']}  ({kind})  tag {RUN_TAG}={args.run}")
    if not args.no_wait:
        ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 5, "MaxAttempts": 60})
    return describe(ec2, iid)


def describe(ec2, iid: str) -> int:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    host = inst.get("PublicDnsName") or inst.get("PublicIpAddress") or inst.get("PrivateIpAddress") or "-"
    market = inst.get("InstanceLifecycle") or "on-demand"
    print(f"{iid}: {inst['State']['Name']}  {inst.get('InstanceType', '?')}  {market}  {host}")
    if inst["State"]["Name"] == "running" and host != "-":
        print(f"  ssh ubuntu@{host} 'amapiano-train status'")
        print(f"  ssh -L 6006:127.0.0.1:6006 ubuntu@{host}   then http://127.0.0.1:6006 (TensorBoard)")
    return OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action != "launch" and not args.instance_id:
        print(f"gpu_instance {args.action}: give the instance id (or set AMAPIANO_INSTANCE_ID)", file=sys.stderr)
        return USAGE
    if args.action == "terminate" and not args.yes:
        print(f"gpu_instance terminate: this deletes {args.instance_id} and its root volume; add --yes",
              file=sys.stderr)
        return USAGE
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
    except ImportError:
        print("gpu_instance: needs boto3 (pip install boto3, or use the project's .venv)", file=sys.stderr)
        return CONFIG
    what = args.run if args.action == "launch" else args.instance_id
    try:
        user_data = read_user_data(getattr(args, "user_data", None))
    except (OSError, ValueError) as e:
        print(f"gpu_instance: --user-data {getattr(e, 'strerror', None) or e}"
              + (f": {e.filename}" if getattr(e, "filename", None) else ""), file=sys.stderr)
        return DATAERR
    try:
        # boto3 reads AWS_DEFAULT_REGION and the profile, not AWS_REGION (the AWS CLI's name)
        ec2 = boto3.client("ec2", region_name=args.region or os.environ.get("AWS_REGION") or None)
        if args.action == "launch":
            return launch(ec2, args, user_data, ClientError)
        iid = args.instance_id
        if args.action == "start":
            state = ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]["CurrentState"]["Name"]
            print(f"{iid}: {state}")
            if not args.no_wait:
                ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        elif args.action == "stop":
            state = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]["CurrentState"]["Name"]
            print(f"{iid}: {state}")
            if not args.no_wait:
                ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        elif args.action == "terminate":
            inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
            if inst.get("SpotInstanceRequestId"):  # a persistent request would launch a replacement
                ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[inst["SpotInstanceRequestId"]])
                print(f"{inst['SpotInstanceRequestId']}: cancelled")
            state = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]["CurrentState"]["Name"]
            print(f"{iid}: {state}")
            if not args.no_wait:
                ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid],
                                                           WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        return describe(ec2, iid)
    except (NoCredentialsError, NoRegionError) as e:
        print(f"gpu_instance: {e} (set AWS_PROFILE / AWS_REGION, or --region)", file=sys.stderr)
        return CONFIG
    except (BotoCoreError, ClientError) as e:
        print(f"gpu_instance: {what}: {e}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
