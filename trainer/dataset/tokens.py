"""The token cache (`amapiano-train dataset tokenize`): every selected clip as EnCodec codes and its description as text-encoder
states, computed once, so the training step never decodes audio or runs a codec.

Layout in <cache_dir>/tokens/ (all fixed-size rows, memory-mapped):

    index.json   format, shapes, the model it was made with, and the clips in row order
    codes.i16    (N, K, T) int16 audio codes; -1 past the end of a short clip
    text.f16     (N, S, D) float16 text-encoder states
    mask.u8      (N, S)    text attention mask
    status.u8    (N,)      0 to do, 1 done, 2 failed (see failures.jsonl)

Resumable: a batch's rows are written and flushed before their status bytes, which are then
flushed too, so a SIGKILL leaves finished rows finished and the rest to do, never a row marked
done with half its data. The codec is the model's own audio encoder (MusicGen-small's is
EnCodec 32 kHz), so codes and decoder always agree; MTAT's 16 kHz mono MP3s are resampled to
its rate with soxr.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.common.atomic import write_json_atomic

FORMAT = 1
PAD_CODE = -1
TODO, DONE, FAILED = 0, 1, 2


class CacheError(Exception):
    """The token cache cannot be used; the text names the file and what to do."""


@dataclass(frozen=True)
class CacheLayout:
    n: int
    num_codebooks: int
    frames: int
    text_tokens: int
    text_dim: int

    def arrays(self, directory: Path, mode: str) -> dict[str, np.memmap]:
        shapes = {"codes.i16": ((self.n, self.num_codebooks, self.frames), np.int16),
                  "text.f16": ((self.n, self.text_tokens, self.text_dim), np.float16),
                  "mask.u8": ((self.n, self.text_tokens), np.uint8),
                  "status.u8": ((self.n,), np.uint8)}
        out = {}
        for name, (shape, dtype) in shapes.items():
            path = directory / name
            if mode == "r+" and not path.exists():
                out[name] = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
            else:
                expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
                if not path.exists() or path.stat().st_size != expected:
                    raise CacheError(f"{path}: missing or {path.stat().st_size if path.exists() else 0} bytes, "
                                     f"expected {expected}; rebuild with `amapiano-train dataset tokenize`")
                out[name] = np.memmap(path, dtype=dtype, mode=mode, shape=shape)
        return out


def model_identity(cfg) -> dict:
    m = cfg.model
    return {"source": m.source, "pretrained": m.pretrained if m.source == "pretrained" else None,
            "tiny": None if m.source == "pretrained" else {k: getattr(m.tiny, k) for k in m.tiny.__dataclass_fields__},
            "seed": cfg.run.seed if m.source == "tiny" else None}


def load_audio(path: Path, target_rate: int, samples: int) -> np.ndarray:
    """Mono float32 at target_rate, cut or zero-padded to `samples`; raises on undecodable audio."""
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if mono.size == 0:
        raise ValueError("no audio samples")
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate)
    out = np.zeros(samples, dtype=np.float32)
    out[:min(samples, mono.size)] = mono[:samples]
    return out


def _check_or_write_index(out_dir: Path, index: dict) -> None:
    """A cache is resumed only for the manifest and model it was started with."""
    index_path = out_dir / "index.json"
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if {k: v for k, v in old.items() if k != "built"} != index:
            raise CacheError(f"{index_path}: the cache was built for another manifest or model; "
                             f"move {out_dir} aside to build a new one")
    else:
        write_json_atomic(index_path, index)


def _encode_audio(codec, audio: np.ndarray, num_codebooks: int, frames: int, device) -> np.ndarray:
    """(B, samples) audio -> (B, K, <= frames) int16 codes from the model's own codec."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(audio)[:, None, :].to(device)
        codes = codec.encode(x, bandwidth=max(codec.config.target_bandwidths)).audio_codes  # (chunks=1, B, K, T')
    codes = codes[0] if codes.dim() == 4 else codes
    if codes.shape[1] < num_codebooks:
        raise CacheError(f"the codec gives {codes.shape[1]} codebooks, the decoder needs "
                         f"{num_codebooks}: model and codec do not belong together")
    return codes[:, :num_codebooks, :frames].to(torch.int16).cpu().numpy()


