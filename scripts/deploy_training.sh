#!/usr/bin/env bash
# Install amapiano-train as a systemd service on a Debian/Ubuntu GPU instance. Safe to run
# again (an upgrade): it never overwrites /etc/amapiano-train/config.toml once it exists.
#
#   sudo ./scripts/deploy_training.sh             install, enable (does not start)
#   sudo ./scripts/deploy_training.sh --start     ... and start (or restart) the service
#   ./scripts/deploy_training.sh --dry-run        print every step, change nothing
#
# What it does:
#   1. a system user `amapiano` (no login, home /var/lib/amapiano-train)
#   2. a copy of this source tree in PREFIX/src and a virtualenv in PREFIX/venv with the package
#      (torch from PyPI: the CUDA build on x86_64 Linux; pin one with TORCH_SPEC="torch==2.5.1")
#   3. /etc/amapiano-train/config.toml from etc/ if there is none yet (the shipped one is always
#      written beside it as config.toml.dist, to compare after an upgrade), then `config check`
#   4. a polkit rule letting the service user power off (a warning line when there is no polkit),
#      the units in /etc/systemd/system (the service, and TensorBoard on 127.0.0.1:6006 that
#      runs with it), daemon-reload, enable
set -euo pipefail

usage() { sed -n '2,/^set -e/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/amapiano-train
ETC=/etc/amapiano-train
UNIT_DIR=/etc/systemd/system
SERVICE_USER=amapiano
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch}
DRY_RUN=0
START=0

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --start) START=1 ;;
        --prefix) PREFIX=$2; shift ;;
        --etc) ETC=$2; shift ;;
        --unit-dir) UNIT_DIR=$2; shift ;;
        --user) SERVICE_USER=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "deploy_training.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "deploy: $*"; }
run() {  # run CMD...: do it, or in --dry-run only show it
    if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}
die() { echo "deploy_training.sh: $*" >&2; exit 1; }

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or with --dry-run to see the steps"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON is missing or older than 3.11 (Ubuntu 22.04: apt install python3.11 python3.11-venv; PYTHON=python3.11)"
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/amapiano-train.service" ] \
    || die "$SRC does not look like the amapiano-train source tree"

# 1. the service user
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
else
    say "creating system user $SERVICE_USER"
    run useradd --system --home-dir /var/lib/amapiano-train --no-create-home \
        --shell /usr/sbin/nologin --comment "amapiano-train service" "$SERVICE_USER"
fi

# 2. source copy and virtualenv
say "installing the source in $PREFIX/src and the package in $PREFIX/venv"
run mkdir -p "$PREFIX"
run rm -rf "$PREFIX/src.new"
run mkdir -p "$PREFIX/src.new"
run tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' --exclude=__pycache__ -cf "$PREFIX/src.tar" .
# As root, tar would keep the clone's owner and modes: the person who cloned would own the code
# that root installs and the service runs.
run tar -C "$PREFIX/src.new" -xf "$PREFIX/src.tar" --no-same-owner --no-same-permissions
run rm -f "$PREFIX/src.tar"
run rm -rf "$PREFIX/src"
run mv "$PREFIX/src.new" "$PREFIX/src"
if [ -x "$PREFIX/venv/bin/python" ]; then
    say "virtualenv $PREFIX/venv exists (upgrading in place)"
else
    run "$PYTHON" -m venv "$PREFIX/venv"
fi
run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade "$PREFIX/src"

# 3. config: the person's file is never overwritten
run mkdir -p "$ETC"
run install -m 0644 "$SRC/etc/amapiano-train/config.toml" "$ETC/config.toml.dist"
if [ -e "$ETC/config.toml" ]; then
    say "keeping the existing $ETC/config.toml (the shipped default is in config.toml.dist)"
else
    say "installing $ETC/config.toml (edit it before starting: [budget], [idle], paths)"
    run install -m 0644 "$SRC/etc/amapiano-train/config.toml" "$ETC/config.toml"
fi
run "$PREFIX/venv/bin/amapiano-train" config check "$ETC/config.toml"

# 4. the unit, and leave to power off for the `poweroff` shutdown action and ec2-stop's fall-back
#    (the service's own user may not otherwise; `ec2-stop` needs instead an instance role allowing
#    ec2:StopInstances). polkit from 0.106 reads JavaScript rules; older ones (Ubuntu 22.04's 0.105)
#    read .pkla files.
POLKIT_DIR=${POLKIT_DIR:-/etc/polkit-1/rules.d}
PKLA_DIR=${PKLA_DIR:-/etc/polkit-1/localauthority/50-local.d}
write_file() {  # write_file PATH TEXT: do it, or in --dry-run only show it
    if [ "$DRY_RUN" = 1 ]; then echo "+ write $1"; else printf '%s\n' "$2" > "$1"; fi
}
if [ -d "$POLKIT_DIR" ]; then
    say "allowing $SERVICE_USER to power off (polkit rule)"
    write_file "$POLKIT_DIR/50-amapiano-train.rules" "polkit.addRule(function(action, subject) {
    if (subject.user == \"$SERVICE_USER\" &&
        action.id.indexOf(\"org.freedesktop.login1.power-off\") == 0) { return polkit.Result.YES; }
});"
elif [ -d "$(dirname "$PKLA_DIR")" ]; then
    say "allowing $SERVICE_USER to power off (polkit local authority, .pkla)"
    run mkdir -p "$PKLA_DIR"
    write_file "$PKLA_DIR/50-amapiano-train.pkla" "[amapiano-train may power off]
Identity=unix-user:$SERVICE_USER
Action=org.freedesktop.login1.power-off*
ResultAny=yes
ResultInactive=yes
ResultActive=yes"
else
    echo "deploy: warning: no polkit ($POLKIT_DIR and $(dirname "$PKLA_DIR") missing): $SERVICE_USER may not power off, so the \`poweroff\` action and ec2-stop's fall-back will fail; install polkitd and deploy again, or rely on ec2-stop" >&2
fi
# The TensorBoard unit is enabled into amapiano-train.service.wants/: it runs with the training.
for unit in amapiano-train.service amapiano-train-tensorboard.service; do
    say "installing $UNIT_DIR/$unit"
    run install -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
done
run systemctl daemon-reload
run systemctl enable amapiano-train.service amapiano-train-tensorboard.service
if [ "$START" = 1 ]; then
    run systemctl restart amapiano-train.service
    say "started: journalctl -u amapiano-train -f"
else
    say "done. Start it with: systemctl start amapiano-train   (then: amapiano-train status)"
fi
