"""The training worker: resume, train, validate, checkpoint, heartbeat. Knows nothing of cost.

`Trainer.run` reads top to bottom: set up (seeds, device, model, data, optimizer), resume from
the newest valid checkpoint, then one optimizer step at a time, validating and checkpointing on
their intervals, until every epoch is done (exit 0). A checkpoint stops the loop only for a copy
of the step's state; it is written in the background (async_save.py), and the end of training
or a stop waits for it to commit. SIGUSR1, SIGTERM or SIGINT, or the supervisor vanishing
(trainer/worker/stop.py), ask for a checkpoint at the next step boundary and exit 75; SIGUSR2
asks for a checkpoint and goes on.

The GPU side: precision and attention kernels by compute capability (precision.py), gradient
checkpointing where the memory model says the micro-batch does not fit (memory.py), and a CUDA
out-of-memory error, at the first step or later, answered by halving the micro-batch and doubling
the accumulation (the clips per step, hence the data order, stay the same) and going on; in a
process group, by all ranks together through a restart (backoff.py). Only an OOM at the smallest
micro-batch ends the worker, as DoesNotFit, which the restart policy does not retry.
The loss stays on the device between log intervals: no per-micro-batch sync.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import time
from typing import Any

import numpy as np
import torch

from daemon.common import exits
from daemon.common.atomic import write_json_atomic
from daemon.common.clock import Clock, iso
from daemon.common.config import Config, ConfigError, to_dict

from . import async_save, backoff, checkpoint, distributed, memory, precision
from .data import DeviceBatches, epoch_order, load_splits, micro_batches
from .model import TrainableMusicgen, arch_of, load_base_model, shape_of
from .resume import (Progress, check_data_position, data_position, rng_state,  # noqa: F401 - re-exported
                     set_rng_state, shape_key, shape_mismatch)
from .setup import (TEST_OOM_ABOVE, DoesNotFit, lr_lambda, pick_device, pick_dtype,  # noqa: F401
                    pick_precision, plan_step, test_oom_hook)
from .stop import StopRequest

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
        if distributed.is_writer():  # rank 0 speaks for the group
            write_json_atomic(self.cfg.heartbeat_file, self.beat)

    def run(self) -> int:
        self.setup()
        self.resume()
        # purge_step drops points a killed run logged past its checkpoint (or, with no checkpoint
        # yet, all of them): one curve, no doubles.
        self.tb = distributed.summary_writer(self.cfg.tensorboard_dir / "train", purge_step=self.p.step + 1)
        self.model.train()
        self.window = (time.monotonic(), 0)  # (since, samples): the throughput window
        self.heartbeat("training", total_steps=self.total, resumed_from_step=self.p.resumed_from, **self.layout_fields())
        try:
            while self.p.step < self.total:
                if (why := self.stop.check()) is not None:
                    return self.preempt(why)
                if (done := self.saver.poll()) is not None:  # written in the background since
                    self.committed(done)
                self.train_step()
                if self.due(self.t.log_every):
                    self.report()
                if self.due(self.t.val_every):
                    self.validate()
                if self.stop.take_checkpoint_request() or self.due(self.t.checkpoint_every):
                    self.save_checkpoint()  # SIGUSR2 above: a checkpoint now, then go on
            self.heartbeat("checkpointing")
            self.committed(self.saver.wait())  # the last step's, before anyone is told it is done
        finally:
            self.tb.close()
        self.dist.close()
        self.heartbeat("completed")
        best = checkpoint.best(self.cfg.checkpoint_dir)
        self.log.info("train.completed", step=self.p.step, best_val_loss=self.p.best_val,
                      best_checkpoint=str(best.path) if best else None)
        return exits.OK

    def setup(self, base: Any = None, splits: tuple | None = None) -> None:
        """Seeds, device, model, data and optimizer: everything a checkpoint's tensors load into.
        (`base` and `splits` replace the configured model and data: the benchmarks' random ones.)"""
        cfg, t = self.cfg, self.t
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        if t.cpu_threads:
            torch.set_num_threads(t.cpu_threads)
        self.dist = distributed.init(cfg)  # one process unless torchrun started this one
        self.device = self.dist.device(pick_device(cfg))
        self.saver, self.saved_step = async_save.Saver(self.log, self.device), None
        self.precision = pick_precision(cfg, self.device)
        precision.apply(self.precision)
        self.dtype = precision.torch_dtype(self.precision)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)

        if base is None:
            base, tokenizer = load_base_model(cfg)
        self.train_split, self.valid_split = splits or load_splits(cfg, base, tokenizer)
        n = len(self.train_split)
        step = plan_step(cfg, arch_of(base), self.precision.dtype, self.device, self.dist, n, self.log)
        self.per_step, self.micro, self.oom_backoffs = step.per_step, step.micro, step.oom_backoffs
        self.layout, self.checkpointing = step.layout, step.checkpointing

        self.model = TrainableMusicgen(base).to(self.device)
        del base.audio_encoder  # the codec is not needed to train on codes
        self.model.prepare(self.checkpointing)
        if step.compile:
            self.model.compile()  # in place: the state_dict keeps its keys
        self.batches = DeviceBatches(self.train_split, self.device)
        self.model = self.dist.wrap(self.model, cfg.run.seed)  # DDP or FSDP with more than one process
        self.batches, self.stop = self.dist.sliced(self.batches, self.model), self.dist.agreed(self.stop)
        precision.apply_attention_backends(self.precision)  # process-wide: the checkpointed recompute too
        self.attention = contextlib.nullcontext
        self.oom_hook = test_oom_hook(os.environ.get(TEST_OOM_ABOVE), self.log)

        self.total = t.epochs * (n // self.per_step)
        self.shape = {**shape_of(base), "clips_per_step": self.per_step, "frames": cfg.data.frames, "train_clips": n}

        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=t.lr,
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.warmup_steps, self.total, t.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.grad_scaler)
        self.loss_sum: torch.Tensor | None = None  # the last step's loss, left on the device
        self.steps_per_epoch = n // self.per_step

    def layout_fields(self) -> dict:
        """How the step is cut and computed: for the heartbeat (the supervisor copies it to state.json)."""
        return {"micro_batch": self.micro, "grad_accum": self.per_step // self.micro, "oom_backoffs": self.oom_backoffs,
                "precision": self.precision.dtype, "gradient_checkpointing": self.checkpointing}

    def resume(self) -> None:
        """Load the newest valid checkpoint into what setup built, or log a fresh start."""
        cfg, log, spe = self.cfg, self.log, self.steps_per_epoch
        if removed := (checkpoint.clean_partial(cfg.checkpoint_dir) if distributed.is_writer() else []):
            log.warning("checkpoint.partial_removed", files=removed)
        damaged: list[int] = []
        ask_s3 = bool(cfg.aws.s3_bucket) and self.dist.world == 1  # the bucket may hold damaged ones intact
        try:
            resumed = self.dist.writer_first(lambda: checkpoint.load_latest(  # rank 0 quarantines, once
                cfg.checkpoint_dir, log, map_location=self.device, full=not self.dist.sharded, quarantined=damaged))
        except checkpoint.CheckpointError:
            if not (damaged and ask_s3):
                raise
        if damaged and ask_s3:
            raise checkpoint.CheckpointsDamaged(f"checkpoints {damaged} damaged on disk (in corrupt/): exiting so "
                                                f"that the supervisor brings newer ones back from S3 first")
        if resumed is None:
            log.info("train.started", total_steps=self.total, steps_per_epoch=spe, device=str(self.device),
                     dtype=self.precision.dtype, train_clips=len(self.train_split), valid_clips=len(self.valid_split),
                     parameters=sum(p.numel() for p in self.model.parameters()), **self.layout_fields(),
                     estimated_gpu_gib=round(self.layout.estimate.gpu_total() / memory.GIB, 1))
            return
        marker, payload = resumed
        wrong = shape_mismatch(shape_key(payload["shape"]), self.shape)
        if wrong:
            raise ConfigError(f"{cfg.source}: checkpoint {marker.path.name} does not fit this config ("
                              + "; ".join(wrong) + "); restore the old config or move the checkpoints aside")
        check_data_position(marker.path, payload.get("data_position"), payload["step"], spe)
        self.dist.load_state(self.model, self.optimizer, marker, payload)
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(self.dist.rng_of(payload))
        saved_micro = payload.get("micro_batch")
        if isinstance(saved_micro, int) and 0 < saved_micro < self.micro and self.per_step % saved_micro == 0 \
                and payload.get("oom_backoffs"):  # not a smaller GPU's "auto": a back-off, whose OOM would come again
            self.micro = saved_micro
        self.oom_backoffs = max(self.oom_backoffs, int(payload.get("oom_backoffs") or 0))  # or a group's record
        self.p = Progress(step=payload["step"], best_val=payload["best_val_loss"], last_val=payload["val_loss"],
                          last_val_step=payload["val_step"], last_ckpt=marker, resumed_from=marker.step)
        self.saved_step = marker.step
        log.info("train.resumed", step=self.p.step, checkpoint=str(marker.path), epoch=self.p.step // spe,
                 micro_batch=self.micro, grad_accum=self.per_step // self.micro)

    def due(self, every: int) -> bool:
        return self.p.step % every == 0 or self.p.step == self.total

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.precision.autocast)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.oom_hook:
            self.oom_hook(len(batch[0]), self.p.step, self.dist.rank)
        with self.attention(), self.autocast():
            return self.model(*batch)

    def train_step(self) -> None:
        """One optimizer step; on CUDA OOM, the same step again at half the micro-batch."""
        self.backing_off(self._train_step, "training")

    def backing_off(self, fn: Any, where: str) -> Any:
        """fn(), again at half the micro-batch after each CUDA out-of-memory error."""
        while True:
            try:
                return fn()
            except torch.OutOfMemoryError as e:
                error = str(e).strip().splitlines()[0] if str(e).strip() else "CUDA out of memory"
            # Out of the except block: the traceback (and the activations its frames hold) is gone.
            self.back_off(error, where)

    def _train_step(self) -> None:
        """One optimizer step over the step's clips, micro-batch by micro-batch, at its data position."""
        t, p = self.t, self.p
        epoch, in_epoch = divmod(p.step, self.steps_per_epoch)
        order = epoch_order(len(self.train_split), self.cfg.run.seed, epoch)
        accum = self.per_step // self.micro
        loss = torch.zeros((), device=self.device)
        for batch in self.batches(micro_batches(order, in_epoch, self.micro, accum)):
            micro = self.loss(batch) / accum
            self.scaler.scale(micro).backward()
            loss += micro.detach()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        p.step, p.loss, self.loss_sum = p.step + 1, None, loss
        self.window = (self.window[0], self.window[1] + self.per_step)

    def back_off(self, error: str, where: str) -> None:
        """Halve the micro-batch after a CUDA OOM (the accumulation doubles), or raise DoesNotFit at 1."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler._per_optimizer_states.clear()  # a step cut short after unscale_ must unscale again
        smaller = backoff.next_micro(self.cfg.run.state_dir, self.dist, self.per_step, self.micro, self.p.step,
                                     self.oom_backoffs, error, where)  # in a group: raises, and the group restarts
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        old, self.micro = self.micro, smaller
        self.oom_backoffs += 1
        self.log.warning("train.oom_backoff", step=self.p.step, during=where, error=error, micro_batch_from=old,
                         micro_batch=self.micro, grad_accum=self.per_step // self.micro, oom_backoffs=self.oom_backoffs)
        self.heartbeat("training", **self.layout_fields())

    def step_loss(self) -> float | None:
        """The last step's loss, read from the device (a sync: once per log interval or checkpoint)."""
        if self.p.loss is None and self.loss_sum is not None:
            self.p.loss = self.dist.mean(self.loss_sum).item()
            if not math.isfinite(self.p.loss):
                raise FloatingPointError(f"training loss is {self.p.loss} at step {self.p.step}")
        return self.p.loss

    def report(self) -> None:
        """Loss, learning rate and throughput since the last report: TensorBoard, heartbeat, log."""
        p, (since, samples) = self.p, self.window
        self.step_loss()
        elapsed = time.monotonic() - since
        speed = samples / elapsed if elapsed > 0 else None
        lr = self.scheduler.get_last_lr()[0]
        self.tb.add_scalar("train/loss", p.loss, p.step)
        self.tb.add_scalar("train/lr", lr, p.step)
        if speed:
            self.tb.add_scalar("train/samples_per_s", speed, p.step)
        self.heartbeat("training", train_loss=p.loss, lr=lr, samples_per_s=speed, **self.layout_fields())
        self.log.debug("train.step", step=p.step, loss=round(p.loss, 5), lr=lr)
        self.window = (time.monotonic(), 0)

    def validate(self) -> None:
        """Mean loss over the valid split (its first val_batches x eval_batch clips when set)."""
        self.heartbeat("validating")
        t, valid, p = self.t, self.valid_split, self.p
        clips = len(valid) if not t.val_batches else min(len(valid), t.val_batches * t.eval_batch)
        self.model.eval()
        total = self.backing_off(lambda: self._validate(clips), "validating")
        self.model.train()
        p.last_val, p.last_val_step = total / clips, p.step
        p.best_val = p.last_val if p.best_val is None else min(p.best_val, p.last_val)
        self.tb.add_scalar("val/loss", p.last_val, p.step)
        self.log.info("train.validated", step=p.step, val_loss=round(p.last_val, 5), best_val_loss=round(p.best_val, 5))
        self.heartbeat("training")

    def _validate(self, clips: int) -> float:
        """The summed loss; each rank takes its slice of every micro-batch (a rank whose slice is
        empty runs one clip at weight 0: FSDP's forward is collective)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for start in range(0, clips, self.micro):
                idx = torch.arange(start, min(start + self.micro, clips))
                mine = self.dist.slice(idx)
                loss = self.loss(self.valid_split.batch(mine if len(mine) else idx[:1], self.device))
                total += loss.double() * len(mine)
        return (self.dist.mean(total) * self.dist.world).item()

    def save_checkpoint(self, then: str = "training", wait: bool = False) -> None:
        """Checkpoint this step: the loop waits for the save before (one at a time) and the copy of
        this step's state; the write commits in the background (async_save.py), or before return."""
        self.heartbeat("checkpointing")
        p, since = self.p, time.monotonic()
        self.committed(self.saver.wait())
        self.step_loss()
        payload = {**self.dist.model_state(self.model, self.optimizer), "rng_ranks": self.dist.gather(rng_state()),
                   "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                   "data_position": data_position(p.step, self.steps_per_epoch), "shape": self.shape,
                   "best_val_loss": p.best_val, "val_loss": p.last_val, "val_step": p.last_val_step,
                   "micro_batch": self.micro, "oom_backoffs": self.oom_backoffs, "config": to_dict(self.cfg)}
        meta = {"epoch": p.step // self.steps_per_epoch, "train_loss": p.loss, "val_loss": p.last_val,
                "val_step": p.last_val_step}
        self.dist.save(self.saver, self.cfg.checkpoint_dir, p.step, payload, meta, self.clock,
                       self.t.keep_checkpoints, since)
        self.saved_step = p.step  # the same on every rank: what a stop decides on
        if wait:
            self.committed(self.saver.wait())
        self.heartbeat(then)

    def committed(self, done: async_save.Committed | None) -> None:
        """A save that has ended: the heartbeat's last checkpoint and longest write, and the log."""
        if done is not None and done.marker is not None:
            self.p.last_ckpt = done.marker
            self.beat["checkpoint_write_s"] = round(max(self.beat.get("checkpoint_write_s", 0), done.write_s), 3)
            done.log(self.log)

    def preempt(self, why: str) -> int:
        """Asked to stop: the save in flight commits, this step is checkpointed, exit 75."""
        self.heartbeat("checkpointing")
        self.committed(self.saver.wait())
        if self.saved_step != self.p.step:
            self.save_checkpoint(then="stopped", wait=True)
        else:
            self.heartbeat("stopped")
        last = self.p.last_ckpt  # None on the ranks that commit nothing
        self.log.info("train.preempted", reason=why, step=self.p.step, checkpoint=str(last.path) if last else None)
        self.dist.close()  # every rank agreed on this step
        return exits.PREEMPTED
