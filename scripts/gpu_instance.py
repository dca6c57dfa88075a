#!/usr/bin/env python3
"""Start or stop the training instance from a laptop, with boto3 (no AWS CLI needed).

    scripts/start-gpu.sh i-0123456789abcdef0 [--region us-east-1]
    scripts/stop-gpu.sh  i-0123456789abcdef0

The instance id can also come from $AMAPIANO_INSTANCE_ID. Credentials and region come from the
usual AWS places (~/.aws, AWS_PROFILE, AWS_REGION); AWS_ENDPOINT_URL points it elsewhere.
Start waits until the instance runs and prints how to reach it; stop waits until it is stopped
(the EBS volume, and its storage cost, stay). Stopping a training instance this way skips the
emergency checkpoint: prefer `sudo systemctl stop amapiano-train` on it first.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_instance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("instance_id", nargs="?", default=os.environ.get("AMAPIANO_INSTANCE_ID"))
    p.add_argument("--region", default=None)
    p.add_argument("--no-wait", action="store_true", help="return as soon as EC2 accepted the request")
    args = p.parse_args(argv)
    if not args.instance_id:
        p.error("give the instance id (or set AMAPIANO_INSTANCE_ID)")
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        print("gpu_instance: needs boto3 (pip install boto3, or use the project's .venv)", file=sys.stderr)
        return 1

    ec2 = boto3.client("ec2", region_name=args.region)
    iid = args.instance_id
    try:
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
        inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    except (BotoCoreError, ClientError) as e:
        print(f"gpu_instance: {iid}: {e}", file=sys.stderr)
        return 1
    host = inst.get("PublicDnsName") or inst.get("PublicIpAddress") or inst.get("PrivateIpAddress") or "-"
    print(f"{iid}: {inst['State']['Name']}  {inst.get('InstanceType', '?')}  {host}")
    if inst["State"]["Name"] == "running" and host != "-":
        print(f"  ssh ubuntu@{host} 'amapiano-train status'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
