"""amapiano-train: an autopilot for one long, cost-capped MusicGen fine-tuning run.

  amapiano-train demo                      the whole lifecycle on a tiny model, in about a minute
  amapiano-train config check FILE         validate a config (exit 78 and one line if it is wrong)
  amapiano-train supervise --config FILE   the daemon systemd runs (amapiano-train.service)
  amapiano-train watch --config FILE ...   the same on a SkyPilot cluster's head node (starts no worker)
  amapiano-train status [--json] [--watch] where the run stands, from state.json
  amapiano-train hold 2h                   postpone an idle shutdown (hold 0: cancel the hold)
  amapiano-train start-fresh               S3 holds a run it cannot read: go on without it
  amapiano-train alert test                send a test alert now, to know alerts arrive before it matters
  amapiano-train train --config FILE       one training worker, by hand (the daemon starts its own)
  amapiano-train evaluate --config FILE    the milestone figures for a checkpoint and the baseline
  amapiano-train export --config FILE      the best checkpoint as transformers and audiocraft models
  amapiano-train report [--out DIR]        the HTML report: decision, plots, clips side by side
  amapiano-train score [--offline] FILE... how Amapiano-like any audio files are (authenticity_pct)
  amapiano-train plan [--nodes N] [--json] before paying: precision, batch, memory, hours, cost per GPU type
  amapiano-train dataset ACTION            MagnaTagATune -> manifest -> clips -> token cache
                                           (ACTION: fetch, select, copy, tokenize; in that order)

`amapiano-train COMMAND -h` explains each command and its flags.
Exit statuses: 0 ok, 65 unusable input file (state, checkpoint, data), 78 bad config
(systemd does not restart on 65/78).

The trainer-side commands (train, evaluate, export, dataset) live beside their code in
trainer/*/cli.py; their modules import torch only when such a command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import exits
from .common.config import ConfigError, load_config
from .rules.idle import MAX_HOLD_S

DEFAULT_CONFIG = Path("/etc/amapiano-train/config.toml")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("amapiano-train")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed; pip install -e .)"


def _load(path: Path):
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"amapiano-train: {e}", file=sys.stderr)
        raise SystemExit(exits.CONFIG) from None


def cmd_config_check(args) -> int:
    cfg = _load(args.file)
    print(f"{args.file}: ok (model {cfg.model.source}:{cfg.model.pretrained if cfg.model.source == 'pretrained' else 'tiny'}, "
          f"{cfg.train.epochs} epochs, state in {cfg.run.state_dir})")
    return 0


def cmd_supervise(args) -> int:
    from .common import log as logs
    from .state import StateError
    from .supervisor import Supervisor

    from .common.rundir import RunDirError, check_dirs, hold_lock

    cfg = _load(args.config)
    fmt = logs.configure(args.log_format, args.log_level)
    log = logs.get("supervisor")
    try:
        for warning in check_dirs(cfg.run.state_dir, cfg.run.log_dir, cfg.run.cache_dir):
            log.error("storage.unwritable", warning=warning)
        lock = hold_lock(cfg.run.state_dir)  # noqa: F841 - held (open) for the daemon's life
    except RunDirError as e:
        log.error("supervisor.refused", error=str(e))
        print(f"amapiano-train: {e}", file=sys.stderr)
        return exits.CONFIG
    try:
        make = getattr(args, "make", Supervisor)  # `watch` (daemon/watch.py) makes its Watcher
        supervisor = make(cfg, log, log_format=fmt, log_level=args.log_level)
    except StateError as e:
        log.error("state.unusable", error=str(e))
        print(f"amapiano-train: {e}", file=sys.stderr)
        return exits.DATAERR
    code = supervisor.run()
    # A provisional run (the bucket could not be read at start) whose bucket reads now: EX_TEMPFAIL,
    # and systemd (Restart=on-failure) starts the service again on the bucket's run.
    return exits.PREEMPTED if supervisor.mirror.reopen_wanted else code


def _watch_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0.1 <= seconds <= 3600:  # nan fails too
        raise argparse.ArgumentTypeError(f"SECONDS must be a number from 0.1 to 3600 (got {text!r})")
    return seconds


def cmd_status(args) -> int:
    from .common.clock import Clock
    from .state import StateError, load_state
    from .status import render

    state_file = args.state or _load(args.config).state_file
    if args.watch is not None:
        return _watch_status(state_file, args)
    try:
        state = load_state(state_file)
    except StateError as e:
        print(f"amapiano-train: {e}", file=sys.stderr)
        return exits.DATAERR
    if state is None:
        print(f"amapiano-train: {state_file}: no state file yet (has the service started?)", file=sys.stderr)
        return 1
    print(json.dumps(state.to_json(), indent=2) if args.json else render(state, Clock().now()))
    return 0


def _watch_status(state_file: Path, args) -> int:
    """The status screen again every --watch seconds until Ctrl-C (exit 0). A missing or unreadable
    state file is shown as such and watched on: the service may be starting."""
    import time

    from .common.clock import Clock, iso
    from .state import StateError, load_state
    from .status import render

    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""  # a pipe or a file gets the screens one after another
    renders = 0
    try:
        while True:
            now = Clock().now()
            try:
                state = load_state(state_file)
                body = (json.dumps(state.to_json(), indent=2) if args.json else render(state, now)) if state \
                    else f"{state_file}: no state file yet (has the service started?)"
            except StateError as e:
                body = f"{e}"
            sys.stdout.write(f"{clear}amapiano-train status, every {args.watch:g}s, {iso(now)} (Ctrl-C to stop)\n\n"
                             f"{body}\n")
            sys.stdout.flush()
            renders += 1
            if args.count and renders >= args.count:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        print()
        return 0


def cmd_hold(args) -> int:
    from datetime import timedelta

    from .common.atomic import write_json_atomic
    from .common.clock import Clock, iso
    from .common.config import Duration

    cfg = _load(args.config)
    try:
        seconds = 0.0 if args.duration in ("0", "off") else Duration.parse(args.duration)
        if seconds > MAX_HOLD_S:
            raise ValueError(f"must be at most 7d (got {args.duration!r}): a longer hold is the idle rule switched "
                             "off; for that set [idle] action = \"none\" or a longer [idle] timeout in the config")
    except ValueError as e:
        print(f"amapiano-train hold: DURATION {e}", file=sys.stderr)
        return 2
    if not cfg.run.state_dir.is_dir():  # a hold for no run: the wrong --config, or no service yet
        print(f"amapiano-train hold: no run in {cfg.run.state_dir} (not a directory); name the service's config "
              "with --config", file=sys.stderr)
        return exits.CONFIG
    if seconds == 0:
        cfg.hold_file.unlink(missing_ok=True)
        print("idle hold cancelled: the idle rule applies again")
        return 0
    now = Clock().now()
    until = now + timedelta(seconds=seconds)
    try:
        write_json_atomic(cfg.hold_file, {"until": iso(until), "at": iso(now),
                                          "by": os.environ.get("SUDO_USER") or os.environ.get("USER")})
    except OSError as e:
        print(f"amapiano-train hold: cannot write {cfg.hold_file} ({e.strerror}); try with sudo", file=sys.stderr)
        return 1
    print(f"idle shutdown postponed until {iso(until)} (UTC); `amapiano-train hold 0` cancels the hold")
    return 0


def cmd_start_fresh(args) -> int:
    from .ports.restore import request_fresh_start

    cfg = _load(args.config)
    ok, text = request_fresh_start(cfg, os.environ.get("SUDO_USER") or os.environ.get("USER"))
    print(f"{text}" if ok else f"amapiano-train start-fresh: {text}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_alert_test(args) -> int:
    """One line per destination (each apprise URL is one), its secrets masked; never a traceback."""
    from .common import log as logs
    from .ports.aws import Aws
    from .ports.mail import APPRISE_ENV, make_transport, try_test_alert

    cfg = _load(args.config)
    # The lines below say what happened at each destination; a library's own lines (apprise's retries,
    # a URL it cannot parse) would only say it again, less clearly.
    logs.configure("console" if sys.stdout.isatty() else "json", "critical")
    email = cfg.email
    if email.transport == "none" or (email.transport != "apprise" and not email.to):
        print(f"{cfg.source}: [email] transport is \"{email.transport}\"{'' if email.to else ' and to is empty'}: "
              "alerts are only logged and listed in state.json", file=sys.stderr)
        return 1
    transport = make_transport(email, lambda: Aws(cfg.aws, cfg.aws.region or "us-east-1").client("ses"))
    for problem in transport.unusable:
        print(f"amapiano-train alert test: {problem}", file=sys.stderr)
    if not transport.destination:
        # the service reads its secrets from the unit (credential or EnvironmentFile); a shell does not
        print(f"amapiano-train alert test: no apprise URL: set {APPRISE_ENV} (e.g. sudo sh -c 'set -a; . "
              f"/etc/amapiano-train/secrets.env; amapiano-train alert test') or the credential "
              f"{email.apprise_credential}", file=sys.stderr)
        return exits.CONFIG
    results = try_test_alert(email, transport)
    for where, error in results:
        if error is None:
            print(f"sent to {where} via {email.transport}")
        else:
            print(f"amapiano-train alert test: not delivered via {email.transport} to {where}: {error}", file=sys.stderr)
    sent = sum(error is None for _, error in results)
    if email.transport == "apprise" and sent == len(results):
        print(f"sent to {transport.destination} via apprise")
    elif email.transport == "apprise":
        print(f"amapiano-train alert test: not delivered via apprise to every URL ({sent} of {len(results)} sent)",
              file=sys.stderr)
    return 0 if sent == len(results) and not transport.unusable else 1


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, args.log_format)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amapiano-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"amapiano-train {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def logging_args(sp):
        sp.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                        help="json: `<priority>{...}` lines for journald (default when not a terminal)")
        sp.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")

    s = sub.add_parser("supervise", help="run the supervisor daemon (what systemd starts)",
                       description="Start the training worker, restart it from its last checkpoint when it "
                                   "dies, and report through state.json, the journal and systemd's STATUS. "
                                   "SIGTERM checkpoints the worker and exits 0.")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"config.toml (default {DEFAULT_CONFIG})")
    logging_args(s)
    s.set_defaults(func=cmd_supervise)

    st = sub.add_parser("status", help="show where the run stands",
                        description="Read state.json and print the ten-second screen; --json prints the file; "
                                    "--watch shows it again every few seconds until Ctrl-C.")
    st.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="find state.json through this config")
    st.add_argument("--state", type=Path, help="read this state.json instead")
    st.add_argument("--json", action="store_true", help="print state.json as it is")
    st.add_argument("--watch", type=_watch_seconds, nargs="?", const=5.0, metavar="SECONDS",
                    help="clear the screen and show it again every SECONDS (default 5) until Ctrl-C")
    st.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)  # tests: stop after N screens
    st.set_defaults(func=cmd_status)

    h = sub.add_parser("hold", help="postpone an idle shutdown",
                       description="Keep the instance up for DURATION whatever the idle rule says (\"2h\", "
                                   "\"90m\", \"1d\"; at most 7d); `hold 0` cancels. The supervisor reads it "
                                   "within [idle] check_every. The budget cap still applies.")
    h.add_argument("duration", metavar="DURATION")
    h.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    h.set_defaults(func=cmd_hold)

    f = sub.add_parser("start-fresh", help="go on without an S3 run that cannot be read",
                       description="When S3 may hold this run but cannot be read (403, throttling, an outage) "
                                   "or its state.json was refused, and this disk has nothing to go on from, the "
                                   "supervisor does not start the worker: a new run would begin at $0 or step 0. "
                                   "It alerts, tries again with backoff, and goes on by itself once the bucket "
                                   "reads. start-fresh tells it to go on now without the bucket (state.json's "
                                   "mirror.restore shows the wait); exit 1 when nothing waits.")
    f.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    f.set_defaults(func=cmd_start_fresh)

    a = sub.add_parser("alert", help="alert tools (email, SES, apprise)")
    asub = a.add_subparsers(dest="alert_command", required=True, metavar="ACTION")
    at = asub.add_parser("test", help="send a test alert now (exit 0 once delivered)",
                         description="Send one test alert through [email] transport (smtp, ses or apprise) and "
                                     "wait for it: exit 0 once delivered, 1 with the reason if not, 78 when "
                                     "apprise has no URL (the service reads them from its credential or "
                                     "secrets.env; a shell does not).")
    at.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    at.set_defaults(func=cmd_alert_test)

    d = sub.add_parser("demo", help="the whole lifecycle on a tiny model and synthetic data",
                       description="Run the supervisor in the foreground on the embedded demo.toml in a work "
                                   "directory: train a tiny random MusicGen on synthetic codes, kill the "
                                   "worker once on purpose to show the resume, and end with the status screen.")
    d.add_argument("--workdir", type=Path, help="where to put state, checkpoints and logs (default: a new temp dir)")
    d.add_argument("--log-format", choices=("auto", "json", "console"), default="console")
    d.set_defaults(func=cmd_demo)

    from trainer.dataset.cli import add_parser as add_dataset
    from trainer.evaluation.cli import add_parsers as add_evaluation
    from trainer.worker.cli import add_parser as add_train
    from .report.cli import add_parser as add_report

    for add in (add_train, add_evaluation, add_dataset, add_report, _add_watch):  # torch-free parsers; torch (matplotlib) when run
        add(sub)

    c = sub.add_parser("config", help="config file tools")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cc = csub.add_parser("check", help="validate a config file; exit 78 with one line if it is wrong")
    cc.add_argument("file", type=Path)
    cc.set_defaults(func=cmd_config_check)
    return p


def _add_watch(sub) -> None:
    from .watch_cli import add_parser  # `amapiano-train watch`: the supervisor on a SkyPilot cluster's head node

    add_parser(sub, cmd_supervise)  # the same command, making a Watcher


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `status --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
