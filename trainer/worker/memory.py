"""How much memory a training step takes: parameters, optimizer state and activations, counted
from the architecture (standard library only: `amapiano-train plan` runs before torch is
installed, and the worker asks the same question of the GPU it got).

What one step holds at its peak, for the part that learns (`TrainableMusicgen`: the decoder and
the text projection; 420.4 M parameters for musicgen-small):

- weights, fp32 master copy: 4 bytes/parameter; AdamW's two moments: 8 bytes/parameter;
  gradients, fp32: 4 bytes/parameter (set to None after each step, so present during the
  forward pass only from the second micro-batch of an accumulation on).
- under autocast, the fp16/bf16 copy of every matmul weight (2 bytes/parameter), kept from the
  forward pass to the backward pass by the layers that saved it.
- activations saved for the backward pass, per position and decoder layer (h = hidden, f = FFN,
  a = 2 under autocast else 4): the three LayerNorm inputs (the fp32 residual stream, 3h x 4);
  the tensors the linears save (one shared fp32 LayerNorm output for q/k/v in fp32, 3h x 4; or
  the autocast copies, 5h x 2); q, k, v, the attention output and its contiguous copy (5h x a)
  for self-attention and q, output and copy (3h x a) for cross-attention; fc1 and GELU outputs
  (2f x a); three dropout masks (3h x 1). Flash and memory-efficient SDPA keep no
  positions x positions matrix, which is why attention is chosen explicitly.
- the output heads: log-softmax outputs (fp32), the stacked logits and their gradient.
- with gradient checkpointing: each layer's fp32 input (h x 4) and one layer recomputed at a time.

Checked against a measured CPU step of the real architecture (tests/trainer/worker/test_memory.py);
on a GPU the CUDA context and the caching allocator's slack are added on top (`gpu_total`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1 << 30
CUDA_CONTEXT = int(0.6 * GIB)   # CUDA context + cuBLAS workspaces: outside torch's allocator
ALLOCATOR_SLACK = 0.08          # the caching allocator's rounding and fragmentation, of the tensors
# Host memory. Assumed, not measured: a worker process's own (Python, torch, CUDA's host side). Kept
# free beside a checkpoint's host copy for the process and the page cache (async_save.py).
HOST_PROCESS = int(2.5 * GIB)
HOST_RESERVE = 1 * GIB


@dataclass(frozen=True)
class Arch:
    """The shape-defining numbers of a MusicGen decoder and its text conditioning."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    codebooks: int
    vocab: int
    text_hidden: int
    dropout: bool = True  # residual dropout > 0: one byte of mask per element, three per layer

    @property
    def parameters(self) -> int:
        """Trainable parameters: decoder (embeddings, layers, heads, final norm) + text projection."""
        h, f = self.hidden, self.ffn
        layer = 8 * h * h + 2 * h * f + 3 * 2 * h        # self + cross attention, FFN, 3 LayerNorms
        embeddings = self.codebooks * (self.vocab + 1) * h  # + the pad/BOS row
        heads = self.codebooks * h * self.vocab
        return self.layers * layer + 2 * h + embeddings + heads + self.text_hidden * h + h

    @property
    def matmul_parameters(self) -> int:
        """Parameters used in matmuls (what autocast copies): all but embeddings and norms."""
        h, f = self.hidden, self.ffn
        return self.layers * (8 * h * h + 2 * h * f) + self.codebooks * h * self.vocab + self.text_hidden * h

    @property
    def per_position_parameters(self) -> int:
        """Matmul parameters applied at every audio position: not the cross-attention K/V (they run on
        the text tokens), not the text projection, not the embeddings (lookups)."""
        h, f = self.hidden, self.ffn
        return self.layers * (6 * h * h + 2 * h * f) + self.codebooks * h * self.vocab

    def positions(self, frames: int) -> int:
        """Decoder positions for a clip of `frames` codec frames: the delay pattern adds K - 1."""
        return frames + self.codebooks - 1

    def flops_per_sample(self, frames: int, text_tokens: int) -> float:
        """Training FLOPs (forward + backward = 3 x forward) of one clip, without recomputation.

        Per position: 6 x the per-position parameters, plus self-attention scores and values
        (12 x layers x hidden x positions, the usual count without the causal half) and the
        cross-attention ones over the text tokens. Per clip: cross-attention K/V and the text
        projection on the text tokens only.
        """
        n, h, L = self.positions(frames), self.hidden, self.layers
        per_position = 6 * self.per_position_parameters + 12 * L * h * n + 12 * L * h * text_tokens
        per_text_token = 6 * (L * 2 * h * h + self.text_hidden * h)
        return float(n * per_position + text_tokens * per_text_token)

    @classmethod
    def from_hf(cls, decoder: dict, text_hidden: int) -> Arch:
        """From a transformers MusicgenDecoderConfig (as a dict) and the text encoder's width."""
        return cls(layers=decoder["num_hidden_layers"], hidden=decoder["hidden_size"],
                   heads=decoder["num_attention_heads"], ffn=decoder["ffn_dim"],
                   codebooks=decoder["num_codebooks"], vocab=decoder["vocab_size"], text_hidden=text_hidden,
                   dropout=float(decoder.get("dropout", 0.1)) > 0)


