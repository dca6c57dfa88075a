"""More than one process: torchrun's ranks, as the Trainer sees them.

With `[train] nproc_per_node` above 1 the supervisor starts the worker through torchrun, which
sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT for each process. `init` turns that into
a `Group` (one process, or no torchrun: a Group of 1 that changes nothing), and the Trainer
asks the Group at the few places where width matters:

- the data: every process computes the same global order and micro-batches (a pure function
  of (seed, epoch)) and takes its own contiguous slice of each micro-batch, so batch_size x
  grad_accum_steps stays the clips per optimizer step at any width and a run restarted at
  another width resumes at the same sample;
- the model: DDP (every rank the whole model, gradients averaged) or FSDP2 `fully_shard` per
  decoder layer (parameters, gradients and optimizer state sharded); gradients are only
  synchronised on the last micro-batch of a step;
- the stop: SIGUSR1/SIGTERM/SIGUSR2 may reach one rank first, so the stop and the checkpoint
  requests are all-reduced at every step boundary and every rank acts on the same step (no
  rank left waiting in a collective for one that exited);
- the checkpoint: rank 0 alone writes it, the heartbeat and TensorBoard. DDP: the ordinary .pt
  (the unwrapped module's state, so any width and a single process load it). FSDP: a sharded
  torch.distributed.checkpoint directory written by every rank into a temporary name, then
  committed by rank 0 alone after they all finished: renamed, and its marker written over a
  manifest of the shard files (daemon/common/checkpoints.py). Both in the background
  (trainer/worker/async_save.py). Every rank's RNG state is kept, so a resume at the same width
  is exact.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from daemon.common.clock import Clock
from daemon.common.config import Config, ConfigError


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them; (0, 1, 0) without torchrun."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def is_writer() -> bool:
    """Whether this process writes the heartbeat, TensorBoard, checkpoints and the failure file."""
    return env_rank()[0] == 0


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and env_rank()[1] > 1


def die_with_parent() -> None:
    """A rank dies with torchrun: when the supervisor SIGKILLs a hung group, no rank lives on
    holding the run's lock (prctl PR_SET_PDEATHSIG; Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # torchrun died before the prctl
        os._exit(1)


class NullWriter:
    """TensorBoard on ranks other than 0: one writer per run."""

    def add_scalar(self, *_: Any, **__: Any) -> None:
        pass

    def close(self) -> None:
        pass


def summary_writer(logdir: Path, purge_step: int):
    if not is_writer():
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=purge_step)


