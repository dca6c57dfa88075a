#!/usr/bin/env bash
# One GPU session's figures for the README (issue 13), from the repository root on a fresh GPU
# machine (made for one H100; any CUDA GPU works). Under 8 minutes when PyPI is quick.
#
#   bash scripts/bench/gpu_session.sh            # figures in $OUT/gpu_figures.json (default ./gpu-out)
#
# The repository's .venv has CPU torch, so this makes its own environment: a venv on a Python
# >= 3.11 (tomllib) that sees the system's packages, and `pip install torch==2.13.0 transformers
# ...` from PyPI only for what is missing (a GPU image's own CUDA torch is used when it has one;
# the figures name the torch they ran on). Then, on musicgen-small's architecture with random
# weights and random codes (nothing to download):
#   1. throughput.py --real: samples/s, tokens/s, MFU, peak memory, NVML, eager and compiled;
#   2. memory_probe.py: one optimizer step's measured peak beside the plan's estimate, at
#      micro-batch 8 (x 4 accumulation; and with checkpointing, the T4 layout) and 1;
#   3. loop_overhead.py: the worker's step against a bare loop, side by side;
#   4. checkpoint_speed.py: a save of musicgen-small's size against a plain write + fsync;
#   5. nvidia-smi's card, driver, clocks and power.
# Each step has its own time limit; a failed step is recorded in the JSON and the rest go on.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_session.log"
: > "$LOG"
START=$(date +%s)
say() { echo "[gpu_session +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# --- a Python >= 3.11 with CUDA torch ------------------------------------------------------
PY=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
if [ -z "$PY" ]; then
  say "no Python >= 3.11 on this machine (the config loader needs tomllib); stopping"
  echo '{"error": "no Python >= 3.11"}' > "$OUT/gpu_figures.json"; exit 1
fi
VENV="${GPU_VENV:-/tmp/amapiano-gpu-venv}"
say "python: $PY ($("$PY" --version 2>&1)); venv $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1 || { say "venv failed (see $LOG)"; exit 1; }
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  say "installing torch==2.13.0 from PyPI (CUDA wheels, a few GB)"
  timeout 420 "$VPY" -m pip install --quiet --disable-pip-version-check torch==2.13.0 >>"$LOG" 2>&1 \
    || say "pip install torch failed (see $LOG)"
fi
missing=$("$VPY" - <<'EOF'
import importlib.util
need = {"transformers": "transformers>=5,<6", "structlog": "structlog", "pynvml": "nvidia-ml-py", "numpy": "numpy"}
print(" ".join(spec for mod, spec in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  say "installing $missing"
  timeout 240 "$VPY" -m pip install --quiet --disable-pip-version-check $missing >>"$LOG" 2>&1 \
    || say "pip install $missing failed (see $LOG)"
fi
# The repository itself, without its dependencies (the benchmarks also run from the checkout).
timeout 60 "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . \
  >>"$LOG" 2>&1 || say "pip install -e . skipped (the scripts run from the checkout anyway)"
if ! "$VPY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>>"$LOG"; then
  say "torch sees no CUDA device; stopping"
  echo '{"error": "no CUDA torch"}' > "$OUT/gpu_figures.json"; exit 1
fi
say "torch $("$VPY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())')"

# --- the measurements ----------------------------------------------------------------------
CFG=etc/amapiano-train/config.toml   # the production [train]/[data]: 8 x 4 clips of 1,500 frames
run() {  # run NAME SECONDS CMD...: stdout to $OUT/NAME.txt, a failure noted in $OUT/NAME.error
  local name=$1 limit=$2; shift 2
  say "$name: $*"
  if timeout "$limit" "$@" > "$OUT/$name.txt" 2>> "$LOG"; then
    tail -n 12 "$OUT/$name.txt" | tee -a "$LOG"
  else
    echo "exit $? after $(( $(date +%s) - START ))s" > "$OUT/$name.error"; say "$name FAILED (see $LOG)"
  fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,pstate \
  --format=csv > "$OUT/nvidia_smi.csv" 2>>"$LOG" || true
run throughput_eager 150 "$VPY" scripts/bench/throughput.py --real --config "$CFG" --steps 15 --json "$OUT/throughput_eager.json"
run throughput_compiled 240 "$VPY" scripts/bench/throughput.py --real --config "$CFG" --compile --steps 15 --json "$OUT/throughput_compiled.json"
run memory_mb8 90 "$VPY" scripts/bench/memory_probe.py --device cuda --micro-batch 8 --grad-accum 4
run memory_mb8_ckpt 90 "$VPY" scripts/bench/memory_probe.py --device cuda --micro-batch 8 --grad-accum 4 --checkpointing on
run memory_mb1 60 "$VPY" scripts/bench/memory_probe.py --device cuda --micro-batch 1
run loop_overhead 150 "$VPY" scripts/bench/loop_overhead.py --real --config "$CFG" --steps 5 --blocks 3 --json "$OUT/loop_overhead.json"
run checkpoint_speed 120 "$VPY" scripts/bench/checkpoint_speed.py --params 420e6 --repeats 2 --dir "$PWD"
nvidia-smi > "$OUT/nvidia_smi_after.txt" 2>&1 || true

# --- one JSON ------------------------------------------------------------------------------
"$VPY" - "$OUT" <<'EOF'
import csv, datetime, json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
def last_json(name):
    p = out / name
    if not p.exists():
        return None
    lines = [l for l in p.read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None
figures = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
smi = out / "nvidia_smi.csv"
if smi.exists():
    rows = list(csv.DictReader(smi.read_text().splitlines()))
    figures["nvidia_smi"] = {k.strip(): v.strip() for k, v in rows[0].items()} if rows else None
figures["throughput_eager"] = load("throughput_eager.json")
figures["throughput_compiled"] = load("throughput_compiled.json")
for name in ("memory_mb8", "memory_mb8_ckpt", "memory_mb1"):
    figures[name] = last_json(name + ".txt")
figures["loop_overhead"] = load("loop_overhead.json")
ck = out / "checkpoint_speed.txt"
if ck.exists():
    m = re.search(r"save time / raw write time \(same bytes\): ([0-9.]+)", ck.read_text())
    figures["checkpoint_save_over_raw"] = float(m.group(1)) if m else None
figures["errors"] = {p.stem: p.read_text().strip() for p in out.glob("*.error")}
(out / "gpu_figures.json").write_text(json.dumps(figures, indent=1))
print(json.dumps(figures, indent=1))
EOF
say "done: $OUT/gpu_figures.json"
