#!/usr/bin/env bash
# start the training instance from a laptop:
#   scripts/start-gpu.sh INSTANCE_ID [--region R] [--no-wait]        start a stopped instance
#   scripts/start-gpu.sh launch RUN --ami AMI --instance-type TYPE ...   a new persistent-Spot instance
# (details: scripts/gpu_instance.py --help, scripts/gpu_instance.py launch --help).
# Uses the project's .venv when there is one.
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$( [ -x "$here/../.venv/bin/python" ] && echo "$here/../.venv/bin/python" || echo python3 )}
if [ "${1:-}" = launch ]; then
    exec "$py" "$here/gpu_instance.py" "$@"
fi
exec "$py" "$here/gpu_instance.py" start "$@"