class AgreedStop:
    """A StopRequest whose answers every rank shares: one all-reduce per step boundary."""

    def __init__(self, local: Any, group: Group):
        self.local, self.group = local, group
        self._checkpoint = False

    def check(self) -> str | None:
        why = self.local.check()
        flags = torch.tensor([why is not None, self.local.checkpoint_requested], dtype=torch.int32,
                             device=self.group.comm_device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._checkpoint = bool(flags[1])
        if flags[0] and why is None:
            why = "another rank was asked to stop"
        return why

    def take_checkpoint_request(self) -> bool:
        """Agreed at the last check(): every rank checkpoints the same step."""
        if not self._checkpoint:
            return False
        self._checkpoint, self.local.checkpoint_requested = False, False
        return True

    def __getattr__(self, name: str) -> Any:  # reason, checkpoint_requested...
        return getattr(self.local, name)


class Group:
    """This process's place among torchrun's: rank, world, strategy, and what differs by them."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, strategy: str = "ddp",
                 comm_device: torch.device = torch.device("cpu"), checkpoint_group: Any = None):
        self.rank, self.world, self.local_rank, self.strategy = rank, world, local_rank, strategy
        self.comm_device = comm_device
        self.checkpoint_group = checkpoint_group  # FSDP: gloo, the background saves' own (async_save.py)

    @property
    def sharded(self) -> bool:
        """Whether checkpoints are sharded (FSDP across more than one process)."""
        return self.world > 1 and self.strategy == "fsdp"

    # -- setup ---------------------------------------------------------------------------
    def device(self, picked: torch.device) -> torch.device:
        """cuda:LOCAL_RANK for a rank on a GPU machine."""
        if self.world > 1 and picked.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return picked

    def wrap(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """DDP or FSDP around the model (built identically on every rank from the same seed);
        then each rank other than 0 its own RNG stream (dropout), rank 0 keeping the seed's."""
        if self.world == 1:
            return model
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]:
                fully_shard(layer)
            fully_shard(model)
        else:
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = next(model.parameters()).device.type == "cuda"
            model = DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None)
        if self.rank:
            torch.manual_seed(seed * 1_000_003 + self.rank)
            random.seed(seed * 1_000_003 + self.rank)
            np.random.seed((seed * 1_000_003 + self.rank) % 2**32)
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model) if self.strategy == "ddp" else model

    def sliced(self, batches: Callable[[list[torch.Tensor]], Iterator], model: torch.nn.Module):
        """A step's micro-batches, each cut to this rank's slice; gradients synchronised only on
        the step's last one (what DDP's no_sync and FSDP's set_requires_gradient_sync do)."""
        if self.world == 1:
            return batches

        def mine(indices: list[torch.Tensor]):
            for i, batch in enumerate(batches([self.slice(idx) for idx in indices])):
                self._sync(model, i == len(indices) - 1)
                yield batch
            self._sync(model, True)
        return mine

    def slice(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of one global micro-batch (sizes differ by at most one)."""
        return idx.tensor_split(self.world)[self.rank]

    def _sync(self, model: torch.nn.Module, on: bool) -> None:
        if self.strategy == "fsdp":
            model.set_requires_gradient_sync(on)
        else:
            model.require_backward_grad_sync = on

    def agreed(self, stop: Any) -> Any:
        return AgreedStop(stop, self) if self.world > 1 else stop

    # -- collectives -----------------------------------------------------------------------
    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks (the step's loss as one process would see it)."""
        if self.world == 1:
            return value
        total = value.detach().to(self.comm_device, torch.float64).clone()
        dist.all_reduce(total)  # gloo has no AVG
        return total / self.world

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def writer_first(self, fn: Callable[[], Any]) -> Any:
        """fn on rank 0, then (past a barrier) on the others: what fn moves on disk (a damaged
        checkpoint into corrupt/) is moved once, and the others find it moved. Both ranks of a
        group quarantining one checkpoint at once raced on its files (FileNotFoundError)."""
        if self.world == 1:
            return fn()
        result: Any = None
        error: BaseException | None = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as e:  # raised after the barrier, so no rank waits on it forever
                error = e
        self.barrier()
        if self.rank != 0:
            return fn()
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        """At a step boundary every rank reached (completion, an agreed stop): wait for the others,
        then take the group down, so no rank exits with gloo's threads still talking to a peer that
        has gone (a rank then aborted at exit, "terminate called without an active exception", and
        a finished run was counted as a crash and restarted)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # -- checkpoints -----------------------------------------------------------------------
    def model_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The model and optimizer part of a checkpoint payload."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(model, optimizer)
            return {"model": msd, "optimizer": osd}
        return {"model": self.unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}

    def rng_of(self, payload: dict) -> dict:
        """This rank's RNG state: its own when the width is the checkpoint's, else rank 0's (exact
        resume holds at a fixed width; at another, rank 0 still continues its stream)."""
        ranks = payload.get("rng_ranks")
        if isinstance(ranks, list) and len(ranks) == self.world:
            return ranks[self.rank]
        return payload["rng"]

    def save(self, saver: Any, directory: Path, step: int, payload: dict, meta: dict, clock: Clock | None,
             keep: int, since: float) -> None:
        """Start committing one checkpoint through `saver` (trainer/worker/async_save.py): rank 0 writes
        it and prunes (FSDP: every rank its shards, rank 0 commits); `saver.wait()` ends it."""
        from . import async_save

        if self.sharded:
            async_save.start_sharded(saver, self, directory, step, payload, meta, clock, keep, since)
        elif self.rank == 0:
            saver.start(step, payload, async_save.commit_file(directory, step, meta, clock, keep), since)

    def load_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, marker: Any, payload: dict) -> None:
        """Model and optimizer from a checkpoint of any width and either strategy."""
        from . import checkpoint, resume

        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_state_dict,
                set_state_dict,
            )

            if marker.sharded:  # resharded by torch.distributed.checkpoint to this width
                import torch.distributed.checkpoint as dcp

                msd, osd = get_state_dict(model, optimizer)
                state = {"model": msd, "optimizer": osd}
                dcp.load(state, **checkpoint.dcp_load_args(marker.path))  # its pickles refused, not run
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
            else:  # a .pt of one process or DDP: every rank read it whole, each keeps its shard
                osd = payload["optimizer"]
                if payload.get("optimizer_keys") != "fqn":
                    osd = resume.optimizer_by_name(osd, optimizer, model)
                set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=osd,
                               options=StateDictOptions(full_state_dict=True))
            return
        self.unwrap(model).load_state_dict(payload["model"])
        osd = payload["optimizer"]
        if payload.get("optimizer_keys") == "fqn":  # a sharded checkpoint, loaded whole
            osd = resume.optimizer_by_index(osd, optimizer, self.unwrap(model))
        optimizer.load_state_dict(osd)


def init(cfg: Config) -> Group:
    """The process group torchrun asked for, or a Group of one."""
    rank, world, local_rank = env_rank()
    if world == 1:
        return Group()
    t = cfg.train
    key, unit = ("batch_size", t.batch_size) if isinstance(t.batch_size, int) else ("clips_per_step", t.per_step)
    if unit % world:
        raise ConfigError(f"{cfg.source}: [train] {key} ({unit}) must divide by the {world} processes "
                          "(nproc_per_node): each takes an equal slice of every micro-batch")
    die_with_parent()
    cuda = t.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    # DCP's async_save runs its collectives from a thread while training runs its own: on one group
    # their order would differ between ranks. A gloo group of their own (async_save needs a CPU one).
    saves = dist.new_group(backend="gloo") if t.strategy == "fsdp" else None
    return Group(rank, world, local_rank, t.strategy,
                 torch.device("cuda", local_rank) if cuda else torch.device("cpu"), saves)
