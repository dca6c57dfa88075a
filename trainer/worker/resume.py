"""What a checkpoint restores beside the tensors, and the checks that make a resume exact: every
RNG, the shape-defining config, the data position (epoch and step in epoch, recomputed and
compared), where training stands (Progress), and the optimizer's state keyed by index (a .pt) or
by parameter name (a sharded checkpoint)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, Marker


def shape_key(shape: dict) -> dict:
    """A checkpoint's shape, as this version compares it: the clips per optimizer step, not how they
    are cut into micro-batches (older checkpoints recorded batch_size and grad_accum_steps)."""
    shape = dict(shape)
    if "clips_per_step" not in shape and "batch_size" in shape and "grad_accum_steps" in shape:
        shape["clips_per_step"] = shape["batch_size"] * shape["grad_accum_steps"]
    shape.pop("batch_size", None)
    shape.pop("grad_accum_steps", None)
    return shape


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
    loss: float | None = None            # the last optimizer step's training loss (read at log intervals)
    last_ckpt: Marker | None = None
    resumed_from: int | None = None


def _param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The optimizer's parameters, in its own order, by their names in the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_by_index(osd: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """A name-keyed optimizer state (torch.distributed.checkpoint's) as optimizer.load_state_dict takes it."""
    index = {n: i for i, n in enumerate(_param_names(optimizer, model))}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


def optimizer_by_name(osd: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    names = _param_names(optimizer, model)
    return {"state": {names[i]: s for i, s in osd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}
