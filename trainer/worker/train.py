"""The training worker: resume, train, validate, checkpoint, heartbeat. Knows nothing of cost.

Read top to bottom: build the model, load the data, resume from the newest valid checkpoint,
then one optimizer step at a time until every epoch is done (exit 0). SIGUSR1, SIGTERM or
SIGINT, or the supervisor vanishing (trainer/stop.py), ask for a checkpoint at the next step
boundary and exit 75.
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daemon.common.atomic import write_json_atomic
from daemon.common.clock import Clock, iso
from daemon.common.config import Config, ConfigError, to_dict
from daemon.common import exits

from . import checkpoint
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


class Trainer:
    def __init__(self, cfg: Config, log: Any, clock: Clock | None = None, stop: StopRequest | None = None):
        self.cfg, self.log, self.clock = cfg, log, clock or Clock()
        self.stop = stop or StopRequest()
        self.beat: dict[str, Any] = {"pid": os.getpid(), "activity": "loading"}
        self.write_heartbeat()

    def write_heartbeat(self, **fields: Any) -> None:
        self.beat.update(fields, time=iso(self.clock.now()))
        write_json_atomic(self.cfg.heartbeat_file, self.beat)

    def run(self) -> int:
        cfg, log = self.cfg, self.log
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        if cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        device = pick_device(cfg)
        dtype = pick_dtype(cfg, device)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)

        base, tokenizer = load_base_model(cfg)
        train, valid = load_splits(cfg, base, tokenizer)
        model = TrainableMusicgen(base).to(device)
        del base.audio_encoder  # the codec is not needed to train on codes

        t = cfg.train
        per_step = t.batch_size * t.grad_accum_steps
        steps_per_epoch = len(train) // per_step
        if steps_per_epoch == 0:
            raise ConfigError(f"{cfg.source}: [train] batch_size * grad_accum_steps = {per_step} is more than "
                              f"the {len(train)} training clips; one optimizer step needs that many")
        total = t.epochs * steps_per_epoch
        shape = {**shape_of(base), "batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps,
                 "frames": cfg.data.frames, "train_clips": len(train)}

        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=t.lr,
                                      fused=device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, total, t.min_lr_ratio))
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        ckpt_dir = cfg.checkpoint_dir
        removed = checkpoint.clean_partial(ckpt_dir)
        if removed:
            log.warning("checkpoint.partial_removed", files=removed)
        step, best_val, last_val, last_val_step, last_ckpt = 0, None, None, None, None
        resumed = checkpoint.load_latest(ckpt_dir, log, map_location=device)
        if resumed is not None:
            marker, payload = resumed
            wrong = shape_mismatch(payload["shape"], shape)
            if wrong:
                raise ConfigError(f"{cfg.source}: checkpoint {marker.path.name} does not fit this config ("
                                  + "; ".join(wrong) + "); restore the old config or move the checkpoints aside")
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            scaler.load_state_dict(payload["scaler"])
            set_rng_state(payload["rng"])
            step, best_val = payload["step"], payload["best_val_loss"]
            last_val, last_val_step, last_ckpt = payload["val_loss"], payload["val_step"], marker
            log.info("train.resumed", step=step, checkpoint=str(marker.path), epoch=step // steps_per_epoch)
        else:
            log.info("train.started", total_steps=total, steps_per_epoch=steps_per_epoch, device=str(device),
                     dtype=str(dtype).removeprefix("torch."), train_clips=len(train), valid_clips=len(valid),
                     parameters=sum(p.numel() for p in model.parameters()))

        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops points a killed run logged past its checkpoint (or, with no checkpoint
        # yet, all of them): one curve, no doubles.
        tb = SummaryWriter(str(cfg.tensorboard_dir / "train"), purge_step=step + 1)

        def autocast():
            return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

        def validate() -> float:
            self.write_heartbeat(activity="validating")
            model.eval()
            total_loss, count = 0.0, 0
            batches = range(0, len(valid), t.batch_size)
            with torch.no_grad():
                for i, start in enumerate(batches):
                    if t.val_batches and i >= t.val_batches:
                        break
                    idx = torch.arange(start, min(start + t.batch_size, len(valid)))
                    with autocast():
                        loss = model(*valid.batch(idx, device))
                    total_loss += loss.item() * len(idx)
                    count += len(idx)
            model.train()
            return total_loss / count

        def save_checkpoint(train_loss: float | None):
            self.write_heartbeat(activity="checkpointing")
            started = time.monotonic()
            marker = checkpoint.save(ckpt_dir, step, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                "data_position": {"epoch": step // steps_per_epoch, "step_in_epoch": step % steps_per_epoch,
                                  "steps_per_epoch": steps_per_epoch},
                "shape": shape, "best_val_loss": best_val, "val_loss": last_val, "val_step": last_val_step,
                "config": to_dict(cfg),
            }, {"epoch": step // steps_per_epoch, "train_loss": train_loss, "val_loss": last_val,
                "val_step": last_val_step}, self.clock)
            pruned = checkpoint.prune(ckpt_dir, t.keep_checkpoints)
            log.info("checkpoint.saved", step=step, path=str(marker.path), bytes=marker.meta["bytes"],
                     seconds=round(time.monotonic() - started, 3), pruned=pruned or None)
            return marker

        model.train()
        window_start, window_samples, loss = time.monotonic(), 0, None
        self.write_heartbeat(activity="training", step=step, total_steps=total, epoch=step // steps_per_epoch,
                             resumed_from_step=last_ckpt.step if last_ckpt else None, best_val_loss=best_val, val_loss=last_val,
                             last_checkpoint=str(last_ckpt.path) if last_ckpt else None,
                             last_checkpoint_step=last_ckpt.step if last_ckpt else None)
        while step < total:
            if (why := self.stop.check()) is not None:
                if last_ckpt is None or last_ckpt.step != step:
                    last_ckpt = save_checkpoint(loss)
                self.write_heartbeat(activity="stopped", last_checkpoint=str(last_ckpt.path),
                                     last_checkpoint_step=step)
                log.info("train.preempted", reason=why, step=step, checkpoint=str(last_ckpt.path))
                tb.close()
                return exits.PREEMPTED

            epoch, in_epoch = divmod(step, steps_per_epoch)
            order = epoch_order(len(train), cfg.run.seed, epoch)
            step_loss = 0.0
            for idx in micro_batches(order, in_epoch, t.batch_size, t.grad_accum_steps):
                with autocast():
                    micro = model(*train.batch(idx, device)) / t.grad_accum_steps
                scaler.scale(micro).backward()
                step_loss += micro.item()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            loss = step_loss
            window_samples += per_step
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at step {step}")

            if step % t.log_every == 0 or step == total:
                elapsed = time.monotonic() - window_start
                speed = window_samples / elapsed if elapsed > 0 else None
                lr = scheduler.get_last_lr()[0]
                tb.add_scalar("train/loss", loss, step)
                tb.add_scalar("train/lr", lr, step)
                if speed:
                    tb.add_scalar("train/samples_per_s", speed, step)
                self.write_heartbeat(activity="training", step=step, epoch=step // steps_per_epoch,
                                     train_loss=loss, lr=lr, samples_per_s=speed)
                log.debug("train.step", step=step, loss=round(loss, 5), lr=lr)
                window_start, window_samples = time.monotonic(), 0
            if step % t.val_every == 0 or step == total:
                last_val, last_val_step = validate(), step
                best_val = last_val if best_val is None else min(best_val, last_val)
                tb.add_scalar("val/loss", last_val, step)
                log.info("train.validated", step=step, val_loss=round(last_val, 5), best_val_loss=round(best_val, 5))
                self.write_heartbeat(activity="training", val_loss=last_val, best_val_loss=best_val)
            asked = self.stop.take_checkpoint_request()  # SIGUSR2: a checkpoint now, then go on
            if asked or step % t.checkpoint_every == 0 or step == total:
                last_ckpt = save_checkpoint(loss)
                self.write_heartbeat(activity="training", last_checkpoint=str(last_ckpt.path),
                                     last_checkpoint_step=step)

        tb.close()
        self.write_heartbeat(activity="completed", step=step)
        log.info("train.completed", step=step, best_val_loss=best_val,
                 best_checkpoint=str(b.path) if (b := checkpoint.best(ckpt_dir)) else None)
        return exits.OK


def write_failure(path: Path | None, error: BaseException, clock: Clock | None = None) -> None:
    """torchelastic-style: tell the supervisor why we died, before we do."""
    if path is None:
        return
    import traceback

    write_json_atomic(path, {"type": type(error).__name__, "message": str(error),
                             "traceback": "".join(traceback.format_exception(error)),
                             "time": iso((clock or Clock()).now()), "pid": os.getpid()})
