"""config.toml's cross-field rules: what keys allow together, where a field's own check
(config.py, config_sections.py) sees one key alone.

A config that passes `amapiano-train config check` works at run time: a width that does not
divide the batch, a shutdown action whose command is empty, prices whose product overflows the
ledger, a liveness deadline shorter than a heartbeat can be seen, were each accepted once and
failed days later. Each rule returns its one line (section, key, why, what to do), or None.
Stdlib only, and no import of config.py: it imports this.
"""
from __future__ import annotations

import math
from typing import Any

from .config_sections import MAX_USD_PER_HOUR
from .schema import ConfigError

HOURS_PER_MONTH = 730.0  # EBS bills per GB-month of 730 hours (daemon/cost.py)
# A heartbeat's age is its file's mtime, which some filesystems keep to the second (the liveness
# rule already forgives one second of it); a deadline under two seconds is read as a hang.
HEARTBEAT_FLOOR_S = 2.0
# Before its first heartbeat the worker imports torch and builds its model: 5 s for the imports
# alone on a 2-core machine.
LOADING_FLOOR_S = 10.0
# On a stop the worker ends its step and writes its checkpoint before SIGKILL comes.
STOP_FLOOR_S = 5.0
POLLS = 2  # a deadline is checked once a poll_interval: under two polls it cannot be kept


