"""What the trainer reads: audio codes and text-encoder states, and the deterministic order.

The order is a pure function of (seed, epoch), so the data position of any optimizer step is
known from the step number alone, and a resumed run sees exactly the batches an uninterrupted
one would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from daemon.config import Config

# Descriptions for synthetic clips: each style also sets the pattern of its codes, so the
# text conditioning carries information the model can learn to use.
STYLES = (
    "deep house, electronic, drums, beat",
    "techno, fast, synth, dance",
    "ambient, slow, soft, piano",
    "jazz, piano, drums, bass",
)


class DataError(Exception):
    """The data cannot be trained on; the text says what to do."""


@dataclass(frozen=True)
class Split:
    codes: torch.Tensor        # (N, K, T) long
    text_states: torch.Tensor  # (N, S, D) float32
    text_mask: torch.Tensor    # (N, S) long

    def __len__(self) -> int:
        return self.codes.shape[0]

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(x[index].to(device, non_blocking=True) for x in (self.codes, self.text_states, self.text_mask))


def synthetic_codes(n: int, num_codebooks: int, frames: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured random codes: each codebook follows next = (5*prev + 7*style + k + noise) mod V."""
    g = torch.Generator().manual_seed(seed)
    styles = torch.randint(0, len(STYLES), (n,), generator=g)
    codes = torch.empty(n, num_codebooks, frames, dtype=torch.long)
    codes[:, :, 0] = torch.randint(0, vocab, (n, num_codebooks), generator=g)
    noise = (torch.rand(n, num_codebooks, frames, generator=g) < 0.1).long()
    k = torch.arange(num_codebooks)[None, :]
    for t in range(1, frames):
        codes[:, :, t] = (5 * codes[:, :, t - 1] + 7 * styles[:, None] + k + noise[:, :, t]) % vocab
    return codes, styles


def load_splits(cfg: Config, model, tokenizer) -> tuple[Split, Split]:
    """(train, valid) for the configured data source."""
    if cfg.data.source == "cache":
        raise DataError(f"{cfg.source}: [data] source = \"cache\" needs the token cache in "
                        f"{cfg.run.cache_dir}/tokens, which `amapiano-train dataset tokenize` builds "
                        "(not available in this version); use source = \"synthetic\" to try the pipeline")
    from .model import encode_text

    dec = model.config.decoder
    n_train, n_valid = cfg.data.synthetic_train_clips, cfg.data.synthetic_valid_clips
    codes, styles = synthetic_codes(n_train + n_valid, dec.num_codebooks, cfg.data.frames, dec.vocab_size, cfg.run.seed)
    style_states, style_mask = encode_text(model, tokenizer, list(STYLES), cfg.data.text_max_tokens)
    states, mask = style_states[styles], style_mask[styles]
    return (Split(codes[:n_train], states[:n_train], mask[:n_train]),
            Split(codes[n_train:], states[n_train:], mask[n_train:]))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def micro_batches(order: torch.Tensor, step_in_epoch: int, batch_size: int, accum: int) -> list[torch.Tensor]:
    """The clip indices of each micro-batch of one optimizer step."""
    start = step_in_epoch * batch_size * accum
    return [order[start + i * batch_size:start + (i + 1) * batch_size] for i in range(accum)]