class Tokenizer:
    """Builds (or resumes) the cache for a manifest."""

    def __init__(self, cfg, log: Any, progress: bool = True):
        self.cfg, self.log, self.progress = cfg, log, progress

    def run(self, manifest: list[dict], audio_dir: Path, out_dir: Path) -> dict:
        import torch
        from tqdm import tqdm

        from trainer.worker.model import encode_text, load_base_model

        cfg = self.cfg
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
        base, tokenizer = load_base_model(cfg)
        codec = base.audio_encoder.to(device).eval()
        rate = codec.config.sampling_rate
        hop = int(np.prod(codec.config.upsampling_ratios))
        frames = cfg.data.frames
        dec = base.config.decoder
        layout = CacheLayout(len(manifest), dec.num_codebooks, frames, cfg.data.text_max_tokens,
                             base.config.text_encoder.hidden_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        index = {"format": FORMAT, "n": layout.n, "num_codebooks": layout.num_codebooks, "frames": frames,
                 "text_tokens": layout.text_tokens, "text_dim": layout.text_dim, "vocab_size": dec.vocab_size,
                 "sampling_rate": rate, "hop": hop, "model": model_identity(cfg),
                 "clips": [{"clip_id": c["clip_id"], "split": c["split"], "mp3_path": c["mp3_path"]}
                           for c in manifest]}
        _check_or_write_index(out_dir, index)
        arrays = layout.arrays(out_dir, "r+")
        status = arrays["status.u8"]
        todo = [i for i in range(layout.n) if status[i] not in (DONE, FAILED)]  # a damaged byte: redo the clip
        self.log.info("tokenize.start", clips=layout.n, done=int((status == DONE).sum()), todo=len(todo),
                      device=str(device), sampling_rate=rate, frames=frames)
        failures_path = out_dir / "failures.jsonl"
        batch = max(1, cfg.dataset.tokenize_batch)
        bar = tqdm(total=len(todo), unit="clip", desc="tokenize", disable=not self.progress)
        samples = frames * hop
        for start in range(0, len(todo), batch):
            rows = todo[start:start + batch]
            audio, ok_rows, failed = [], [], []
            for i in rows:
                clip = manifest[i]
                try:
                    audio.append(load_audio(audio_dir / clip["mp3_path"], rate, samples))
                    ok_rows.append(i)
                except Exception as e:  # undecodable or missing: listed, never the end of the run
                    failed.append((i, f"{type(e).__name__}: {e}"))
            if ok_rows:
                codes = _encode_audio(codec, np.stack(audio), layout.num_codebooks, frames, device)
                texts = [manifest[i]["description"] for i in ok_rows]
                states, mask = encode_text(base, tokenizer, texts, layout.text_tokens)
                block = np.full((len(ok_rows), layout.num_codebooks, frames), PAD_CODE, dtype=np.int16)
                block[:, :, :codes.shape[2]] = codes
                for j, i in enumerate(ok_rows):
                    arrays["codes.i16"][i] = block[j]
                    arrays["text.f16"][i] = states[j].numpy().astype(np.float16)
                    arrays["mask.u8"][i] = mask[j].numpy().astype(np.uint8)
            for name in ("codes.i16", "text.f16", "mask.u8"):
                arrays[name].flush()  # the rows, on disk, before...
            for i in ok_rows:
                status[i] = DONE
            for i, why in failed:
                status[i] = FAILED
                with open(failures_path, "a") as f:
                    f.write(json.dumps({"clip_id": manifest[i]["clip_id"], "mp3_path": manifest[i]["mp3_path"],
                                        "error": why}) + "\n")
                self.log.warning("tokenize.clip_failed", clip_id=manifest[i]["clip_id"], error=why)
            status.flush()  # ...the status bytes that say they are done
            bar.update(len(rows))
        bar.close()
        for a in arrays.values():
            fd = os.open(a.filename, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        done, bad = int((status == DONE).sum()), int((status == FAILED).sum())
        self.log.info("tokenize.done", clips=layout.n, done=done, failed=bad, cache=str(out_dir))
        return {"clips": layout.n, "done": done, "failed": bad}


def open_cache(directory: Path, cfg, model) -> tuple[dict, dict[str, np.memmap]]:
    """The cache's index and arrays, checked against the model the trainer is about to train."""
    index_path = directory / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{index_path}: no token cache; build it with `amapiano-train dataset tokenize`") from None
    except json.JSONDecodeError as e:
        raise CacheError(f"{index_path}: not valid JSON ({e.msg}); rebuild the cache") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise CacheError(f"{index_path}: format {got!r}, this version reads {FORMAT}")
    if not isinstance(index.get("n"), int) or not isinstance(index.get("clips"), list) \
            or len(index["clips"]) != index["n"] or not all(isinstance(c, dict) for c in index["clips"]):
        raise CacheError(f"{index_path}: field 'clips' does not list 'n' clips; rebuild the cache")
    dec = model.config.decoder
    want = {"num_codebooks": dec.num_codebooks, "vocab_size": dec.vocab_size,
            "text_tokens": cfg.data.text_max_tokens, "text_dim": model.config.text_encoder.hidden_size,
            "frames": cfg.data.frames}
    wrong = [f"{k}: cache {index.get(k)!r} != model/config {v!r}" for k, v in want.items() if index.get(k) != v]
    if index.get("model") != model_identity(cfg):
        wrong.append("the cache was made with another model (its text encoder states would not match)")
    if wrong:
        raise CacheError(f"{index_path}: " + "; ".join(wrong) + "; rebuild it with `amapiano-train dataset tokenize`")
    layout = CacheLayout(index["n"], index["num_codebooks"], index["frames"], index["text_tokens"], index["text_dim"])
    try:
        arrays = layout.arrays(directory, "r")
    except (OSError, ValueError) as e:
        raise CacheError(f"{directory}: the cache's arrays do not match its index ({e}); rebuild the cache") from None
    bad = int(np.count_nonzero(np.asarray(arrays["status.u8"]) > FAILED))
    if bad:
        raise CacheError(f"{directory / 'status.u8'}: {bad} status bytes are not 0, 1 or 2 (damaged); "
                         "rebuild the cache with `amapiano-train dataset tokenize`")
    return index, arrays
