#!/usr/bin/env bash
# Set up a development / demo environment in .venv: the package, its test tools, and a CPU
# or CUDA torch. Idempotent: running it again only installs what changed.
#
#   ./scripts/setup.sh            # torch from PyPI (or a local wheel, see TORCH_VERSION)
#   TORCH_VERSION=2.13.0 ./scripts/setup.sh
#
# torch is pinned with a constraint file so that no other dependency can pull in a different
# (multi-gigabyte) build behind our back.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

"$PYTHON" - <<'PY' || { echo "setup.sh: Python >= 3.11 is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${TORCH_VERSION}" > "$constraints"

pip_args=(--disable-pip-version-check --quiet)
# A local wheel directory (e.g. /opt/wheels with a CPU build) is used when present.
if [ -d "${WHEELS:-/opt/wheels}" ]; then
    pip_args+=(--find-links "${WHEELS:-/opt/wheels}")
fi

"$VENV/bin/python" -m pip install "${pip_args[@]}" -c "$constraints" "torch==${TORCH_VERSION}"
"$VENV/bin/python" -m pip install "${pip_args[@]}" -c "$constraints" -e ".[test]"

echo "setup.sh: ready. Try: $VENV/bin/amapiano-train demo"