# facebook/musicgen-small's config.json: decoder 24 x 1024, 16 heads, FFN 4096, 4 codebooks of 2048;
# T5-base text encoder (d_model 768).
MUSICGEN_SMALL = Arch(layers=24, hidden=1024, heads=16, ffn=4096, codebooks=4, vocab=2048, text_hidden=768)
KNOWN = {"facebook/musicgen-small": MUSICGEN_SMALL}


def arch_of_config(cfg) -> Arch:
    """The architecture a config trains, without building the model: the tiny one, a known hub id, or
    a local directory's config.json. ValueError (with what to do) when it cannot be known offline."""
    if cfg.model.source == "tiny":
        t = cfg.model.tiny
        return Arch(layers=t.num_layers, hidden=t.hidden_size, heads=t.num_heads, ffn=t.ffn_dim,
                    codebooks=t.num_codebooks, vocab=t.codebook_size, text_hidden=t.text_hidden_size,
                    dropout=t.dropout > 0)
    name = cfg.model.pretrained
    if name in KNOWN:
        return KNOWN[name]
    config_json = Path(name) / "config.json"
    try:
        table = json.loads(config_json.read_text())
        return Arch.from_hf(table["decoder"], table["text_encoder"]["d_model"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"[model] pretrained = {name!r}: not a known model and no readable {config_json}; "
                         "point it at a local model directory") from None


@dataclass(frozen=True)
class Estimate:
    """Bytes at the step's peak, by what holds them; `peak` is their sum at the worst moment."""

    weights: int
    optimizer: int
    gradients: int         # counted where they coexist with the peak's activations
    weight_copies: int     # autocast's low-precision weight copies
    activations: int       # what the backward pass needs, at its worst moment
    peak: int              # tensors only (CPU RSS growth; torch.cuda.max_memory_allocated)

    def gpu_total(self) -> int:
        """What the GPU must have: the tensors, the allocator's slack and the CUDA context."""
        return int(self.peak * (1 + ALLOCATOR_SLACK)) + CUDA_CONTEXT

    def as_gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 2) for k, v in asdict(self).items()}


def layer_activation_bytes(arch: Arch, dtype: str) -> int:
    """Bytes one decoder layer saves for the backward pass, per position (module docstring)."""
    h, f = arch.hidden, arch.ffn
    a = 4 if dtype == "fp32" else 2
    norms_in = 3 * h * 4
    linear_inputs = 3 * h * 4 if dtype == "fp32" else 5 * h * 2
    attention = (5 * h + 3 * h) * a
    ffn = 2 * f * a
    masks = 3 * h if arch.dropout else 0
    return norms_in + linear_inputs + attention + ffn + masks


def head_bytes(arch: Arch, dtype: str) -> int:
    """The output heads at the turn from forward to backward, per position: log-softmax outputs
    (fp32), their gradient, the stacked logits; plus the final norm's input and output."""
    a = 4 if dtype == "fp32" else 2
    return arch.codebooks * arch.vocab * (4 + 4 + a) + 2 * arch.hidden * 4


