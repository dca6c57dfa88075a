"""Precision by compute capability: a pure table, so every GPU the plan names is tested here."""
from __future__ import annotations

import pytest

from trainer.worker.precision import Precision, PrecisionError, choose

EFFICIENT, FLASH_FIRST = ("efficient",), ("flash", "efficient")


@pytest.mark.parametrize("gpu, capability, want, expect", [
    ("CPU", None, "auto", Precision("fp32", grad_scaler=False, tf32=False, attention=())),
    ("CPU", None, "fp32", Precision("fp32", grad_scaler=False, tf32=False, attention=())),
    # T4: fp16 tensor cores, no native bf16 (torch.cuda.is_bf16_supported() says True: emulation)
    ("T4", (7, 5), "auto", Precision("fp16", grad_scaler=True, tf32=False, attention=EFFICIENT)),
    ("T4", (7, 5), "fp16", Precision("fp16", grad_scaler=True, tf32=False, attention=EFFICIENT)),
    ("T4", (7, 5), "fp32", Precision("fp32", grad_scaler=False, tf32=False, attention=EFFICIENT)),
    ("V100", (7, 0), "auto", Precision("fp16", grad_scaler=True, tf32=False, attention=EFFICIENT)),
    ("A100", (8, 0), "auto", Precision("bf16", grad_scaler=False, tf32=True, attention=FLASH_FIRST)),
    ("A10G", (8, 6), "auto", Precision("bf16", grad_scaler=False, tf32=True, attention=FLASH_FIRST)),
    ("L4", (8, 9), "auto", Precision("bf16", grad_scaler=False, tf32=True, attention=FLASH_FIRST)),
    ("H100", (9, 0), "auto", Precision("bf16", grad_scaler=False, tf32=True, attention=FLASH_FIRST)),
    ("H100", (9, 0), "fp16", Precision("fp16", grad_scaler=True, tf32=True, attention=FLASH_FIRST)),
    ("H100", (9, 0), "fp32", Precision("fp32", grad_scaler=False, tf32=True, attention=FLASH_FIRST)),
    ("A100", (8, 0), "bf16", Precision("bf16", grad_scaler=False, tf32=True, attention=FLASH_FIRST)),
])
def test_precision_table(gpu, capability, want, expect):
    assert choose(capability, want) == expect, gpu


@pytest.mark.parametrize("capability, want, says", [
    ((7, 5), "bf16", "no native bf16"),
    (None, "bf16", "needs a GPU"),
    (None, "fp16", "needs a GPU"),
])
def test_a_precision_the_device_cannot_run_is_refused_with_what_to_set(capability, want, says):
    with pytest.raises(PrecisionError, match=says) as e:
        choose(capability, want)
    assert "\"auto\"" in str(e.value) and "\n" not in str(e.value)


def test_the_worker_never_asks_torch_whether_bf16_is_supported(monkeypatch, tmp_path):
    """The question torch answers True on a T4: the worker's choice must not depend on it."""
    import torch
    from conftest import write_config

    from daemon.common.config import load_config
    from trainer.worker.train import pick_precision

    def refuse(*_a, **_k):
        raise AssertionError("torch.cuda.is_bf16_supported() was called")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", refuse)
    assert pick_precision(load_config(write_config(tmp_path)), torch.device("cpu")).dtype == "fp32"
