"""`amapiano-train dataset select|fetch|copy|tokenize`: MagnaTagATune -> the Amapiano-proxy
manifest -> the clips -> the token cache the worker reads. Each step is resumable.

Bad input (annotations, manifest, cache) is one line and exit 65; a bad config, exit 78.
Nothing heavy is imported until a command runs: the supervisor builds this parser too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.args import config_arg, load_config_or_exit, log_args

PROG = "amapiano-train dataset"


def _at_least_one(text: str) -> int:
    """--min-tags 0 once fell back to the default and --top -5 selected nothing: both are refused."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n})")
    return n


def add_parser(sub) -> None:
    ds = sub.add_parser("dataset", help="MagnaTagATune -> the Amapiano-proxy subset -> the token cache",
                        description="The dataset, step by step (each resumable): `fetch` the metadata and "
                                    "unpack your mp3.zip parts, `select` the clips with enough proxy tags into "
                                    "a manifest, `copy` those MP3s, `tokenize` them into the token cache. "
                                    "Then set [data] source = \"cache\" and train.",
                        epilog="exit statuses: 0 ok, 65 unusable input file, 78 bad config, 1 download failed")
    dsub = ds.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    fe = dsub.add_parser("fetch", help="download the metadata; check, join and extract your mp3.zip parts",
                         description="Download annotations_final.csv and clip_info_final.csv (resumed, MD5-checked) "
                                     "into <cache_dir>/mtat, then check the mp3.zip.001..003 parts you put there, "
                                     "join them and extract the MP3s (resumable).")
    _step_args(fe)
    fe.add_argument("--metadata-only", action="store_true", help="only the two CSV files")
    fe.set_defaults(func=cmd_fetch)
    _select_parser(dsub)

    cp = dsub.add_parser("copy", help="copy the selected MP3s into the dataset directory (MD5-verified, resumable)")
    _step_args(cp)
    cp.add_argument("--manifest", type=Path, help="default: <cache_dir>/manifest.jsonl")
    cp.add_argument("--source", type=Path, help="the extracted MTAT audio (default: <cache_dir>/mtat/audio)")
    cp.add_argument("--dest", type=Path, help="default: <cache_dir>/clips")
    cp.set_defaults(func=cmd_copy)

    tok = dsub.add_parser("tokenize", help="encode the selected clips into the token cache (resumable)",
                          description="Decode each clip, resample to the codec's rate, encode with the model's "
                                      "EnCodec and encode each description with its frozen text encoder, into "
                                      "a memory-mapped cache the trainer reads. Resumes where it stopped.")
    _step_args(tok)
    tok.add_argument("--manifest", type=Path, help="default: <cache_dir>/manifest.jsonl")
    tok.add_argument("--audio-dir", type=Path, help="where mp3_path is found (default: <cache_dir>/clips)")
    tok.add_argument("--out", type=Path, help="default: <cache_dir>/tokens")
    tok.set_defaults(func=cmd_tokenize)


def _select_parser(dsub) -> None:
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
    how.add_argument("--min-tags", type=_at_least_one, help="at least this many proxy tags (default 3)")
    how.add_argument("--top", type=_at_least_one, help="instead: the N clips with the most proxy tags")
    sel.add_argument("--split", choices=("random", "mtat"), help="seeded random (default), or MTAT's by path")
    sel.add_argument("--train-size", type=_at_least_one)
    sel.add_argument("--valid-size", type=_at_least_one)
    sel.add_argument("--seed", type=int, default=1337)
    sel.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (listed) instead of stopping")
    sel.set_defaults(func=cmd_select)


def _step_args(sp: argparse.ArgumentParser) -> None:
    config_arg(sp)
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    log_args(sp, level=False)


def _setup(args, name: str):
    """The config and a logger for a dataset step (they log JSON lines under systemd-run too)."""
    from daemon.common import log as logs

    cfg = load_config_or_exit(args.config, "amapiano-train")
    logs.configure(args.log_format, "info")
    return cfg, logs.get(name)


