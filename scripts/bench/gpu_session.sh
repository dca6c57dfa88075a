#!/usr/bin/env bash
# Every GPU figure of issue 18 in one session, under 10 minutes, from the repository root on a fresh
# GPU machine (made for one H100/H200; any CUDA GPU works):
#
#   bash scripts/bench/gpu_session.sh            # figures in $OUT/gpu_figures.json (default ./gpu-out)
#
# The repository's .venv has CPU torch, so this makes its own environment: a venv on a Python
# >= 3.11 (tomllib) that sees the system's packages, and `pip install torch==2.13.0 transformers
# ...` from PyPI only for what is missing (a GPU image's own CUDA torch is used when it has one;
# the figures name the torch they ran on). Then, on musicgen-small's architecture with random
# weights and random codes (nothing to download), in order of importance, each only while the
# session's deadline (SESSION_S, 570 s from the start) leaves it its time limit:
#   1. throughput.py --real, the production config (batch_size = "auto"), eager, 100 steps after
#      warm-up: MFU (goal >= 45 %) and plan's estimate beside it (goal: within 10 %);
#   2. checkpoint_speed.py --device cuda, musicgen-small's 5.0 GB: stall / raw write (goal <= 0.1), and
#      with 1.'s step time the share of a run's wall time spent blocked at checkpoint_every = 50 (<= 1 %);
#   3. the T4's layout (fp16, gradient checkpointing, 16 x 2) on this GPU, 100 steps: its MFU and plan's;
#   4. compiled (--compile, 10 warm-up steps): compile seconds, the steady gain, the break-even in steps
#      (what compile = "auto" assumes: 120 s and +16 %, trainer/worker/speed.py);
#   5. 8 x 4 eager, the shape the 2026-11-25 session measured (28.5 % MFU on an H100);
#   and nvidia-smi's card, driver, clocks and power. A failed or skipped step is recorded in the
#   JSON and the rest go on.
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
CFG=etc/amapiano-train/config.toml   # the production [train]/[data]: 32 clips a step of 1,500 frames
DEADLINE=$(( START + ${SESSION_S:-570} ))
run() {  # run NAME SECONDS CMD...: stdout to $OUT/NAME.txt, a failure noted in $OUT/NAME.error
  local name=$1 limit=$2 left; shift 2
  left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt "$limit" ]; then
    echo "skipped: $left s left of the session, $limit s needed" > "$OUT/$name.error"; say "$name skipped ($left s left)"
    return
  fi
  say "$name: $*"
  if timeout "$limit" "$@" > "$OUT/$name.txt" 2>> "$LOG"; then
    tail -n 12 "$OUT/$name.txt" | tee -a "$LOG"
  else
    echo "exit $? after $(( $(date +%s) - START ))s" > "$OUT/$name.error"; say "$name FAILED (see $LOG)"
  fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,pstate \
  --format=csv > "$OUT/nvidia_smi.csv" 2>>"$LOG" || true
TP=scripts/bench/throughput.py
run throughput_auto 150 "$VPY" $TP --real --config "$CFG" --steps 100 --json "$OUT/throughput_auto.json"
run checkpoint_speed 150 "$VPY" scripts/bench/checkpoint_speed.py --params 420e6 --repeats 2 --device cuda --dir "$PWD"
run throughput_t4 120 "$VPY" $TP --real --config "$CFG" --precision fp16 --checkpointing on --batch-size 16 \
  --grad-accum 2 --steps 100 --json "$OUT/throughput_t4.json"
run throughput_compiled 200 "$VPY" $TP --real --config "$CFG" --compile --warmup 10 --steps 100 \
  --json "$OUT/throughput_compiled.json"
run throughput_8x4 100 "$VPY" $TP --real --config "$CFG" --batch-size 8 --grad-accum 4 --steps 100 \
  --json "$OUT/throughput_8x4.json"
nvidia-smi > "$OUT/nvidia_smi_after.txt" 2>&1 || true

# --- one JSON ------------------------------------------------------------------------------
"$VPY" - "$OUT" <<'EOF'
import csv, datetime, json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
def number(name, pattern):
    p = out / name
    m = re.search(pattern, p.read_text()) if p.exists() else None
    return float(m.group(1)) if m else None
figures = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
smi = out / "nvidia_smi.csv"
if smi.exists():
    rows = list(csv.DictReader(smi.read_text().splitlines()))
    figures["nvidia_smi"] = {k.strip(): v.strip() for k, v in rows[0].items()} if rows else None
for name in ("throughput_auto", "throughput_t4", "throughput_compiled", "throughput_8x4"):
    figures[name] = load(name + ".json")
auto, compiled = figures["throughput_auto"], figures["throughput_compiled"]
figures["mfu_production"] = auto and auto.get("mfu")
figures["plan_error_pct_production"] = auto and auto.get("plan_error_pct")
figures["stall_over_raw"] = number("checkpoint_speed.txt", r"stall / raw write: ([0-9.]+)")
stall = number("checkpoint_speed.txt", r"asynchronous save: +([0-9.]+) s blocked")
if auto and stall is not None:  # blocked per save over 50 steps of the production step (checkpoint_every)
    step_s = auto["seconds"] / auto["steps"]
    figures["checkpoint_share_of_run_pct"] = round(100 * stall / (50 * step_s + stall), 3)
if auto and compiled and auto.get("micro_batch") == compiled.get("micro_batch"):
    eager_s, fast_s = auto["seconds"] / auto["steps"], compiled["seconds"] / compiled["steps"]
    compile_s = compiled["warmup_s"] - 10 * fast_s  # 10 warm-up steps, the first ones compiling
    figures["compile"] = {"compile_s": round(compile_s, 1), "gain_pct": round(100 * (eager_s / fast_s - 1), 1),
                          "break_even_steps": round(compile_s / (eager_s - fast_s)) if eager_s > fast_s else None}
figures["errors"] = {p.stem: p.read_text().strip() for p in out.glob("*.error")}
(out / "gpu_figures.json").write_text(json.dumps(figures, indent=1))
print(json.dumps(figures, indent=1))
EOF
say "done: $OUT/gpu_figures.json"