def estimate(arch: Arch, micro_batch: int, frames: int, text_tokens: int, dtype: str = "fp32",
             checkpointing: bool = False, grad_accum: int = 1) -> Estimate:
    """Peak memory of one optimizer step (steady state: AdamW's moments exist)."""
    p = arch.parameters
    weights, optimizer, gradients = 4 * p, 8 * p, 4 * p
    copies = 0 if dtype == "fp32" else 2 * arch.matmul_parameters
    positions = micro_batch * arch.positions(frames)
    layer = layer_activation_bytes(arch, dtype) * positions
    text = micro_batch * text_tokens * arch.layers * 2 * arch.hidden * (4 if dtype == "fp32" else 2)
    head = head_bytes(arch, dtype) * positions
    # Two candidate peaks. The turn from forward to backward holds the saved activations (with
    # checkpointing: each layer's input) and the autocast copies, plus the gradients when an
    # earlier micro-batch of the step left them. The end of the backward pass holds all the
    # gradients (and, with checkpointing, the one layer being recomputed).
    if checkpointing:
        turn = arch.layers * arch.hidden * 4 * positions + text + head
        end = (gradients, copies // arch.layers, layer + text)
    else:
        turn = arch.layers * layer + text + head
        end = (gradients, 0, 0)
    start = (gradients if grad_accum > 1 else 0, copies, turn)
    grads, copies_held, acts = max(start, end, key=sum)
    return Estimate(weights=weights, optimizer=optimizer, gradients=grads, weight_copies=copies_held,
                    activations=acts, peak=weights + optimizer + grads + copies_held + acts)


def sharded(est: Estimate, n: int) -> Estimate:
    """FSDP over n processes: each holds 1/n of the weights, gradients and optimizer state (one
    layer's weights gathered at a time is noise beside them)."""
    held = est.weights + est.optimizer + est.gradients
    return dataclasses.replace(est, weights=est.weights // n, optimizer=est.optimizer // n,
                               gradients=est.gradients // n, peak=est.peak - held * (n - 1) // n)


@dataclass(frozen=True)
class Host:
    """Host memory of one machine's workers: the checkpoint's copy (model + AdamW, fp32, once per
    machine whatever the width), the splits each process holds, and each process's own."""

    snapshot: int
    data: int
    processes: int

    @property
    def total(self) -> int:
        return self.snapshot + self.data + self.processes

    def snapshot_fits(self, host_ram: int) -> bool:
        """Whether the worker writes checkpoints in the background (else blocking: async_save.py)."""
        return self.total + HOST_RESERVE <= host_ram


def host(arch: Arch, frames: int, text_tokens: int, clips: int, nproc: int = 1) -> Host:
    """What the checkpoints' background writes and the data need of the host's RAM (`clips`: train
    and valid, each process holding them: codes int16, text states fp16 and their mask)."""
    per_clip = arch.codebooks * frames * 2 + text_tokens * (arch.text_hidden * 2 + 1)
    return Host(snapshot=12 * arch.parameters, data=nproc * clips * per_clip, processes=nproc * HOST_PROCESS)


def smaller_micro_batch(clips_per_step: int, micro_batch: int, world: int = 1) -> int | None:
    """The next micro-batch after a CUDA OOM: the largest divisor of the step's clips that is at
    most half the current one (exactly half for powers of two), so the accumulation makes up the
    rest and the step sees the same clips; with `world` processes, also a multiple of it (each
    rank takes an equal slice). None when nothing is left to halve."""
    return max((d for d in range(world, micro_batch // 2 + 1)
                if clips_per_step % d == 0 and d % world == 0), default=None)


@dataclass(frozen=True)
class Layout:
    """How a step is cut for a GPU: micro-batch x accumulation, checkpointing, and its estimate."""

    micro_batch: int
    grad_accum: int
    checkpointing: bool
    estimate: Estimate
    fits: bool


def choose_layout(arch: Arch, frames: int, text_tokens: int, dtype: str, batch_size: int, grad_accum: int,
                  checkpointing: str, memory: int | None) -> Layout:
    """The configured micro-batch without checkpointing if it fits `memory` bytes (None: the CPU,
    where it always "fits"), else with it ("auto"), else the largest smaller micro-batch that fits
    (the accumulation grows to keep the clips per step). The smallest is returned, fits=False, when
    nothing does."""
    clips = batch_size * grad_accum
    options = {"auto": (False, True), "on": (True,), "off": (False,)}[checkpointing]
    micro: int | None = batch_size
    layout = None
    while micro is not None:
        for ckpt in options:
            est = estimate(arch, micro, frames, text_tokens, dtype, ckpt, clips // micro)
            layout = Layout(micro, clips // micro, ckpt, est, memory is None or est.gpu_total() <= memory)
            if layout.fits:
                return layout
        micro = smaller_micro_batch(clips, micro)
    assert layout is not None
    return layout