def cmd_select(args) -> int:
    from daemon.common import exits
    from daemon.common.config import DatasetConfig

    from .select import DatasetError, select, write_manifest

    ds = load_config_or_exit(args.config, "amapiano-train").dataset if args.config else DatasetConfig()
    tags = args.tags.split(",") if args.tags is not None else ds.proxy_tags  # "" is no tags, not the default
    if args.out.is_dir() or not args.out.parent.is_dir():
        print(f"{PROG} select: --out {args.out}: " + ("is a directory; name the manifest file" if args.out.is_dir()
              else f"its directory {args.out.parent} does not exist"), file=sys.stderr)
        return exits.DATAERR
    try:
        sel = select(args.annotations, tags, min_tags=args.min_tags if args.min_tags is not None else ds.min_tags,
                     top_n=args.top if args.top is not None else ds.top_n,
                     split=args.split or ds.split, train_size=args.train_size or ds.train_size,
                     valid_size=args.valid_size or ds.valid_size, seed=args.seed, skip_bad_rows=args.skip_bad_rows)
    except DatasetError as e:
        print(f"{PROG} select: {e}", file=sys.stderr)
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
    if not sel.clips:
        print(f"{PROG} select: no clip has what was asked; nothing written (see the counts above)", file=sys.stderr)
        return exits.DATAERR
    try:
        write_manifest(args.out, sel.clips)
    except OSError as e:  # a directory that takes no files (/proc, /sys), read-only, full
        print(f"{PROG} select: --out {args.out}: cannot write ({e.strerror or e})", file=sys.stderr)
        return exits.DATAERR
    print(f"wrote {args.out}")
    return exits.OK


def cmd_tokenize(args) -> int:
    cfg, log = _setup(args, "tokenize")
    from daemon.common import exits

    from .select import DatasetError, read_manifest
    from .tokens import CacheError, Tokenizer

    try:
        manifest = read_manifest(args.manifest or cfg.manifest_file)
        result = Tokenizer(cfg, log, progress=not args.no_progress).run(
            manifest, args.audio_dir or cfg.clips_dir, args.out or cfg.tokens_dir)
    except (DatasetError, CacheError) as e:
        print(f"{PROG} tokenize: {e}", file=sys.stderr)
        return exits.DATAERR
    print(f"token cache {args.out or cfg.tokens_dir}: {result['done']} of {result['clips']} clips done, "
          f"{result['failed']} failed" + (" (see failures.jsonl)" if result["failed"] else ""))
    return exits.OK


def cmd_fetch(args) -> int:
    cfg, log = _setup(args, "fetch")
    from daemon.common import exits

    from .fetch import FetchError, check_parts, download, extract, join_parts

    ds, where = cfg.dataset, cfg.mtat_dir
    progress = not args.no_progress
    try:
        for url, md5 in ((ds.annotations_url, ds.annotations_md5), (ds.clip_info_url, ds.clip_info_md5)):
            path = download(url, where / url.rsplit("/", 1)[-1], md5, progress=progress, log=log)
            print(f"{path}: ok")
        if args.metadata_only:
            return exits.OK
        parts = check_parts(where, ds.parts, ds.part_md5, progress)
        print(f"parts ok: {', '.join(p.name for p in parts)}")
        archive = join_parts(parts, where / "mp3.zip", progress)
        n = extract(archive, where / "audio", progress)
        print(f"extracted {n} new files into {where / 'audio'}")
    except FetchError as e:  # a network or a missing part: trying again later can help
        print(f"{PROG} fetch: {e}", file=sys.stderr)
        return exits.FAILED
    return exits.OK


def cmd_copy(args) -> int:
    cfg, log = _setup(args, "copy")
    from daemon.common import exits

    from .clips import copy_clips
    from .select import DatasetError, read_manifest

    try:
        manifest = read_manifest(args.manifest or cfg.manifest_file)
    except DatasetError as e:
        print(f"{PROG} copy: {e}", file=sys.stderr)
        return exits.DATAERR
    report = copy_clips(manifest, args.source or cfg.mtat_dir / "audio", args.dest or cfg.clips_dir,
                        log, progress=not args.no_progress)
    print(f"{report['present']} of {report['clips']} clips in place ({report['copied_now']} copied now), "
          f"{len(report['skipped'])} skipped; {report['audio_hours']:.2f} h of audio")
    if report["skipped"]:
        print(f"skipped clips are listed in {(args.dest or cfg.clips_dir) / 'copy_report.json'}")
    if not report["present"]:  # nothing to train on: a wrong --source, most likely
        print(f"{PROG} copy: none of the manifest's {report['clips']} clips was found under "
              f"{args.source or cfg.mtat_dir / 'audio'} (is it the folder that holds 0/ ... f/?)", file=sys.stderr)
        return exits.DATAERR
    return exits.OK
