"""amapiano-train: an autopilot for one long, cost-capped MusicGen fine-tuning run.

  amapiano-train demo                      the whole lifecycle on a tiny model, in about a minute
  amapiano-train config check FILE         validate a config (exit 78 and one line if it is wrong)
  amapiano-train supervise --config FILE   the daemon systemd runs (amapiano-train.service)
  amapiano-train status [--json]           where the run stands, from state.json
  amapiano-train hold 2h                   postpone an idle shutdown (hold 0: cancel the hold)
  amapiano-train alert test                send a test email now, to know mail works before it matters
  amapiano-train train --config FILE       one training worker, by hand (the daemon starts its own)
  amapiano-train evaluate --config FILE    the milestone figures for a checkpoint and the baseline
  amapiano-train dataset ...               MagnaTagATune -> manifest -> token cache (fetch, select, copy, tokenize)

Exit statuses: 0 ok, 65 unusable state file, 78 bad config (systemd does not restart on 65/78).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import exits
from .common.config import ConfigError, load_config

DEFAULT_CONFIG = Path("/etc/amapiano-train/config.toml")


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

    cfg = _load(args.config)
    fmt = logs.configure(args.log_format, args.log_level)
    log = logs.get("supervisor")
    try:
        supervisor = Supervisor(cfg, log, log_format=fmt, log_level=args.log_level)
    except StateError as e:
        log.error("state.unusable", error=str(e))
        print(f"amapiano-train: {e}", file=sys.stderr)
        return exits.DATAERR
    return supervisor.run()


def cmd_train(args) -> int:
    from trainer.__main__ import main as train_main

    argv = ["--config", str(args.config), "--log-format", args.log_format, "--log-level", args.log_level]
    if args.failure_file:
        argv += ["--failure-file", str(args.failure_file)]
    return train_main(argv)


def cmd_status(args) -> int:
    from .common.clock import Clock
    from .state import StateError, load_state
    from .status import render

    state_file = args.state or _load(args.config).state_file
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


def cmd_hold(args) -> int:
    from datetime import timedelta

    from .common.atomic import write_json_atomic
    from .common.clock import Clock, iso
    from .common.config import Duration

    cfg = _load(args.config)
    try:
        seconds = 0.0 if args.duration in ("0", "off") else Duration.parse(args.duration)
    except ValueError as e:
        print(f"amapiano-train hold: DURATION {e}", file=sys.stderr)
        return 2
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


def cmd_alert_test(args) -> int:
    from .common import log as logs
    from .aws import Aws
    from .mail import Outbox, make_transport

    cfg = _load(args.config)
    logs.configure("console" if sys.stdout.isatty() else "json", "warning")
    if cfg.email.transport == "none" or not cfg.email.to:
        print(f"{cfg.source}: [email] transport is \"none\": alerts are only logged and listed in state.json",
              file=sys.stderr)
        return 1
    region = cfg.aws.region or "us-east-1"
    transport = make_transport(cfg.email, lambda: Aws(cfg.aws, region).client("ses"))
    outbox = Outbox(cfg.email, transport, logs.get("alert-test"))
    alert = outbox.send("test", "test message: mail works",
                        "This is amapiano-train's test message. Budget, idle, Spot and milestone alerts "
                        "will come to this address.")
    ok = outbox.wait(alert, timeout=cfg.email.timeout + 5)
    outbox.close()
    if ok:
        print(f"sent to {', '.join(cfg.email.to)} via {cfg.email.transport}")
        return 0
    print(f"amapiano-train alert test: not delivered via {cfg.email.transport}: {alert.error}", file=sys.stderr)
    return 1


def cmd_dataset_select(args) -> int:
    from trainer.dataset import DatasetError, select, write_manifest

    ds = _load(args.config).dataset if args.config else None
    if ds is None:
        from .common.config import DatasetConfig

        ds = DatasetConfig()
    tags = [t for t in args.tags.split(",")] if args.tags else ds.proxy_tags
    try:
        sel = select(args.annotations, tags, min_tags=args.min_tags or ds.min_tags, top_n=args.top or ds.top_n,
                     split=args.split or ds.split, train_size=args.train_size or ds.train_size,
                     valid_size=args.valid_size or ds.valid_size, seed=args.seed, skip_bad_rows=args.skip_bad_rows)
    except DatasetError as e:
        print(f"amapiano-train dataset select: {e}", file=sys.stderr)
        return exits.DATAERR
    for note in sel.skipped_rows:
        print(f"skipped {args.annotations}: {note}", file=sys.stderr)
    rule = f"the top {args.top or ds.top_n}" if (args.top or ds.top_n) else f">= {args.min_tags or ds.min_tags} proxy tags"
    print(f"{args.annotations}: {sel.total_rows} clips; {len(tags)} proxy tags")
    print("clips with >= 1, 2, 3, 4 proxy tags: " + ", ".join(f"{sel.at_least[k]:,}" for k in range(1, 5)))
    train = sum(c["split"] == "train" for c in sel.clips)
    print(f"selected ({rule}): {sel.candidates:,}; in the manifest: {len(sel.clips):,} "
          f"(train {train:,}, valid {len(sel.clips) - train:,})")
    if sel.candidates < 0.5 * (ds.train_size + ds.valid_size) and not (args.top or ds.top_n):
        print(f"note: fewer than the {ds.train_size + ds.valid_size:,} clips the plan assumed. Choose with the "
              "counts above: --min-tags 2, or --top N (most proxy tags first); nothing is padded.")
    write_manifest(args.out, sel.clips)
    print(f"wrote {args.out}")
    return 0


def _dataset_setup(args, name: str):
    """The config and a logger for a dataset step (they log JSON lines under systemd-run too)."""
    from .common import log as logs

    cfg = _load(args.config)
    logs.configure(args.log_format, "info")
    return cfg, logs.get(name)


def cmd_dataset_tokenize(args) -> int:
    cfg, log = _dataset_setup(args, "tokenize")
    from trainer.dataset import DatasetError, read_manifest
    from trainer.tokenize import CacheError, Tokenizer

    try:
        manifest = read_manifest(args.manifest or cfg.manifest_file)
        result = Tokenizer(cfg, log, progress=not args.no_progress).run(
            manifest, args.audio_dir or cfg.clips_dir, args.out or cfg.tokens_dir)
    except (DatasetError, CacheError) as e:
        print(f"amapiano-train dataset tokenize: {e}", file=sys.stderr)
        return exits.DATAERR
    print(f"token cache {args.out or cfg.tokens_dir}: {result['done']} of {result['clips']} clips done, "
          f"{result['failed']} failed" + (" (see failures.jsonl)" if result["failed"] else ""))
    return 0


def cmd_dataset_fetch(args) -> int:
    cfg, log = _dataset_setup(args, "fetch")
    from trainer.fetch import FetchError, check_parts, download, extract, join_parts

    ds, where = cfg.dataset, cfg.mtat_dir
    progress = not args.no_progress
    try:
        for url, md5 in ((ds.annotations_url, ds.annotations_md5), (ds.clip_info_url, ds.clip_info_md5)):
            path = download(url, where / url.rsplit("/", 1)[-1], md5, progress=progress, log=log)
            print(f"{path}: ok")
        if args.metadata_only:
            return 0
        parts = check_parts(where, ds.parts, ds.part_md5, progress)
        print(f"parts ok: {', '.join(p.name for p in parts)}")
        archive = join_parts(parts, where / "mp3.zip", progress)
        n = extract(archive, where / "audio", progress)
        print(f"extracted {n} new files into {where / 'audio'}")
    except FetchError as e:
        print(f"amapiano-train dataset fetch: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_dataset_copy(args) -> int:
    cfg, log = _dataset_setup(args, "copy")
    from trainer.clips import copy_clips
    from trainer.dataset import DatasetError, read_manifest

    try:
        manifest = read_manifest(args.manifest or cfg.manifest_file)
    except DatasetError as e:
        print(f"amapiano-train dataset copy: {e}", file=sys.stderr)
        return exits.DATAERR
    report = copy_clips(manifest, args.source or cfg.mtat_dir / "audio", args.dest or cfg.clips_dir,
                        log, progress=not args.no_progress)
    print(f"{report['present']} of {report['clips']} clips in place ({report['copied_now']} copied now), "
          f"{len(report['skipped'])} skipped; {report['audio_hours']:.2f} h of audio")
    if report["skipped"]:
        print(f"skipped clips are listed in {(args.dest or cfg.clips_dir) / 'copy_report.json'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, args.log_format)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amapiano-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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

    t = sub.add_parser("train", help="run one training worker in the foreground",
                       description="Resume from the newest valid checkpoint and train until done (exit 0), "
                                   "or until SIGUSR1/SIGTERM (checkpoint, exit 75).")
    t.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    t.add_argument("--failure-file", type=Path, help="write the exception here if it dies")
    logging_args(t)
    t.set_defaults(func=cmd_train)

    st = sub.add_parser("status", help="show where the run stands",
                        description="Read state.json and print the ten-second screen; --json prints the file.")
    st.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="find state.json through this config")
    st.add_argument("--state", type=Path, help="read this state.json instead")
    st.add_argument("--json", action="store_true", help="print state.json as it is")
    st.set_defaults(func=cmd_status)

    h = sub.add_parser("hold", help="postpone an idle shutdown",
                       description="Keep the instance up for DURATION whatever the idle rule says (\"2h\", "
                                   "\"90m\", \"1d\"); `hold 0` cancels. The supervisor reads it within "
                                   "[idle] check_every.")
    h.add_argument("duration", metavar="DURATION")
    h.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    h.set_defaults(func=cmd_hold)

    a = sub.add_parser("alert", help="email tools")
    asub = a.add_subparsers(dest="alert_command", required=True, metavar="ACTION")
    at = asub.add_parser("test", help="send a test email now (exit 0 once delivered)")
    at.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    at.set_defaults(func=cmd_alert_test)

    d = sub.add_parser("demo", help="the whole lifecycle on a tiny model and synthetic data",
                       description="Run the supervisor in the foreground on the embedded demo.toml in a work "
                                   "directory: train a tiny random MusicGen on synthetic codes, kill the "
                                   "worker once on purpose to show the resume, and end with the status screen.")
    d.add_argument("--workdir", type=Path, help="where to put state, checkpoints and logs (default: a new temp dir)")
    d.add_argument("--log-format", choices=("auto", "json", "console"), default="console")
    d.set_defaults(func=cmd_demo)

    def dataset_args(sp):
        sp.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")

    ev = sub.add_parser("evaluate", help="the milestone figures for a checkpoint and the baseline",
                        description="Validation loss, generated samples (model and baseline), latency and "
                                    "authenticity, as one metrics JSON. See `amapiano-train evaluate -h`.",
                        add_help=False)

    ds = sub.add_parser("dataset", help="MagnaTagATune -> the Amapiano-proxy subset -> the token cache")
    dsub = ds.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    sel = dsub.add_parser("select", help="pick the clips with enough proxy tags and write the manifest",
                          description="Read annotations_final.csv (the real MTAT format), count the clips "
                                      "with >= 1..4 proxy tags, select by --min-tags or --top, split, and "
                                      "write a manifest JSONL. Works on the file alone; --config supplies "
                                      "[dataset] defaults.")
    sel.add_argument("--annotations", type=Path, required=True, help="annotations_final.csv")
    sel.add_argument("--out", type=Path, required=True, help="manifest.jsonl to write (atomically)")
    sel.add_argument("--config", type=Path, default=None, help="take [dataset] defaults from this config")
    sel.add_argument("--tags", help="comma-separated proxy tags (default: [dataset] proxy_tags)")
    how = sel.add_mutually_exclusive_group()
    how.add_argument("--min-tags", type=int, help="at least this many proxy tags (default 3)")
    how.add_argument("--top", type=int, help="instead: the N clips with the most proxy tags")
    sel.add_argument("--split", choices=("random", "mtat"), help="seeded random (default), or MTAT's by path")
    sel.add_argument("--train-size", type=int)
    sel.add_argument("--valid-size", type=int)
    sel.add_argument("--seed", type=int, default=1337)
    sel.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (listed) instead of stopping")
    sel.set_defaults(func=cmd_dataset_select)

    fe = dsub.add_parser("fetch", help="download the metadata; check, join and extract your mp3.zip parts",
                         description="Download annotations_final.csv and clip_info_final.csv (resumed, MD5-checked) "
                                     "into <cache_dir>/mtat, then check the mp3.zip.001..003 parts you put there, "
                                     "join them and extract the MP3s (resumable).")
    dataset_args(fe)
    fe.add_argument("--metadata-only", action="store_true", help="only the two CSV files")
    fe.set_defaults(func=cmd_dataset_fetch)

    cp = dsub.add_parser("copy", help="copy the selected MP3s into the dataset directory (MD5-verified, resumable)")
    dataset_args(cp)
    cp.add_argument("--manifest", type=Path, help="default: <cache_dir>/manifest.jsonl")
    cp.add_argument("--source", type=Path, help="the extracted MTAT audio (default: <cache_dir>/mtat/audio)")
    cp.add_argument("--dest", type=Path, help="default: <cache_dir>/clips")
    cp.set_defaults(func=cmd_dataset_copy)

    tok = dsub.add_parser("tokenize", help="encode the selected clips into the token cache (resumable)",
                          description="Decode each clip, resample to the codec's rate, encode with the model's "
                                      "EnCodec and encode each description with its frozen text encoder, into "
                                      "a memory-mapped cache the trainer reads. Resumes where it stopped.")
    dataset_args(tok)
    tok.add_argument("--manifest", type=Path, help="default: <cache_dir>/manifest.jsonl")
    tok.add_argument("--audio-dir", type=Path, help="where mp3_path is found (default: <cache_dir>/clips)")
    tok.add_argument("--out", type=Path, help="default: <cache_dir>/tokens")
    tok.set_defaults(func=cmd_dataset_tokenize)

    c = sub.add_parser("config", help="config file tools")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cc = csub.add_parser("check", help="validate a config file; exit 78 with one line if it is wrong")
    cc.add_argument("file", type=Path)
    cc.set_defaults(func=cmd_config_check)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:  # its own parser (trainer/evaluate.py), so -h shows its options
        from trainer.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
