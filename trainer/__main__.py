"""`python -m trainer --config FILE [--failure-file PATH]`: one run of the training worker.

Exit 0: all epochs done. 75: checkpointed on request (SIGUSR1/SIGTERM). 78: bad config or
data (restarting cannot help). Anything else: a crash, explained in the failure file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from .stop import StopRequest

    stop = StopRequest()  # first: a SIGTERM during the slow imports below must not be lost
    parser = argparse.ArgumentParser(prog="amapiano-train train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="config.toml")
    parser.add_argument("--failure-file", type=Path, default=None,
                        help="where to write the exception if the worker dies (the supervisor reads it)")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    parser.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
    args = parser.parse_args(argv)

    from daemon.common import log as logs
    from daemon.common import exits
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
        return 1


if __name__ == "__main__":
    sys.exit(main())
