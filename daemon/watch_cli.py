"""`amapiano-train watch`'s command line: the parser is built with every command's, so nothing
heavy is imported until it runs (daemon/watch.py is the watcher)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .common import exits

DESCRIPTION = """On the head node of a SkyPilot cluster: everything `supervise` does on one instance except
start the worker. It adopts the training group the task's run script started (the pid file), reads
its heartbeat and checkpoints on the shared state directory, keeps one ledger for the cluster
(SKYPILOT_NUM_NODES nodes, each priced as one instance), enforces the budget cap and the idle rule,
runs the milestone, raises the red flags, sends the alerts, writes state.json and TensorBoard. To
stop the group it writes the stop request that rank 0 reads at step boundaries; then it ends the
job, and its exit status tells SkyPilot whether to run it again."""


def add_parser(sub: Any, supervise: Callable[[argparse.Namespace], int]) -> None:
    w = sub.add_parser("watch", help="watch a SkyPilot cluster's training group (on its head node)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit statuses: 0 stopped by a rule or completed, 75 recover the job (stalled, "
                              "stopped unasked, cancelled), 1 crashed, 65/78 unusable state or config")
    w.add_argument("--config", type=Path, required=True, help="the person's config.toml")
    w.add_argument("--group-pid-file", type=Path, required=True, metavar="PATH",
                   help="where the run script writes torchrun's pid, then 'PID STATUS' when it ends")
    w.add_argument("--failure-file", type=Path, default=None, metavar="PATH",
                   help="the --failure-file the run script gives the trainer (default: the state dir's)")
    w.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    w.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
    w.set_defaults(func=lambda args: cmd_watch(args, supervise))


def cmd_watch(args: argparse.Namespace, supervise: Callable[[argparse.Namespace], int]) -> int:
    """`supervise`'s start-up (config, directories, lock, state), with a Watcher for the Supervisor."""
    from .cluster import NodesError, nodes_from
    from .watch import Watcher

    try:
        nodes = nodes_from(os.environ)
    except NodesError as e:
        print(f"amapiano-train watch: {e}", file=sys.stderr)
        return exits.CONFIG
    args.make = lambda cfg, log, **kw: Watcher(cfg, log, nodes, args.group_pid_file, args.failure_file, **kw)
    return supervise(args)
