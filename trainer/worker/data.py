"""What the trainer reads: audio codes and text-encoder states, and the deterministic order.

The order is a pure function of (seed, epoch), so the data position of any optimizer step is
known from the step number alone, and a resumed run sees exactly the batches an uninterrupted
one would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from daemon.common.config import Config

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
    codes: torch.Tensor        # (N, K, T) integer codes; negative = past the end of the clip
    text_states: torch.Tensor  # (N, S, D) float32 or float16 (the cache's)
    text_mask: torch.Tensor    # (N, S) integer
    pad: int = -1              # the decoder's pad id, for codes past the end (masked from the loss)

    def __len__(self) -> int:
        return self.codes.shape[0]

    def host_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(codes, text states, text mask) of these clips, in the model's dtypes, on the CPU."""
        codes = self.codes[index].long()
        if self.pad >= 0:
            codes = codes.masked_fill(codes < 0, self.pad)
        return codes, self.text_states[index].float(), self.text_mask[index].long()

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(device, non_blocking=True) for t in self.host_batch(index))


class DeviceBatches:
    """A step's micro-batches on the device without the GPU waiting for the host: on CUDA the
    clips are gathered in a background thread into pinned memory and copied on a side stream one
    micro-batch ahead of the one computing. On the CPU it is plain `Split.batch`."""

    def __init__(self, split: Split, device: torch.device):
        self.split, self.device = split, device
        self.cuda = device.type == "cuda"
        if self.cuda:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches")
            self.stream = torch.cuda.Stream(device)

    def _pinned(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.pin_memory() for t in self.split.host_batch(index))

    def _copy(self, host: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        with torch.cuda.stream(self.stream):
            return tuple(t.to(self.device, non_blocking=True) for t in host)

    def _ready(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        for t in batch:
            t.record_stream(compute)  # allocated on the copy stream, used and freed on this one
        return batch

    def __call__(self, indices: list[torch.Tensor]):
        if not self.cuda:
            for idx in indices:
                yield self.split.batch(idx, self.device)
            return
        pending = [self.pool.submit(self._pinned, idx) for idx in indices]
        ahead = self._copy(pending[0].result())
        for i in range(len(pending)):
            batch = self._ready(ahead)
            if i + 1 < len(pending):
                ahead = self._copy(pending[i + 1].result())
            yield batch


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
        return load_cache(cfg, model)
    from .model import encode_text

    dec = model.config.decoder
    n_train, n_valid = cfg.data.synthetic_train_clips, cfg.data.synthetic_valid_clips
    codes, styles = synthetic_codes(n_train + n_valid, dec.num_codebooks, cfg.data.frames, dec.vocab_size, cfg.run.seed)
    style_states, style_mask = encode_text(model, tokenizer, list(STYLES), cfg.data.text_max_tokens)
    states, mask = style_states[styles], style_mask[styles]
    return (Split(codes[:n_train], states[:n_train], mask[:n_train]),
            Split(codes[n_train:], states[n_train:], mask[n_train:]))


def load_cache(cfg: Config, model) -> tuple[Split, Split]:
    """The token cache built by `amapiano-train dataset tokenize`: its finished rows, by split."""
    import numpy as np

    from trainer.dataset.tokens import DONE, CacheError, open_cache

    try:
        index, arrays = open_cache(cfg.tokens_dir, cfg, model)
    except CacheError as e:
        raise DataError(f"{cfg.source}: [data] source = \"cache\": {e}") from None
    status = np.asarray(arrays["status.u8"])
    pad = model.config.decoder.pad_token_id
    splits = []
    for name in ("train", "valid"):
        rows = np.array([i for i, c in enumerate(index["clips"]) if c["split"] == name and status[i] == DONE])
        if rows.size == 0:
            raise DataError(f"{cfg.tokens_dir}: no finished {name} clips in the token cache "
                            "(run `amapiano-train dataset tokenize`)")
        codes = np.asarray(arrays["codes.i16"][rows])
        check_codes(cfg.tokens_dir / "codes.i16", codes, rows, index["clips"], model.config.decoder.vocab_size)
        splits.append(Split(torch.from_numpy(codes),
                            torch.from_numpy(np.asarray(arrays["text.f16"][rows])),
                            torch.from_numpy(np.asarray(arrays["mask.u8"][rows])), pad=pad))
    return splits[0], splits[1]


def check_codes(path, codes, rows, clips: list[dict], vocab: int, chunk: int = 1024) -> None:
    """DataError, one line naming the row and clip, unless every code of these cache rows is in
    0..vocab-1, or -1 past the end of its clip (every codebook from the same frame on), as `dataset
    tokenize` writes them: a flipped byte was an IndexError deep in the embedding, and a -1 (0xFFFF)
    inside a clip trained on silently as padding. `chunk` rows at a time: a cache is gigabytes."""
    import numpy as np

    for start in range(0, len(codes), chunk):
        block = codes[start:start + chunk]
        ended = block == -1
        past_end = np.flip(np.logical_and.accumulate(np.flip(ended.all(axis=1), -1), axis=-1), -1)  # (B, T)
        wrong = (block < -1) | (block >= vocab) | (ended & ~past_end[:, None, :])
        bad = wrong.any(axis=(1, 2))
        if not bad.any():
            continue
        j = int(np.argmax(bad))
        k, t = (int(x) for x in np.argwhere(wrong[j])[0])
        value, row = int(block[j, k, t]), int(rows[start + j])
        what = (f"-1 inside the clip at codebook {k}, frame {t} (its codes end at frame "
                f"{int((~past_end[j]).sum())})" if value == -1 else
                f"code {value} at codebook {k}, frame {t} is outside 0..{vocab - 1}")
        raise DataError(f"{path}: row {row} (clip {clips[row].get('clip_id')}): {what}; the cache is damaged: "
                        f"move {path.parent} aside and rebuild it with `amapiano-train dataset tokenize`")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def micro_batches(order: torch.Tensor, step_in_epoch: int, batch_size: int, accum: int) -> list[torch.Tensor]:
    """The clip indices of each micro-batch of one optimizer step."""
    start = step_in_epoch * batch_size * accum
    return [order[start + i * batch_size:start + (i + 1) * batch_size] for i in range(accum)]
