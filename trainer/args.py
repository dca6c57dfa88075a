"""What every trainer-side command shares on its command line: --config, the log flags, and
loading the config as one line + exit 78 when it is wrong. Standard library only: the
supervisor's `amapiano-train` parser imports the trainer's command modules too."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/amapiano-train/config.toml")
LOG_FORMATS = ("auto", "json", "console")


def config_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    if required:
        p.add_argument("--config", type=Path, required=True, metavar="FILE", help="config.toml")
    else:
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE", help=f"config.toml (default {DEFAULT_CONFIG})")


def log_args(p: argparse.ArgumentParser, level: bool = True) -> None:
    p.add_argument("--log-format", choices=LOG_FORMATS, default="auto",
                   help="json: `<priority>{...}` lines for journald (default when not a terminal)")
    if level:
        p.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")


def load_config_or_exit(path: Path, prog: str):
    """The validated config, or its one-line error on stderr and exit 78 (restarting cannot help)."""
    from daemon.common import exits
    from daemon.common.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(exits.CONFIG) from None
