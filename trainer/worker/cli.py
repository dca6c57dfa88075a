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

    from .distributed import is_writer

    logs.configure(args.log_format, args.log_level if is_writer() else "warning")  # rank 0 tells the story
    log = logs.get("trainer")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return exits.CONFIG
    stop.watch(cfg.run.state_dir)  # a cluster's watcher asks through a file (daemon/common/stopfile.py)

    from . import distributed

    if not distributed.under_torchrun() and processes(cfg) > 1:
        return exec_group(args, cfg, log)  # `amapiano-train train` by hand: the same group the daemon starts
    code = run_worker(args, cfg, log, stop)
    if distributed.under_torchrun() and distributed.is_writer() and code != exits.OK:
        record_exit(args.failure_file, code)
    return code


def run_worker(args: argparse.Namespace, cfg, log, stop) -> int:
    from daemon.common import exits, oom
    from daemon.common.config import ConfigError

    from . import distributed
    from .backoff import GroupBackOff
    from .checkpoint import CheckpointError, CheckpointsDamaged
    from .data import DataError
    from .lock import acquire
    from .train import Trainer

    failure_file = args.failure_file if distributed.is_writer() else None  # one failure file per group
    try:
        if distributed.is_writer():  # the group's rank 0 holds the run
            _lock = acquire(cfg.run.state_dir, log)  # noqa: F841 - held until the process exits
        return Trainer(cfg, log, stop=stop).run()
    except (ConfigError, DataError, CheckpointError) as e:
        write_failure(failure_file, e)
        log.error("train.bad_input", error=str(e))
        return exits.CONFIG
    except CheckpointsDamaged as e:  # before any training: restarted at once, after an S3 restore
        write_failure(failure_file, e)
        log.warning("train.checkpoints_damaged", error=str(e))
        return exits.PREEMPTED
    except GroupBackOff as e:  # the record is written: torchrun ends the group, the supervisor restarts it
        write_failure(failure_file, e)
        log.warning("train.oom_group_backoff", error=str(e), record=str(oom.path(cfg.run.state_dir)))
        return exits.FAILED
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        write_failure(failure_file, e)
        log.exception("train.crashed", error=f"{type(e).__name__}: {e}")
        return exits.FAILED


def processes(cfg) -> int:
    from daemon.worker import processes as count

    return count(cfg.train)


def record_exit(failure_file: Path | None, code: int) -> None:
    """torchrun exits 1 whatever its ranks did: tell the supervisor rank 0's real status (75, 78...)."""
    if failure_file is None:
        return
    import os

    from daemon.common.atomic import read_json, write_json_atomic

    record = read_json(failure_file) or {}
    if record.get("pid") != os.getpid():
        record = {"pid": os.getpid()}  # not ours: an exit without an exception (75)
    write_json_atomic(failure_file, {**record, "exit": code})


def exec_group(args: argparse.Namespace, cfg, log) -> int:
    """Replace this process with torchrun running this same command at the configured width."""
    import os

    from daemon.common.launch import child_environment
    from daemon.worker import group_command

    argv = ["--config", str(cfg.source), "--log-format", args.log_format, "--log-level", args.log_level]
    if args.failure_file:
        argv += ["--failure-file", str(args.failure_file)]
    command = group_command(processes(cfg), argv)
    log.info("train.group", processes=processes(cfg), strategy=cfg.train.strategy, command=" ".join(command))
    os.execve(command[0], command, child_environment())


def write_failure(path: Path | None, error: BaseException) -> None:
    """torchelastic-style: tell the supervisor why we died, before we do."""
    if path is None:
        return
    import os
    import traceback

    from daemon.common.atomic import write_json_atomic
    from daemon.common.clock import Clock, iso

    write_json_atomic(path, {"type": type(error).__name__, "message": str(error),
                             "traceback": "".join(traceback.format_exception(error)),
                             "time": iso(Clock().now()), "pid": os.getpid()})
