"""`amapiano-train plan`: before anyone pays, what each GPU would do with this config and data.

Per GPU: the precision (precision.py), micro-batch x accumulation and gradient checkpointing
(memory.choose_layout), the estimated peak GPU memory and whether it fits, the hours to train all
epochs at a stated MFU, and the cost at an hourly price. Standard library only, like memory.py:
the plan runs before torch is installed.

    amapiano-train plan --config FILE [--gpu T4] [--clips 8000] [--price 0.53] [--mfu 0.35] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import asdict, dataclass

from . import memory, precision


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_gib: float      # what torch.cuda.get_device_properties().total_memory reports, about
    peak_tflops: float     # dense, in the precision "auto" trains in (fp16 on a T4, bf16 elsewhere)
    aws: str               # the one-GPU instance (or the family) that carries it


# Peaks, dense (no 2:4 sparsity), from the vendor's datasheets:
#   T4: 65 TFLOPS fp16 tensor ("Mixed Precision (FP16/FP32)"), NVIDIA T4 datasheet.
#   A10G: 70 TFLOPS bf16; NVIDIA publishes no A10G sheet (AWS's variant of the A10, 125 TFLOPS);
#         the figure is the one Baseten tabulates in "NVIDIA A10 vs A10G for ML model inference".
#   L4: 121 TFLOPS bf16 (242 with sparsity), NVIDIA L4 datasheet.
#   A100 40/80 GB: 312 TFLOPS bf16, NVIDIA A100 datasheet.
#   H100 SXM: 989 TFLOPS bf16 (1,979 with sparsity), NVIDIA H100 datasheet; H200 SXM: the same
#   tensor cores, NVIDIA H200 datasheet.
GPUS = (
    Gpu("T4", (7, 5), 14.6, 65.0, "g4dn.xlarge"),
    Gpu("A10G", (8, 6), 22.0, 70.0, "g5.xlarge"),
    Gpu("L4", (8, 9), 22.0, 121.0, "g6.xlarge"),
    Gpu("A100-40GB", (8, 0), 39.4, 312.0, "p4d.24xlarge (8 GPUs)"),
    Gpu("A100-80GB", (8, 0), 79.1, 312.0, "p4de.24xlarge (8 GPUs)"),
    Gpu("H100", (9, 0), 79.1, 989.0, "p5.48xlarge (8 GPUs)"),
)
DEFAULT_MFU = 0.35
RECOMPUTE = 4 / 3  # checkpointing runs each layer's forward twice: 4 units of work instead of 3


def gpu_named(name: str) -> Gpu:
    """A GPU of the table by a loose name ("t4", "a100", "H100 80GB HBM3" from torch)."""
    key = name.upper().replace(" ", "").replace("-", "")
    exact = [g for g in GPUS if g.name.replace("-", "") == key]
    if exact:
        return exact[0]
    found = [g for g in GPUS if g.name.split("-")[0] in key]
    if not found:
        raise ValueError(f"--gpu {name!r}: not one of {', '.join(g.name for g in GPUS)}")
    return next((g for g in found if "40GB" in key and g.name.endswith("40GB")), found[-1])


@dataclass(frozen=True)
class Row:
    gpu: str
    precision: str
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    est_memory_gb: float      # GiB, what the GPU must hold: tensors, allocator slack, CUDA context
    gpu_memory_gb: float
    fits: bool
    clips: int
    epochs: int
    mfu: float
    peak_tflops: float
    est_hours: float
    usd_per_hour: float | None
    est_cost_usd: float | None
    aws: str


def plan_row(arch: memory.Arch, gpu: Gpu, cfg, clips: int, mfu: float, price: float | None, nproc: int = 1) -> Row:
    """One GPU model, nproc of them: each takes a 1/nproc slice of every micro-batch; with FSDP
    each also holds 1/nproc of the weights, gradients and optimizer state (the hours assume
    linear scaling, which gradient traffic erodes; the price is per GPU)."""
    t, d = cfg.train, cfg.data
    prec = precision.choose(gpu.capability, t.precision)
    share = max(1, t.batch_size // nproc)  # this GPU's slice of each micro-batch
    layout = memory.choose_layout(arch, d.frames, d.text_max_tokens, prec.dtype, share, t.grad_accum_steps,
                                  t.gradient_checkpointing, int(gpu.memory_gib * memory.GIB))
    if nproc > 1 and t.strategy == "fsdp":  # sharded state; one layer's weights gathered at a time is noise
        e = layout.estimate
        sharded = dataclasses.replace(e, weights=e.weights // nproc, optimizer=e.optimizer // nproc,
                                      gradients=e.gradients // nproc,
                                      peak=e.peak - (e.weights + e.optimizer + e.gradients) * (nproc - 1) // nproc)
        layout = dataclasses.replace(layout, estimate=sharded, fits=sharded.gpu_total() <= gpu.memory_gib * memory.GIB)
    steps = t.epochs * (clips // (t.batch_size * t.grad_accum_steps))
    flops = steps * t.batch_size * t.grad_accum_steps * arch.flops_per_sample(d.frames, d.text_max_tokens)
    peak = gpu.peak_tflops if prec.dtype != "fp32" else gpu.peak_tflops / 2  # TF32: half the tensor rate
    hours = flops * (RECOMPUTE if layout.checkpointing else 1) / (peak * 1e12 * mfu * nproc) / 3600
    return Row(gpu=gpu.name, precision=prec.dtype, micro_batch=layout.micro_batch, grad_accum=layout.grad_accum,
               gradient_checkpointing=layout.checkpointing,
               est_memory_gb=round(layout.estimate.gpu_total() / memory.GIB, 1), gpu_memory_gb=gpu.memory_gib,
               fits=layout.fits, clips=clips, epochs=t.epochs, mfu=mfu, peak_tflops=peak,
               est_hours=round(hours, 2), usd_per_hour=price,
               est_cost_usd=round(hours * price * nproc, 2) if price is not None else None, aws=gpu.aws)


def train_clips(cfg) -> tuple[int, str]:
    """(finished train clips in the token cache, "token cache"), else [dataset] train_size."""
    index_path = cfg.tokens_dir / "index.json"
    try:
        index = json.loads(index_path.read_text())
        status = (cfg.tokens_dir / "status.u8").read_bytes()
        n = sum(1 for i, c in enumerate(index["clips"]) if c.get("split") == "train" and i < len(status)
                and status[i] == 1)
        if n:
            return n, f"token cache {cfg.tokens_dir}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic_train_clips, "[data] synthetic_train_clips"
    return cfg.dataset.train_size, "[dataset] train_size (no token cache yet)"


def live_price(cfg) -> tuple[float, str] | None:
    """The config's fixed rate, else this EC2 instance's live Spot price; None off AWS."""
    if cfg.budget.hourly_rate_usd:
        return cfg.budget.hourly_rate_usd, "[budget] hourly_rate_usd"
    if not cfg.aws.imds_url:
        return None
    try:
        from daemon.common.clock import Clock
        from daemon.ports.instance import Instance

        class Quiet:
            def __getattr__(self, _name):
                return lambda *a, **k: None

        inst = Instance(cfg, Quiet(), Clock())
        if not inst.refresh() or inst.aws is None:
            return None
        ident = inst.identity
        found = inst.aws.spot_price(ident["instanceType"], ident["availabilityZone"], Clock().now())
    except Exception:  # off AWS, no credentials, no network: the price is unknown, not $0
        return None
    if found is None:
        return None
    return found[0], f"spot {ident['instanceType']} {ident['availabilityZone']}"


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="per GPU: precision, micro-batch, memory, hours and cost, before paying",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from trainer.args import config_arg

    config_arg(p)
    p.add_argument("--gpu", metavar="NAME", help=f"one of {', '.join(g.name for g in GPUS)} (default: all)")
    p.add_argument("--clips", type=int, metavar="N", help="training clips (default: the token cache's)")
    p.add_argument("--price", type=float, metavar="USD", help="hourly price (default: [budget] or live Spot)")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"assumed model FLOPs utilisation ({DEFAULT_MFU})")
    p.add_argument("--json", action="store_true", help="a JSON list of objects, for scripts")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from daemon.common import exits
    from trainer.args import load_config_or_exit

    cfg = load_config_or_exit(args.config, "amapiano-train plan")
    try:
        arch = memory.arch_of_config(cfg)
        gpus = [gpu_named(args.gpu)] if args.gpu else list(GPUS)
    except ValueError as e:
        print(f"amapiano-train plan: {e}", file=sys.stderr)
        return exits.CONFIG
    if (args.clips is not None and not 0 < args.clips <= 10**8) or not 0.01 <= args.mfu <= 1 or (
            args.price is not None and not 0 <= args.price <= 1000):  # also false for NaN: no NaN in the JSON
        print("amapiano-train plan: --clips must be 1-100000000, --mfu 0.01-1 and --price 0-1000 "
              f"(got {args.clips}, {args.mfu}, {args.price})", file=sys.stderr)
        return exits.CONFIG
    clips, clips_from = (args.clips, "--clips") if args.clips else train_clips(cfg)
    per_step = cfg.train.batch_size * cfg.train.grad_accum_steps
    if clips < per_step:  # the worker would exit 78 on it: no row "fits" a run with no optimizer step
        print(f"amapiano-train plan: {cfg.source}: [train] batch_size x grad_accum_steps ({per_step}) is more than "
              f"the {clips} training clips ({clips_from}): one optimizer step needs that many; lower them or add "
              "clips", file=sys.stderr)
        return exits.CONFIG
    price, price_from = (args.price, "--price") if args.price is not None else (live_price(cfg) or (None, "unknown"))
    try:
        nproc = cfg.train.nproc_per_node if isinstance(cfg.train.nproc_per_node, int) else 1
        rows = [plan_row(arch, g, cfg, clips, args.mfu, price, nproc) for g in gpus]
    except precision.PrecisionError as e:
        print(f"amapiano-train plan: {cfg.source}: {e}", file=sys.stderr)
        return exits.CONFIG
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return exits.OK
    print(f"{arch.parameters / 1e6:.1f} M trainable parameters; {clips:,} clips ({clips_from}) x {cfg.train.epochs} "
          f"epochs, {cfg.train.batch_size * cfg.train.grad_accum_steps} clips per step, {cfg.data.frames} frames; "
          f"MFU {args.mfu:.0%}; price {price_from}; {nproc} GPU(s), {cfg.train.strategy} (memory per GPU)")
    print(f"{'gpu':10} {'prec':4} {'micro x acc':>11} {'ckpt':4} {'memory GiB':>14} {'fits':4} {'hours':>7} {'cost $':>8}")
    for r in rows:
        cost = f"{r.est_cost_usd:8.2f}" if r.est_cost_usd is not None else "       ?"
        print(f"{r.gpu:10} {r.precision:4} {r.micro_batch:>5} x {r.grad_accum:<3} {'on' if r.gradient_checkpointing else 'off':4} "
              f"{r.est_memory_gb:>5.1f} of {r.gpu_memory_gb:5.1f} {'yes' if r.fits else 'NO':4} {r.est_hours:7.1f} {cost}")
    if price is None:
        print("cost: pass --price USD (an hourly price for the instance), or run on the EC2 instance for its Spot price")
    return exits.OK
