"""The training worker: resume, train, validate, checkpoint, heartbeat. Knows nothing of cost.

`Trainer.run` reads top to bottom: set up (seeds, device, model, data, optimizer), resume from
the newest valid checkpoint, then one optimizer step at a time, validating and checkpointing on
their intervals, until every epoch is done (exit 0). SIGUSR1, SIGTERM or SIGINT, or the
supervisor vanishing (trainer/worker/stop.py), ask for a checkpoint at the next step boundary
and exit 75; SIGUSR2 asks for a checkpoint and goes on.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daemon.common import exits
from daemon.common.atomic import write_json_atomic
from daemon.common.clock import Clock, iso
from daemon.common.config import Config, ConfigError, to_dict

from . import checkpoint
from .checkpoint import CheckpointError, Marker
from .data import epoch_order, load_splits, micro_batches
from .model import TrainableMusicgen, load_base_model, shape_of
from .stop import StopRequest


def pick_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: [train] device is \"cuda\" but torch sees no CUDA device")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def pick_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """Mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler); fp32 on CPU."""
    want = cfg.train.precision
    if device.type == "cpu":
        if want in ("bf16", "fp16"):
            raise ConfigError(f"{cfg.source}: [train] precision \"{want}\" needs a GPU; use \"auto\" or \"fp32\"")
        return torch.float32
    if want == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[want]


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up, then cosine decay to min_ratio of the peak."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])


def shape_mismatch(saved: dict, current: dict) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r} != config {v!r}" for k, v in current.items() if saved.get(k) != v]


def data_position(step: int, steps_per_epoch: int) -> dict:
    """Where in the data order an optimizer step starts: a function of the step alone."""
    epoch, in_epoch = divmod(step, steps_per_epoch)
    return {"epoch": epoch, "step_in_epoch": in_epoch, "steps_per_epoch": steps_per_epoch}


def check_data_position(path: Path, saved: Any, step: int, steps_per_epoch: int) -> None:
    """A resumed run must start at the sample the checkpoint stopped at; CheckpointError if not."""
    want = data_position(step, steps_per_epoch)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: field data_position is missing or not a table (got {saved!r})")
    for key, value in want.items():
        if saved.get(key) != value:
            raise CheckpointError(f"{path}: field data_position.{key} is {saved.get(key)!r}, but step {step} at "
                                  f"{steps_per_epoch} steps per epoch gives {value}; the data order would not "
                                  "resume where it stopped (restore the old config or move the checkpoints aside)")


@dataclass
class Progress:
    """Where training stands: what a checkpoint restores beside the tensors."""
    step: int = 0
    best_val: float | None = None
    last_val: float | None = None
    last_val_step: int | None = None
    loss: float | None = None            # the last optimizer step's training loss
    last_ckpt: Marker | None = None
    resumed_from: int | None = None


class Trainer:
    def __init__(self, cfg: Config, log: Any, clock: Clock | None = None, stop: StopRequest | None = None):
        self.cfg, self.log, self.clock = cfg, log, clock or Clock()
        self.t = cfg.train
        self.stop = stop or StopRequest()
        self.p = Progress()
        self.steps_per_epoch: int | None = None  # known once the data is loaded
        self.beat: dict[str, Any] = {"pid": os.getpid()}
        self.heartbeat("loading")

    def heartbeat(self, activity: str, **fields: Any) -> None:
        """Every heartbeat write: the activity, where training stands (once known), this moment's figures."""
        if self.steps_per_epoch is not None:
            p, last = self.p, self.p.last_ckpt
            fields = {"step": p.step, "epoch": p.step // self.steps_per_epoch, "best_val_loss": p.best_val,
                      "val_loss": p.last_val, "last_checkpoint": str(last.path) if last else None,
                      "last_checkpoint_step": last.step if last else None, **fields}
        self.beat.update(fields, activity=activity, time=iso(self.clock.now()))
        write_json_atomic(self.cfg.heartbeat_file, self.beat)

    def run(self) -> int:
        self.setup()
        self.resume()
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops points a killed run logged past its checkpoint (or, with no checkpoint
        # yet, all of them): one curve, no doubles.
        self.tb = SummaryWriter(str(self.cfg.tensorboard_dir / "train"), purge_step=self.p.step + 1)
        self.model.train()
        self.window = (time.monotonic(), 0)  # (since, samples): the throughput window
        self.heartbeat("training", total_steps=self.total, resumed_from_step=self.p.resumed_from)
        try:
            while self.p.step < self.total:
                if (why := self.stop.check()) is not None:
                    return self.preempt(why)
                self.train_step()
                if self.due(self.t.log_every):
                    self.report()
                if self.due(self.t.val_every):
                    self.validate()
                if self.stop.take_checkpoint_request() or self.due(self.t.checkpoint_every):
                    self.save_checkpoint()  # SIGUSR2 above: a checkpoint now, then go on
        finally:
            self.tb.close()
        self.heartbeat("completed")
        best = checkpoint.best(self.cfg.checkpoint_dir)
        self.log.info("train.completed", step=self.p.step, best_val_loss=self.p.best_val,
                      best_checkpoint=str(best.path) if best else None)
        return exits.OK

    def setup(self) -> None:
        """Seeds, device, model, data and optimizer: everything a checkpoint's tensors load into."""
        cfg, t = self.cfg, self.t
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        if t.cpu_threads:
            torch.set_num_threads(t.cpu_threads)
        self.device = pick_device(cfg)
        self.dtype = pick_dtype(cfg, self.device)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)

        base, tokenizer = load_base_model(cfg)
        self.train_split, self.valid_split = load_splits(cfg, base, tokenizer)
        self.model = TrainableMusicgen(base).to(self.device)
        del base.audio_encoder  # the codec is not needed to train on codes

        self.per_step = t.batch_size * t.grad_accum_steps
        n = len(self.train_split)
        if n // self.per_step == 0:
            raise ConfigError(f"{cfg.source}: [train] batch_size * grad_accum_steps = {self.per_step} is more than "
                              f"the {n} training clips; one optimizer step needs that many")
        self.total = t.epochs * (n // self.per_step)
        self.shape = {**shape_of(base), "batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps,
                      "frames": cfg.data.frames, "train_clips": n}

        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=t.lr,
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.warmup_steps, self.total, t.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.steps_per_epoch = n // self.per_step

    def resume(self) -> None:
        """Load the newest valid checkpoint into what setup built, or log a fresh start."""
        cfg, log, spe = self.cfg, self.log, self.steps_per_epoch
        removed = checkpoint.clean_partial(cfg.checkpoint_dir)
        if removed:
            log.warning("checkpoint.partial_removed", files=removed)
        resumed = checkpoint.load_latest(cfg.checkpoint_dir, log, map_location=self.device)
        if resumed is None:
            log.info("train.started", total_steps=self.total, steps_per_epoch=spe, device=str(self.device),
                     dtype=str(self.dtype).removeprefix("torch."), train_clips=len(self.train_split),
                     valid_clips=len(self.valid_split), parameters=sum(p.numel() for p in self.model.parameters()))
            return
        marker, payload = resumed
        wrong = shape_mismatch(payload["shape"], self.shape)
        if wrong:
            raise ConfigError(f"{cfg.source}: checkpoint {marker.path.name} does not fit this config ("
                              + "; ".join(wrong) + "); restore the old config or move the checkpoints aside")
        check_data_position(marker.path, payload.get("data_position"), payload["step"], spe)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        self.p = Progress(step=payload["step"], best_val=payload["best_val_loss"], last_val=payload["val_loss"],
                          last_val_step=payload["val_step"], last_ckpt=marker, resumed_from=marker.step)
        log.info("train.resumed", step=self.p.step, checkpoint=str(marker.path), epoch=self.p.step // spe)

    def due(self, every: int) -> bool:
        return self.p.step % every == 0 or self.p.step == self.total

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def train_step(self) -> None:
        """One optimizer step over grad_accum_steps micro-batches, at the data position of the step."""
        t, p = self.t, self.p
        epoch, in_epoch = divmod(p.step, self.steps_per_epoch)
        order = epoch_order(len(self.train_split), self.cfg.run.seed, epoch)
        loss = 0.0
        for idx in micro_batches(order, in_epoch, t.batch_size, t.grad_accum_steps):
            with self.autocast():
                micro = self.model(*self.train_split.batch(idx, self.device)) / t.grad_accum_steps
            self.scaler.scale(micro).backward()
            loss += micro.item()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        p.step, p.loss = p.step + 1, loss
        self.window = (self.window[0], self.window[1] + self.per_step)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {p.step}")

    def report(self) -> None:
        """Loss, learning rate and throughput since the last report: TensorBoard, heartbeat, log."""
        p, (since, samples) = self.p, self.window
        elapsed = time.monotonic() - since
        speed = samples / elapsed if elapsed > 0 else None
        lr = self.scheduler.get_last_lr()[0]
        self.tb.add_scalar("train/loss", p.loss, p.step)
        self.tb.add_scalar("train/lr", lr, p.step)
        if speed:
            self.tb.add_scalar("train/samples_per_s", speed, p.step)
        self.heartbeat("training", train_loss=p.loss, lr=lr, samples_per_s=speed)
        self.log.debug("train.step", step=p.step, loss=round(p.loss, 5), lr=lr)
        self.window = (time.monotonic(), 0)

    def validate(self) -> None:
        """Mean loss over the valid split (the first val_batches batches when set)."""
        self.heartbeat("validating")
        t, valid, p = self.t, self.valid_split, self.p
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i, start in enumerate(range(0, len(valid), t.batch_size)):
                if t.val_batches and i >= t.val_batches:
                    break
                idx = torch.arange(start, min(start + t.batch_size, len(valid)))
                with self.autocast():
                    loss = self.model(*valid.batch(idx, self.device))
                total += loss.item() * len(idx)
                count += len(idx)
        self.model.train()
        p.last_val, p.last_val_step = total / count, p.step
        p.best_val = p.last_val if p.best_val is None else min(p.best_val, p.last_val)
        self.tb.add_scalar("val/loss", p.last_val, p.step)
        self.log.info("train.validated", step=p.step, val_loss=round(p.last_val, 5), best_val_loss=round(p.best_val, 5))
        self.heartbeat("training")

    def save_checkpoint(self, then: str = "training") -> None:
        """Commit a checkpoint of this step and prune the old ones."""
        self.heartbeat("checkpointing")
        p, started = self.p, time.monotonic()
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                   "data_position": data_position(p.step, self.steps_per_epoch), "shape": self.shape,
                   "best_val_loss": p.best_val, "val_loss": p.last_val, "val_step": p.last_val_step,
                   "config": to_dict(self.cfg)}
        meta = {"epoch": p.step // self.steps_per_epoch, "train_loss": p.loss, "val_loss": p.last_val,
                "val_step": p.last_val_step}
        p.last_ckpt = checkpoint.save(self.cfg.checkpoint_dir, p.step, payload, meta, self.clock)
        pruned = checkpoint.prune(self.cfg.checkpoint_dir, self.t.keep_checkpoints)
        self.log.info("checkpoint.saved", step=p.step, path=str(p.last_ckpt.path), bytes=p.last_ckpt.meta["bytes"],
                      seconds=round(time.monotonic() - started, 3), pruned=pruned or None)
        self.heartbeat(then)

    def preempt(self, why: str) -> int:
        """Asked to stop: make sure this step is checkpointed, say so, exit 75."""
        p = self.p
        if p.last_ckpt is None or p.last_ckpt.step != p.step:
            self.save_checkpoint(then="stopped")
        else:
            self.heartbeat("stopped")
        self.log.info("train.preempted", reason=why, step=p.step, checkpoint=str(p.last_ckpt.path))
        return exits.PREEMPTED


def write_failure(path: Path | None, error: BaseException, clock: Clock | None = None) -> None:
    """torchelastic-style: tell the supervisor why we died, before we do."""
    if path is None:
        return
    import traceback

    write_json_atomic(path, {"type": type(error).__name__, "message": str(error),
                             "traceback": "".join(traceback.format_exception(error)),
                             "time": iso((clock or Clock()).now()), "pid": os.getpid()})
