"""`amapiano-train evaluate`, `amapiano-train export` and `amapiano-train score`, and the same as module entry points for
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
SCORE = ("Score audio files for how Amapiano-like they sound (0-100 %) with the milestone's scorer, and print "
         "each file's authenticity_pct and its parts. --offline (or no CLAP weights on disk): the librosa "
         "descriptors alone, and it says so. Use it to sanity-check the scorer on your own clips.")
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
    """`amapiano-train evaluate`, `amapiano-train export` and `amapiano-train score`."""
    sc = sub.add_parser("score", help="how Amapiano-like audio files sound, 0-100 %%", description=SCORE,
                        epilog="exit statuses: 0 ok, 65 an unreadable file, 78 bad config")
    sc.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files or directories of them")
    sc.add_argument("--offline", action="store_true", help="no CLAP: the librosa descriptors alone")
    sc.add_argument("--json", action="store_true", help="a JSON list of {file, authenticity_pct, parts, ...}")
    sc.add_argument("--config", type=Path, metavar="FILE",
                    help="take [milestone] clap_model, reference_dir, genres and descriptions from it")
    sc.set_defaults(func=cmd_score)
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
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"amapiano-train {name}: {e}", file=sys.stderr)
        return None
    _threads(cfg.train.cpu_threads)
    return cfg, logs.get(name), fmt


def _threads(n: int) -> None:
    """`[train] cpu_threads` holds for evaluate and export as for training: beside other busy
    processes, torch's default of one spinning OpenMP thread per core doubled the evaluation's
    CPU time (beside two burners on 2 cores: 27 s user for 10 s of work)."""
    if n:
        import torch

        torch.set_num_threads(n)


def _environment_error(command: str, e: Exception) -> int:
    """One line for what the config names and the machine does not give: 78 for the config, else 1
    (a network or a disk: trying again later can help)."""
    from daemon.common import exits
    from daemon.common.config import ConfigError

    text = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e.strerror or e}" + (
        f" ({e.filename})" if getattr(e, "filename", None) else "")
    print(f"amapiano-train {command}: {text}", file=sys.stderr)
    return exits.CONFIG if isinstance(e, ConfigError) else exits.FAILED


def cmd_evaluate(args) -> int:
    import time

    from daemon.common import exits

    if (loaded := _config(args, "evaluate")) is None:
        return exits.CONFIG
    cfg, log, fmt = loaded
    from daemon.common.config import ConfigError
    from trainer.worker.checkpoint import CheckpointError
    from trainer.worker.data import DataError

    from .evaluate import evaluate

    out = args.out or cfg.reports_dir / f"eval_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    try:
        results = evaluate(cfg, log, args.checkpoint, out, progress=not args.no_progress)
    except (CheckpointError, DataError) as e:
        print(f"amapiano-train evaluate: {e}", file=sys.stderr)
        return exits.DATAERR
    except (ConfigError, OSError) as e:  # the model's directory; the hub unreachable, a full disk
        return _environment_error("evaluate", e)
    a, b = results["model"]["authenticity"], results["baseline"]["authenticity"]
    c = results["comparison"]

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}"
    ci = c.get("ci95_pct") or [None, None]
    line = (f"{out}: step {results['checkpoint']['step']}  val loss {results['model']['val_loss']:.4f} "
            f"(baseline {results['baseline']['val_loss']:.4f})  authenticity {pct(a['mean_pct'])} % "
            f"(baseline {pct(b['mean_pct'])} %)  improvement {pct(c['improvement_pct'])} [{pct(ci[0])}, {pct(ci[1])}] "
            f"p={c['p_value'] if c['p_value'] is not None else 'n/a'}  scorer: {results['scorer']['mode']}")
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
    from daemon.common.config import ConfigError
    from trainer.worker.checkpoint import CheckpointError

    from .export import export

    try:
        result = export(cfg, log, args.out or cfg.reports_dir / "export", args.audiocraft_base, args.checkpoint)
    except CheckpointError as e:
        print(f"amapiano-train export: {e}", file=sys.stderr)
        return exits.DATAERR
    except (ConfigError, OSError) as e:
        return _environment_error("export", e)
    print(json.dumps(result))
    return exits.OK


def cmd_score(args) -> int:
    import json
    import warnings

    from daemon.common import exits
    from daemon.common.config import ConfigError, MilestoneConfig, load_config

    try:
        cfg = load_config(args.config) if args.config else None
    except ConfigError as e:
        print(f"amapiano-train score: {e}", file=sys.stderr)
        return exits.CONFIG
    from .score import AUDIO_SUFFIXES, audio_files, build_scorer, read_audio, unreadable

    scorer = build_scorer(cfg.milestone if cfg else MilestoneConfig(), args.offline,
                          base=cfg.source.parent if cfg and cfg.source else None)
    rows, status = [], exits.OK
    files = audio_files(args.files)
    if not files:
        print(f"amapiano-train score: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {', '.join(map(str, args.files))}",
              file=sys.stderr)
        return exits.DATAERR
    for path in files:
        try:
            with warnings.catch_warnings():  # librosa's "n_fft too large" on a 2 s clip names no file
                warnings.simplefilter("ignore")
                wave, sr = read_audio(path)
                r = scorer.score(wave, sr)
        except Exception as e:  # one bad file is reported, the others are still scored
            print(f"amapiano-train score: {path}: {unreadable(e)}", file=sys.stderr)
            status = exits.DATAERR
            continue
        r.pop("embedding", None)
        rows.append({"file": str(path), "authenticity_pct": round(r.pop("authenticity_pct"), 2), "mode": scorer.mode, **r})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"scorer: {scorer.mode}" + "".join(f"; {n}" for n in scorer.notes))
        for row in rows:
            parts = "  ".join(f"{k} {v:.2f}" for k, v in row["parts"].items())
            print(f"{row['authenticity_pct']:6.1f} %  {row['file']}  (gate {row['gate']:.2f}; {parts})")
    return status
