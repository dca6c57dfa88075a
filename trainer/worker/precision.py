"""Which number format and attention kernel a GPU trains in: a pure function of its compute
capability and the config, so the table is tested without the GPUs.

Never `torch.cuda.is_bf16_supported()`: in current torch it answers True on a T4 (compute
capability 7.5) by counting emulation, and emulated bf16 on a T4 is slower than fp32 and has
no tensor cores. Native bf16 starts at Ampere (8.0). Below that the tensor cores take fp16, and
fp16's narrow range needs the grad scaler.

    capability   GPUs                 auto precision       TF32   attention (SDPA)
    none (CPU)   -                    fp32                 -      torch's choice
    7.x          V100 7.0, T4 7.5     fp16 + grad scaler   no     memory-efficient
    8.0, 8.6     A100, A10G           bf16                 yes    flash, memory-efficient
    8.9, 9.0     L4, L40S, H100/H200  bf16                 yes    flash, memory-efficient
"""
from __future__ import annotations

from dataclasses import dataclass

Capability = tuple[int, int]

NATIVE_BF16 = (8, 0)   # Ampere: bf16 tensor cores
FLASH = (8, 0)         # torch's flash-attention kernels need sm80+
TENSOR_CORES = (7, 0)  # Volta: fp16 tensor cores; the memory-efficient kernel runs from sm50 on


class PrecisionError(ValueError):
    """The configured precision cannot run on this device; the text says what to set instead."""


@dataclass(frozen=True)
class Precision:
    dtype: str                   # "fp32" | "fp16" | "bf16": what autocast computes in
    grad_scaler: bool            # fp16 only: loss scaling against underflowing gradients
    tf32: bool                   # fp32 matmuls on TF32 tensor cores (Ampere and later)
    attention: tuple[str, ...]   # SDPA backends allowed, in order; () = torch's choice (CPU)

    @property
    def autocast(self) -> bool:
        return self.dtype != "fp32"


def choose(capability: Capability | None, want: str = "auto") -> Precision:
    """Precision for a device of this compute capability (None: the CPU) and `[train] precision`."""
    if capability is None:
        if want in ("bf16", "fp16"):
            raise PrecisionError(f"[train] precision \"{want}\" needs a GPU; use \"auto\" or \"fp32\"")
        return Precision("fp32", grad_scaler=False, tf32=False, attention=())
    native_bf16 = capability >= NATIVE_BF16
    if want == "bf16" and not native_bf16:
        raise PrecisionError(f"[train] precision \"bf16\": this GPU (compute capability {capability[0]}.{capability[1]}) "
                             "has no native bf16 (it would be emulated, slowly); use \"auto\" (fp16 with a grad "
                             "scaler) or \"fp16\"")
    dtype = ("bf16" if native_bf16 else "fp16") if want == "auto" else want
    attention = ("flash", "efficient") if capability >= FLASH else ("efficient",)
    return Precision(dtype, grad_scaler=dtype == "fp16", tf32=native_bf16, attention=attention)


def capability_of(device) -> Capability | None:
    """The compute capability of a torch device; None for the CPU."""
    if device.type != "cuda":
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def apply(p: Precision) -> None:
    """Process-wide switches that go with a precision (TF32 matmuls and convolutions)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = p.tf32
    torch.backends.cudnn.allow_tf32 = p.tf32


def torch_dtype(p: Precision):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p.dtype]


def apply_attention_backends(p: Precision) -> None:
    """Choose the SDPA kernels process-wide, not with the `sdpa_kernel` context manager: activation
    checkpointing recomputes the forward during backward, outside any context around the forward,
    and a recompute on another kernel (flash's logsumexp vs the efficient kernel's) fails
    torch.utils.checkpoint's metadata check. Measured on an H100: it did, at 8 x 1,500 positions.
    The math kernel stays on as the last resort, so an odd shape is slow rather than an error."""
    import torch

    if not p.attention or not torch.cuda.is_available():
        return
    torch.backends.cuda.enable_flash_sdp("flash" in p.attention)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in p.attention)
    torch.backends.cuda.enable_math_sdp(True)
