#!/usr/bin/env bash
# start the training instance from a laptop: scripts/start-gpu.sh INSTANCE_ID [--region R] [--no-wait]
# (details: scripts/gpu_instance.py --help). Uses the project's .venv when there is one.
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$( [ -x "$here/../.venv/bin/python" ] && echo "$here/../.venv/bin/python" || echo python3 )}
exec "$py" "$here/gpu_instance.py" start "$@"