def _dur(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


AUTO_GRAD_ACCUM = 4  # TrainConfig's default: the one value that says nothing beside batch_size = "auto"


def step_words(train: Any) -> str:
    """What a person set for the clips per optimizer step, as the messages name it."""
    return "clips_per_step" if train.batch_size == "auto" else "batch_size x grad_accum_steps"


def _width(t: Any) -> str | None:
    n = t.nproc_per_node
    if not isinstance(n, int):
        return None
    if t.batch_size != "auto" and t.batch_size % n:
        return (f"[train] batch_size ({t.batch_size}) must divide by nproc_per_node ({n}): each process takes an "
                f"equal slice of every micro-batch; make batch_size a multiple of {n}, or change nproc_per_node")
    if t.batch_size == "auto" and t.per_step % n:
        return (f"[train] clips_per_step ({t.per_step}) must divide by nproc_per_node ({n}) with batch_size = "
                f"\"auto\": each process takes an equal slice of every micro-batch; make it a multiple of {n}")
    return None


def _step(t: Any) -> str | None:
    if t.batch_size == "auto" and t.grad_accum_steps != AUTO_GRAD_ACCUM:
        return (f"[train] grad_accum_steps is chosen with batch_size = \"auto\" (the accumulation makes up "
                f"clips_per_step at the micro-batch that fits): set clips_per_step, the clips per optimizer step, "
                f"instead (got grad_accum_steps = {t.grad_accum_steps})")
    if t.batch_size != "auto" and t.clips_per_step not in (0, t.batch_size * t.grad_accum_steps):
        return (f"[train] clips_per_step ({t.clips_per_step}) must be batch_size x grad_accum_steps "
                f"({t.batch_size * t.grad_accum_steps}) or 0 with a numeric batch_size: set one or the other, or "
                "batch_size = \"auto\"")
    return None


def _train(cfg: Any) -> str | None:
    t, d = cfg.train, cfg.data
    problem = _width(t) or _step(t)
    if problem:
        return problem
    if d.source == "synthetic" and t.per_step > d.synthetic_train_clips:
        return (f"[train] {step_words(t)} ({t.per_step}) is more than [data] synthetic_train_clips "
                f"({d.synthetic_train_clips}): one optimizer step needs that many clips; lower them or raise the clips")
    if t.device == "cpu" and t.precision in ("bf16", "fp16"):
        return f"[train] precision \"{t.precision}\" needs a GPU, and [train] device is \"cpu\": use \"auto\" or \"fp32\""
    if cfg.model.tiny.hidden_size % cfg.model.tiny.num_heads:
        tiny = cfg.model.tiny
        return f"[model.tiny] hidden_size must be divisible by num_heads ({tiny.hidden_size} % {tiny.num_heads} != 0)"
    if cfg.model.source == "pretrained" and not cfg.model.pretrained:
        return "[model] pretrained must name a hub id or a directory when source = \"pretrained\""
    return None


def actions(cfg: Any) -> list[tuple[str, str]]:
    """(where, action) for every rule that can stop the instance; NO-GO stops with the budget's."""
    return [("[idle] action", cfg.idle.action), ("[budget] action", cfg.budget.action),
            ("[milestone] completion_action", cfg.milestone.completion_action)]


def _shutdown(cfg: Any) -> str | None:
    command = cfg.supervisor.poweroff_command
    if any(not word.strip() or "\0" in word for word in command):  # subprocess raises on a NUL
        return f"[supervisor] poweroff_command must be words that are not empty and hold no NUL (got {command!r})"
    for where, action in actions(cfg):
        used = " (at the cap and at a milestone NO-GO)" if where.startswith("[budget]") else ""
        if action == "poweroff" and not command:
            return (f"{where} = \"poweroff\" needs a command, and [supervisor] poweroff_command is empty{used}: "
                    "set it (e.g. [\"systemctl\", \"poweroff\"]) or choose another action")
        if action == "terminate" and not cfg.aws.s3_bucket:  # the mirror's confirmation would never come
            return (f"{where} = \"terminate\" needs [aws] s3_bucket{used}: a terminated instance takes its disk, so "
                    "it waits until the bucket holds the newest checkpoint; set s3_bucket, or use \"ec2-stop\" or "
                    "\"poweroff\"")
    s = cfg.supervisor
    if s.restart_backoff_initial > s.restart_backoff_max:
        return "[supervisor] restart_backoff_initial must not exceed restart_backoff_max"
    if s.shutdown_retry_initial > s.shutdown_retry_max:
        return (f"[supervisor] shutdown_retry_initial must not exceed shutdown_retry_max "
                f"({_dur(s.shutdown_retry_initial)} > {_dur(s.shutdown_retry_max)})")
    return None


def _money(cfg: Any) -> str | None:
    b = cfg.budget
    ebs = b.ebs_gb * b.ebs_usd_per_gb_month / HOURS_PER_MONTH  # 1e308 x 1e308 is inf: no exception
    if not math.isfinite(ebs) or ebs > MAX_USD_PER_HOUR:
        return (f"[budget] ebs_gb x ebs_usd_per_gb_month / 730 h is more than ${MAX_USD_PER_HOUR:g} an hour "
                f"(got {b.ebs_gb:g} GB at ${b.ebs_usd_per_gb_month:g}): a typo, and the ledger would overflow; "
                "write the volume's size in GB and its price per GB-month")
    if any(not 0 < x <= 1 for x in b.alert_fractions):
        return f"[budget] alert_fractions must each be in (0, 1] (got {b.alert_fractions})"
    return None


def _liveness(cfg: Any) -> str | None:
    s = cfg.supervisor
    seen = ("its heartbeat's age is read once a poll_interval from a file time that may be a second coarse; "
            "a shorter deadline kills a healthy worker as hung")
    rules = (("heartbeat_timeout", HEARTBEAT_FLOOR_S, seen), ("validation_timeout", HEARTBEAT_FLOOR_S, seen),
             ("checkpoint_timeout", HEARTBEAT_FLOOR_S, seen),
             ("loading_timeout", LOADING_FLOOR_S, "before its first heartbeat the worker imports torch and builds "
                                                  "its model; a shorter deadline kills every worker as it loads"),
             ("stop_timeout", STOP_FLOOR_S, "the worker ends its step and writes its checkpoint in it; a shorter "
                                            "one kills it mid-write at every stop"))
    for key, floor, why in rules:
        least, value = max(floor, POLLS * s.poll_interval), getattr(s, key)
        if value < least:
            polls = f" ({POLLS} x poll_interval)" if least > floor else ""
            return f"[supervisor] {key} must be at least {_dur(least)}{polls}: {why} (got {_dur(value)})"
    return None


def _lists(cfg: Any) -> str | None:
    m, ds = cfg.milestone, cfg.dataset
    if not m.prompts:
        return "[milestone] prompts must hold at least one prompt: the evaluation generates from them"
    if m.clap_model and not m.descriptions:
        return ("[milestone] descriptions must hold at least one description when clap_model is set: the CLAP "
                "score compares the audio with them (clap_model = \"\" scores with the descriptors alone)")
    if m.clap_model and not [g for g in m.genres if g.strip().lower() != "amapiano"]:
        return (f"[milestone] genres must name at least one genre besides amapiano when clap_model is set: the "
                f"CLAP score is amapiano's share among them (got {m.genres})")
    if not ds.parts:
        return "[dataset] parts must name at least one audio part"
    if ds.part_md5 and len(ds.part_md5) != len(ds.parts):  # zip() would skip the unmatched parts' checks
        return (f"[dataset] part_md5 must list one MD5 per part, in the order of parts, or none "
                f"({len(ds.part_md5)} for {len(ds.parts)} parts)")
    return None


def _people(cfg: Any) -> str | None:
    e = cfg.email
    if cfg.idle.warn_before >= cfg.idle.timeout:
        return f"[idle] warn_before must be shorter than timeout ({cfg.idle.warn_before:g}s >= {cfg.idle.timeout:g}s)"
    if e.transport in ("smtp", "ses") and not e.to:  # apprise URLs name their own
        return f"[email] to must list at least one address when transport = \"{e.transport}\""
    if any("@" not in a for a in e.to):
        return f"[email] to must hold email addresses (got {e.to})"
    if e.retry_every >= e.give_up_after:
        return (f"[email] retry_every must be shorter than give_up_after ({_dur(e.retry_every)} >= "
                f"{_dur(e.give_up_after)}): an alert that fails once would never be tried again")
    if cfg.aws.s3_prefix.startswith("/") or cfg.aws.s3_prefix.endswith("/"):
        return f"[aws] s3_prefix must not start or end with '/' (got {cfg.aws.s3_prefix!r})"
    kind, value = cfg.milestone.when
    if kind == "epoch" and value > cfg.train.epochs:  # it would never come: the run ends first
        return f"[milestone] at is epoch {value:g}, after the run's last ([train] epochs = {cfg.train.epochs})"
    return None


def check(cfg: Any, file: str) -> None:
    """Raise ConfigError with the first cross-field rule the config breaks, naming `file`."""
    for rule in (_people, _train, _shutdown, _money, _liveness, _lists):
        problem = rule(cfg)
        if problem:
            raise ConfigError(f"{file}: {problem}")
