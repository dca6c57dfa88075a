"""`amapiano-train plan`: before anyone pays, what each GPU would do with this config and data.

Per GPU: the precision (precision.py), micro-batch x accumulation and gradient checkpointing (the
worker's own choice: speed.layout_for), the estimated peak GPU memory and whether it fits, the host
memory the checkpoints' background writes need beside the data (memory.host) and whether the
instance has it, the MFU (measured on that GPU class, or estimated: speed.py), the hours to train
all epochs, whether `compile = "auto"` compiles, and the cost at an hourly price. `--nodes N` plans
a SkyPilot cluster of N such nodes of `[train] nproc_per_node` GPUs each: FSDP shards over all
N x nproc GPUs, the hours assume they scale linearly, and the cost bills each node at the hourly
price (one instance's, all its GPUs), as the watcher's ledger bills a cluster. Standard library
only, like memory.py: the plan runs before torch is installed.

    amapiano-train plan --config FILE [--gpu T4] [--clips 8000] [--price 0.53] [--mfu 0.35] [--nodes 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace

from . import memory, precision, speed


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_gib: float      # what torch.cuda.get_device_properties().total_memory reports, about
    peak_tflops: float     # dense, in the precision "auto" trains in (fp16 on a T4, bf16 elsewhere)
    aws: str               # the one-GPU instance (or the family) that carries it
    host_gib: float        # that instance's RAM (AWS's instance type pages)


# Peaks, dense (no 2:4 sparsity), from the vendor's datasheets:
#   T4: 65 TFLOPS fp16 tensor ("Mixed Precision (FP16/FP32)"), NVIDIA T4 datasheet.
#   A10G: 70 TFLOPS bf16; NVIDIA publishes no A10G sheet (AWS's variant of the A10, 125 TFLOPS);
#         the figure is the one Baseten tabulates in "NVIDIA A10 vs A10G for ML model inference".
#   L4: 121 TFLOPS bf16 (242 with sparsity), NVIDIA L4 datasheet.
#   A100 40/80 GB: 312 TFLOPS bf16, NVIDIA A100 datasheet.
#   H100 SXM: 989 TFLOPS bf16 (1,979 with sparsity), NVIDIA H100 datasheet; H200 SXM: the same
#   tensor cores, NVIDIA H200 datasheet.
GPUS = (
    Gpu("T4", (7, 5), 14.6, 65.0, "g4dn.xlarge", 16),
    Gpu("A10G", (8, 6), 22.0, 70.0, "g5.xlarge", 16),
    Gpu("L4", (8, 9), 22.0, 121.0, "g6.xlarge", 16),
    Gpu("A100-40GB", (8, 0), 39.4, 312.0, "p4d.24xlarge (8 GPUs)", 1152),
    Gpu("A100-80GB", (8, 0), 79.1, 312.0, "p4de.24xlarge (8 GPUs)", 1152),
    Gpu("H100", (9, 0), 79.1, 989.0, "p5.48xlarge (8 GPUs)", 2048),
    Gpu("H200", (9, 0), 139.0, 989.0, "p5e.48xlarge (8 GPUs)", 2048),  # memory: as the lent one reports it
)


def peak_tflops(gpu: Gpu, dtype: str) -> float:
    return gpu.peak_tflops if dtype != "fp32" else gpu.peak_tflops / 2  # TF32: half the tensor rate


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
    host_gib_needed: float    # the checkpoint's host copy, the data and the processes (memory.host)
    host_gib: float           # the instance's RAM
    snapshot_gib: float
    async_checkpoints: bool   # the host holds the copy: checkpoints written in the background
    clips: int
    epochs: int
    mfu: float
    mfu_basis: str            # "measured ..." on that GPU class, or "estimated ...", or "--mfu"
    peak_tflops: float
    samples_per_s: float
    est_hours: float
    compile: bool             # what compile = "auto" does for a run from step 0 (or the config's)
    usd_per_hour: float | None   # one node's: the instance with all its GPUs
    est_cost_usd: float | None   # hours x usd_per_hour x nodes
    aws: str
    nodes: int
    gpus: int                    # nodes x processes a node: the width the step is cut for


def plan_row(arch: memory.Arch, gpu: Gpu, cfg, clips: int, mfu: float | None, price: float | None,
             nproc: int = 1, valid: int = 0, nodes: int = 1) -> Row:
    """One GPU model, nproc of them on each of `nodes` nodes: each GPU takes a 1/(nodes x nproc)
    slice of every micro-batch; with FSDP each also holds that share of the weights, gradients and
    optimizer state (the hours assume linear scaling, which gradient traffic erodes, between nodes
    most; the price is one node's, all its GPUs, and every node bills it)."""
    t, d = cfg.train, cfg.data
    world = nodes * nproc
    prec = precision.choose(gpu.capability, t.precision)
    layout = speed.layout_for(cfg, arch, prec.dtype, int(gpu.memory_gib * memory.GIB), world)
    share, peak = layout.micro_batch // world, peak_tflops(gpu, prec.dtype)
    rate = speed.samples_per_s(arch, d.frames, d.text_max_tokens, gpu.name, peak, share, layout.checkpointing,
                               world, mfu)
    steps = t.epochs * (clips // t.per_step)
    hours = steps * t.per_step / rate / 3600
    compiles = t.compile if t.compile != "auto" else speed.compile_pays(steps, t.per_step / rate)
    host = node_host(memory.host(arch, d.frames, d.text_max_tokens, clips + valid, nproc), t.strategy, nproc, world)
    return Row(gpu=gpu.name, precision=prec.dtype, micro_batch=layout.micro_batch, grad_accum=layout.grad_accum,
               gradient_checkpointing=layout.checkpointing,
               est_memory_gb=round(layout.estimate.gpu_total() / memory.GIB, 1), gpu_memory_gb=gpu.memory_gib,
               fits=layout.fits, host_gib_needed=round(host.total / memory.GIB, 1), host_gib=gpu.host_gib,
               snapshot_gib=round(host.snapshot / memory.GIB, 1),
               async_checkpoints=host.snapshot_fits(int(gpu.host_gib * memory.GIB)), clips=clips, epochs=t.epochs,
               mfu=round(mfu if mfu is not None else speed.curve(gpu.name).at(share), 4),
               mfu_basis="--mfu" if mfu is not None else speed.curve(gpu.name).basis, peak_tflops=peak,
               samples_per_s=round(rate, 2), est_hours=round(hours, 2), compile=compiles, usd_per_hour=price,
               est_cost_usd=round(hours * price * nodes, 2) if price is not None else None, aws=gpu.aws,
               nodes=nodes, gpus=world)


def node_host(host: memory.Host, strategy: str, nproc: int, world: int) -> memory.Host:
    """The busiest node's host memory: with DDP the head's rank 0 copies the whole state to save it;
    with FSDP each node copies only its own ranks' shards of it."""
    if strategy != "fsdp" or world == nproc:
        return host
    return replace(host, snapshot=host.snapshot * nproc // world)


def width_error(cfg, nodes: int, nproc: int) -> str | None:
    """What distributed.init would refuse at the cluster's width (the ranks exit 78), said before paying."""
    t, world = cfg.train, nodes * nproc
    key, unit = ("batch_size", t.batch_size) if isinstance(t.batch_size, int) else ("clips_per_step", t.per_step)
    if unit % world:
        return (f"{cfg.source}: [train] {key} ({unit}) must divide by the {world} GPUs ({nodes} nodes x {nproc}): "
                "each takes an equal slice of every micro-batch")
    return None


def cached_clips(cfg, split: str) -> int:
    """Finished clips of a split in the token cache (0 when there is none)."""
    try:
        index = json.loads((cfg.tokens_dir / "index.json").read_text())
        status = (cfg.tokens_dir / "status.u8").read_bytes()
        return sum(1 for i, c in enumerate(index["clips"]) if c.get("split") == split and i < len(status)
                   and status[i] == 1)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def train_clips(cfg) -> tuple[int, str]:
    """(finished train clips in the token cache, "token cache"), else [dataset] train_size."""
    if n := cached_clips(cfg, "train"):
        return n, f"token cache {cfg.tokens_dir}"
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic_train_clips, "[data] synthetic_train_clips"
    return cfg.dataset.train_size, "[dataset] train_size (no token cache yet)"


def valid_clips(cfg) -> int:
    """The validation clips a worker holds beside the training ones (host memory)."""
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic_valid_clips
    return cached_clips(cfg, "valid") or cfg.dataset.valid_size


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
    p.add_argument("--mfu", type=float, default=None,
                   help="a model FLOPs utilisation for every GPU (default: the throughput model's, trainer/worker/speed.py)")
    p.add_argument("--nodes", type=int, default=1, metavar="N",
                   help="a cluster of N nodes (SkyPilot's num_nodes), each of [train] nproc_per_node GPUs (default 1)")
    p.add_argument("--json", action="store_true", help="a JSON list of objects, for scripts")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from daemon.common import exits
    from daemon.common.config_rules import step_words
    from trainer.args import load_config_or_exit

    cfg = load_config_or_exit(args.config, "amapiano-train plan")
    try:
        arch = memory.arch_of_config(cfg)
        gpus = [gpu_named(args.gpu)] if args.gpu else list(GPUS)
    except ValueError as e:
        print(f"amapiano-train plan: {e}", file=sys.stderr)
        return exits.CONFIG
    if (bad := bad_arguments(args)) is not None:
        print(f"amapiano-train plan: {bad}", file=sys.stderr)
        return exits.CONFIG
    clips, clips_from = (args.clips, "--clips") if args.clips else train_clips(cfg)
    if clips < cfg.train.per_step:  # the worker would exit 78 on it: no row "fits" a run with no optimizer step
        print(f"amapiano-train plan: {cfg.source}: [train] {step_words(cfg.train)} ({cfg.train.per_step}) is more "
              f"than the {clips} training clips ({clips_from}): one optimizer step needs that many; lower them or add "
              "clips", file=sys.stderr)
        return exits.CONFIG
    nproc = cfg.train.nproc_per_node if isinstance(cfg.train.nproc_per_node, int) else 1
    if (bad := width_error(cfg, args.nodes, nproc)) is not None:
        print(f"amapiano-train plan: {bad}", file=sys.stderr)
        return exits.CONFIG
    price, price_from = (args.price, "--price") if args.price is not None else (live_price(cfg) or (None, "unknown"))
    try:
        rows = [plan_row(arch, g, cfg, clips, args.mfu, price, nproc, valid_clips(cfg), args.nodes) for g in gpus]
    except (precision.PrecisionError, ValueError) as e:
        print(f"amapiano-train plan: {cfg.source}: {e}", file=sys.stderr)
        return exits.CONFIG
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return exits.OK
    print(f"{arch.parameters / 1e6:.1f} M trainable parameters; {clips:,} clips ({clips_from}) x {cfg.train.epochs} "
          f"epochs, {cfg.train.per_step} clips per step, {cfg.data.frames} frames; price {price_from}; "
          f"{width_words(args.nodes, nproc, cfg.train.strategy)}")
    print_table(rows)
    if price is None:
        print("cost: pass --price USD (an hourly price for the instance), or run on the EC2 instance for its Spot price")
    elif args.nodes > 1:
        print(f"cost: hours x ${price:g}/h x {args.nodes} nodes (each node priced as one instance, as the watcher's "
              f"ledger bills a cluster); hours: the {args.nodes * nproc} GPUs assumed to scale linearly, which traffic "
              "between nodes erodes (not measured)")
    return exits.OK


def bad_arguments(args: argparse.Namespace) -> str | None:
    """One line for an argument out of its range (NaN is out of every range: no NaN reaches the JSON)."""
    from daemon.cluster import MAX_NODES

    if (args.clips is not None and not 0 < args.clips <= 10**8) or not (args.mfu is None or 0.01 <= args.mfu <= 1) \
            or (args.price is not None and not 0 <= args.price <= 1000):
        return f"--clips must be 1-100000000, --mfu 0.01-1 and --price 0-1000 (got {args.clips}, {args.mfu}, {args.price})"
    if not 1 <= args.nodes <= MAX_NODES:
        return f"--nodes must be 1-{MAX_NODES}, SkyPilot's num_nodes (got {args.nodes})"
    return None


def width_words(nodes: int, nproc: int, strategy: str) -> str:
    """The width the plan is for, as its header says it."""
    if nodes == 1:
        return f"{nproc} GPU(s), {strategy} (memory per GPU)"
    sharded = f", sharded over the {nodes * nproc}" if strategy == "fsdp" else ""
    return (f"{nodes} nodes x {nproc} GPU{'s' if nproc > 1 else ''} = {nodes * nproc} GPUs, {strategy} "
            f"(memory per GPU{sharded})")


def print_table(rows: list[Row]) -> None:
    print(f"{'gpu':10} {'prec':4} {'micro x acc':>11} {'ckpt':4} {'memory GiB':>14} {'fits':4} {'host GiB':>14} "
          f"{'ckpt save':10} {'MFU':>7} {'hours':>7} {'compile':7} {'cost $':>8}")
    for r in rows:
        cost = f"{r.est_cost_usd:8.2f}" if r.est_cost_usd is not None else "       ?"
        basis = "m" if r.mfu_basis.startswith("measured") else "e" if r.mfu_basis.startswith("estimated") else " "
        print(f"{r.gpu:10} {r.precision:4} {r.micro_batch:>5} x {r.grad_accum:<3} "
              f"{'on' if r.gradient_checkpointing else 'off':4} {r.est_memory_gb:>5.1f} of {r.gpu_memory_gb:5.1f} "
              f"{'yes' if r.fits else 'NO':4} {r.host_gib_needed:>5.1f} of {r.host_gib:<6g} "
              f"{'background' if r.async_checkpoints else 'BLOCKING':10} {100 * r.mfu:5.1f}%{basis} {r.est_hours:7.1f} "
              f"{'yes' if r.compile else 'no':7} {cost}")
    snapshot = rows[0].snapshot_gib if rows else 0
    print(f"MFU: m measured on that GPU class, e estimated from the H100's measured curve ({speed.H100.basis}). "
          f"host: the checkpoints' {snapshot:g} GiB copy (written in the background; where the host cannot hold "
          f"it, blocking), the data, and {memory.HOST_PROCESS / memory.GIB:g} GiB a process (assumed). compile: "
          "what compile = \"auto\" does from step 0 (assumed costs, trainer/worker/speed.py).")
