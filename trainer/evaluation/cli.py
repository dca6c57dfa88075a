"""`amapiano-train evaluate` and `amapiano-train export`, and the same as module entry points for
the supervisor's children (`python -m trainer.evaluation evaluate|export`): one set of flags.

A bad config is one line and exit 78; a missing, damaged or unloadable checkpoint, one line and
exit 65. Nothing heavy is imported until a command runs: the supervisor builds this parser too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.args import config_arg, log_args

EVALUATE = ("Validation loss, generated samples (model and baseline, the same prompts and seeds), latency "
            "and authenticity, for one checkpoint and the pre-trained baseline, written as one metrics JSON. "
            "The supervisor runs it at the milestone; run it by hand on any checkpoint.")
EXPORT = ("Write a checkpoint (the best by validation loss, else the newest) as a model people can load: "
          "<out>/best_model/ (transformers' save_pretrained, with its tokenizer) and <out>/state_dict.bin "
          "(audiocraft's MusicGen layout). Prints one JSON line saying what was written.")
EXITS = "exit statuses: 0 ok, 65 no usable checkpoint, 78 bad config"


def _evaluate_args(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    config_arg(p, required=config_required)
    p.add_argument("--checkpoint", type=Path, metavar="PATH", help="a committed checkpoint (default: the newest)")
    p.add_argument("--out", type=Path, metavar="FILE", help="metrics JSON (default: <state_dir>/reports/eval_<time>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    log_args(p, level=False)


def _export_args(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    config_arg(p, required=config_required)
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: <state_dir>/reports/export)")
    p.add_argument("--checkpoint", type=Path, metavar="PATH", help="a committed checkpoint (default: the best, else the newest)")
    p.add_argument("--audiocraft-base", type=Path, metavar="FILE",
                   help="the original audiocraft state_dict.bin, for the \"xp.cfg\" audiocraft needs to load it")
    log_args(p, level=False)


def evaluate_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=EVALUATE, epilog=EXITS)
    _evaluate_args(p)
    return p


def export_parser(prog: str, config_required: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=EXPORT, epilog=EXITS)
    _export_args(p, config_required)
    return p


def add_parsers(sub) -> None:
    """`amapiano-train evaluate` and `amapiano-train export`."""
    ev = sub.add_parser("evaluate", help="the milestone figures for a checkpoint and the baseline",
                        description=EVALUATE, epilog=EXITS)
    _evaluate_args(ev)
    ev.set_defaults(func=cmd_evaluate)
    ex = sub.add_parser("export", help="the best checkpoint as transformers and audiocraft models",
                        description=EXPORT, epilog=EXITS)
    _export_args(ex)
    ex.set_defaults(func=cmd_export)


def _config(args, name: str):
    """(config, logger, log format), or None after a one-line error (exit 78)."""
    from daemon.common import log as logs
    from daemon.common.config import ConfigError, load_config

    fmt = logs.configure(args.log_format, "info")
    try:
        return load_config(args.config), logs.get(name), fmt
    except ConfigError as e:
        print(f"amapiano-train {name}: {e}", file=sys.stderr)
        return None


def cmd_evaluate(args) -> int:
    import time

    from daemon.common import exits

    if (loaded := _config(args, "evaluate")) is None:
        return exits.CONFIG
    cfg, log, fmt = loaded
    from trainer.worker.checkpoint import CheckpointError
    from trainer.worker.data import DataError

    from .evaluate import evaluate

    out = args.out or cfg.reports_dir / f"eval_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    try:
        results = evaluate(cfg, log, args.checkpoint, out, progress=not args.no_progress)
    except (CheckpointError, DataError) as e:
        print(f"amapiano-train evaluate: {e}", file=sys.stderr)
        return exits.DATAERR
    a, b = results["model"]["authenticity"], results["baseline"]["authenticity"]
    line = (f"{out}: step {results['checkpoint']['step']}  val loss {results['model']['val_loss']:.4f} "
            f"(baseline {results['baseline']['val_loss']:.4f})  authenticity {a['mean_pct']:.1f} % "
            f"[{a['ci95_pct'][0]:.1f}, {a['ci95_pct'][1]:.1f}] (baseline {b['mean_pct']:.1f} %)")
    if fmt == "json":  # under the supervisor every stdout line is a journald event
        log.info("evaluate.summary", summary=line)
    else:
        print(line)
    return exits.OK


def cmd_export(args) -> int:
    import json

    from daemon.common import exits

    if (loaded := _config(args, "export")) is None:
        return exits.CONFIG
    cfg, log, _ = loaded
    from trainer.worker.checkpoint import CheckpointError

    from .export import export

    try:
        result = export(cfg, log, args.out or cfg.reports_dir / "export", args.audiocraft_base, args.checkpoint)
    except CheckpointError as e:
        print(f"amapiano-train export: {e}", file=sys.stderr)
        return exits.DATAERR
    print(json.dumps(result))
    return exits.OK
