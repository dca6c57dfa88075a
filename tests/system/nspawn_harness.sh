#!/bin/bash
# Runs as a oneshot unit inside a systemd-nspawn container booted by test_systemd_unit.py.
# It drives the real amapiano-train.service under a real systemd (PID 1) and leaves what it
# saw in /results; the test on the host reads it. Each step is bounded; the container
# powers off at the end whatever happened.
exec >/results/harness.log 2>&1
set -x
UNIT=amapiano-train.service
TENSORBOARD=amapiano-train-tensorboard.service
PY=/opt/amapiano-train/venv/bin/python
STATE=/var/lib/amapiano-train/state.json

state() {  # state() FIELD-EXPRESSION: print a value from state.json (or nothing)
    "$PY" -c "import json,sys; s=json.load(open('$STATE')); print($1)" 2>/dev/null
}
wait_for() {  # wait_for SECONDS CONDITION...
    local deadline=$((SECONDS + $1)); shift
    until eval "$@"; do
        if [ $SECONDS -ge $deadline ]; then echo "TIMEOUT waiting for: $*"; return 1; fi
        sleep 0.2
    done
}
show() { systemctl show "$UNIT" -p ActiveState,SubState,MainPID,StatusText,NRestarts,Result,ExecMainStatus > "/results/$1"; }

# steps(): the first failed check ends them (|| return 1); the results are collected anyway.
steps() {
    # 1. Start: Type=notify, so this returns only after READY=1 (or fails).
    systemctl start "$UNIT"; echo "$?" > /results/start_rc
    [ "$(cat /results/start_rc)" = 0 ] || return 1
    show show_started
    wait_for 90 '[ "$(state "s[\"trainer\"][\"step\"] or 0")" -ge 3 ]' || return 1
    show show_training
    # The sandbox as the kernel sees it, for the supervisor and the worker it started.
    sandbox() { grep -E '^(Umask|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "/proc/$1/status"; }
    sandbox "$(systemctl show -p MainPID --value "$UNIT")" > /results/supervisor_status
    sandbox "$(state 's["trainer"]["pid"]')" > /results/worker_status
    # What the service wrote, with its modes (UMask=0027, *DirectoryMode=0750).
    find /var/lib/amapiano-train /var/log/amapiano-train /var/cache/amapiano-train \
        -printf '%m %y %u %p\n' > /results/modes
    # TensorBoard, wanted by the unit, serves the run's curves on the loopback.
    wait_for 60 '"$PY" -c "import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:6006/data/runs\", timeout=2).read().decode())" \
                 > /results/tensorboard_runs 2>/dev/null && grep -q train /results/tensorboard_runs' || return 1
    systemctl show "$TENSORBOARD" -p ActiveState,SubState,NRestarts > /results/tensorboard_started

    # 2. Kill the worker: the supervisor restarts it from its checkpoint (warning-level lines).
    WORKER=$(state 's["trainer"]["pid"]')
    kill -KILL "$WORKER"
    wait_for 90 '[ "$(state "s[\"trainer\"][\"restarts\"]")" = 1 ] && [ "$(state "s[\"trainer\"][\"resumed_from_step\"] or 0")" -gt 0 ]' || return 1
    state 's["trainer"]["resumed_from_step"]' > /results/resumed_from_step

    # 3. Hang the supervisor: no more WATCHDOG=1, so systemd kills it and starts it again.
    OLD=$(systemctl show -p MainPID --value "$UNIT")
    echo "$OLD" > /results/hung_pid
    kill -STOP "$OLD"
    wait_for 60 '[ "$(systemctl show -p NRestarts --value "$UNIT")" -ge 1 ] &&
                 [ "$(systemctl show -p ActiveState --value "$UNIT")" = active ] &&
                 [ "$(systemctl show -p MainPID --value "$UNIT")" != "$OLD" ] &&
                 [ "$(systemctl show -p MainPID --value "$UNIT")" != 0 ]' || return 1
    show show_after_watchdog
    wait_for 90 '[ "$(state "s[\"phase\"]")" = RUNNING ]' || return 1

    # 4. A worker that cannot start (bad data config): FAILED, at error level, unit stays up.
    sed -i 's/^source = "synthetic"/source = "cache"/' /etc/amapiano-train/config.toml
    systemctl restart "$UNIT"
    wait_for 90 '[ "$(state "s[\"phase\"]")" = FAILED ]' || return 1
    show show_failed

    # 5. Stop: the supervisor exits 0 and the unit is inactive, not failed.
    systemctl stop "$UNIT"
    show show_stopped
    systemctl show "$TENSORBOARD" -p ActiveState > /results/tensorboard_stopped  # PartOf=
}

if steps; then echo ok > /results/steps; else echo "STEPS FAILED"; fi
cp "$STATE" /results/state.json
journalctl -u "$UNIT" -o json --no-pager > /results/journal.json
journalctl -u "$UNIT" -p warning -o cat --no-pager > /results/journal_warning.txt
journalctl -u "$TENSORBOARD" -o cat --no-pager > /results/journal_tensorboard.txt
systemctl status "$TENSORBOARD" --no-pager -l > /results/status_tensorboard.txt 2>&1 || true
echo done > /results/finished
systemctl poweroff --no-block
