"""`amapiano-train report` and `python -m daemon.report` (the child the supervisor starts at the
milestone and at completion): one parser. Standard library only until a report is built: the
`amapiano-train` parser imports this module for every command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import NAMES

DEFAULT_CONFIG = Path("/etc/amapiano-train/config.toml")
DESCRIPTION = """\
Write an HTML report of the run that opens in any browser and loads nothing from the network:
the milestone's decision with every reason (threshold and measured value) and what happens next;
plots of the loss against steps (with the pre-trained baseline's validation loss), the spend
against the budget (with the forecast and the milestone), the authenticity per prompt for the
model and the baseline (with the bootstrap interval of the difference) and the GPU utilisation;
the model's and the baseline's clip for each prompt side by side, playable; the red flags; the
run's id, config digest, GPU and cost.

It works at any time, mid-run too (loss and spend so far, "no decision yet"). The clips are
copied beside the page, so the folder is the whole report: copy it to a laptop with
`scp -r HOST:/var/lib/amapiano-train/reports .` (or `aws s3 sync s3://BUCKET/PREFIX/reports .`
where the S3 mirror is on) and open the .html file.

The supervisor writes week_5_report.html at the milestone and completion_report.html at the
end by itself (and mails them); this command writes report.html unless --kind says otherwise.
"""
EPILOG = "exit statuses: 0 written, 65 the report cannot be written where --out says, 78 bad config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"the service's config.toml: where state.json, the reports and the logs are (default {DEFAULT_CONFIG})")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write the report (page, clips and zip) here instead of <state_dir>/reports")
    p.add_argument("--kind", choices=sorted(NAMES), default="now",
                   help="now (default): where the run stands, as report.html; milestone: week_5_report.html; "
                        "completion: completion_report.html (each rebuilt from its JSON report)")
    p.add_argument("--scalars", action="store_true", help=argparse.SUPPRESS)  # the supervisor's: figures to TensorBoard
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="json: one event line for journald (what the supervisor's child uses)")


def add_parser(sub) -> None:
    """`amapiano-train report`."""
    r = sub.add_parser("report", help="write the HTML report: decision, plots, clips side by side",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(r)
    r.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..common import exits
    from ..common import log as logs
    from ..common.config import ConfigError, load_config

    fmt = logs.configure(args.log_format, "info")
    log = logs.get("report")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"amapiano-train report: {e}", file=sys.stderr)
        return exits.CONFIG
    from .build import build

    try:
        built = build(cfg, args.kind, args.out, scalars=args.scalars)
    except OSError as e:
        where = e.filename or args.out or cfg.reports_dir
        print(f"amapiano-train report: {where}: cannot write the report ({e.strerror or e})", file=sys.stderr)
        return exits.DATAERR
    if fmt == "json":  # under the supervisor every stdout line is a journald event
        log.info("report.written", html=str(built.html), zip=str(built.zip) if built.zip else None,
                 clips=built.clips, not_available=built.notes[:20] or None)
    else:
        print(f"report: {built.html}\n  open it in a browser; {built.clips} clips play from "
              f"{built.html.stem}_files/ beside it" + (f"; {built.zip.name} holds both" if built.zip else ""))
        for note in built.notes[:20]:
            print(f"  not available: {note}")
    return exits.OK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daemon.report", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return cmd_report(p.parse_args(sys.argv[1:] if argv is None else argv))
