"""The worker's command line: `python -m trainer --config FILE [--failure-file PATH]` (what the
supervisor starts) and `amapiano-train train` (the same, by hand, in the foreground).

Exit 0: all epochs done. 75: checkpointed on request (SIGUSR1/SIGTERM). 78: bad config, data
or checkpoint (restarting cannot help). Anything else: a crash, explained in the failure file.
Nothing heavy is imported until the command runs: the supervisor builds this parser too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.args import config_arg, log_args

DESCRIPTION = ("Resume from the newest valid checkpoint and train until every epoch is done (exit 0), or until "
               "SIGUSR1/SIGTERM/SIGINT (checkpoint at the next step, exit 75); SIGUSR2 checkpoints and goes on. "
               "A second worker on the same state directory waits for the first to let go.")
EXITS = "exit statuses: 0 done, 75 checkpointed on request, 78 bad config/data/checkpoint, 1 crashed"


def add_arguments(p: argparse.ArgumentParser, config_required: bool) -> None:
    config_arg(p, required=config_required)
    p.add_argument("--failure-file", type=Path, default=None, metavar="PATH",
                   help="where to write the exception if the worker dies (the supervisor reads it)")
    log_args(p)


def add_parser(sub) -> None:
    """`amapiano-train train`."""
    t = sub.add_parser("train", help="run one training worker in the foreground (the daemon starts its own)",
                       description=DESCRIPTION, epilog=EXITS)
    add_arguments(t, config_required=False)
    t.set_defaults(func=cmd_train)
    from .plan import add_parser as add_plan  # `amapiano-train plan`: standard library only

    add_plan(sub)


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer`: what the supervisor launches."""
    from .stop import StopRequest

    stop = StopRequest()  # first: a SIGTERM during the slow imports that follow must not be lost
    p = argparse.ArgumentParser(prog="python -m trainer", description=DESCRIPTION, epilog=EXITS)
    add_arguments(p, config_required=True)
    return cmd_train(p.parse_args(argv), stop)


def cmd_train(args: argparse.Namespace, stop=None) -> int:
    from .stop import StopRequest

    stop = stop or StopRequest()
    from daemon.common import exits
    from daemon.common import log as logs
    from daemon.common.config import ConfigError, load_config

    logs.configure(args.log_format, args.log_level)
    log = logs.get("trainer")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return exits.CONFIG

    from .checkpoint import CheckpointError
    from .data import DataError
    from .lock import acquire
    from .train import Trainer, write_failure

    try:
        _lock = acquire(cfg.run.state_dir, log)  # noqa: F841 - held until the process exits
        return Trainer(cfg, log, stop=stop).run()
    except (ConfigError, DataError, CheckpointError) as e:
        write_failure(args.failure_file, e)
        log.error("train.bad_input", error=str(e))
        return exits.CONFIG
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        write_failure(args.failure_file, e)
        log.exception("train.crashed", error=f"{type(e).__name__}: {e}")
        return exits.FAILED
