"""Synthetic MTAT-like clips, for the dataset tests and the cache benchmark."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_clips(root: Path, n: int, seconds: float = 0.4, broken: tuple[int, ...] = ()) -> list[dict]:
    """Synthetic MTAT-like clips: 16 kHz mono MP3 files under root/<hex>/..., and their manifest rows."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    clips = []
    for i in range(n):
        path = f"{i % 16:x}/artist-album-{i:02d}-title-0-29.mp3"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if i in broken:
            (root / path).write_bytes(b"ID3 this is not an mp3")
        else:
            t = np.arange(int(16000 * seconds)) / 16000
            tone = 0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / path, tone.astype(np.float32), 16000, format="MP3")
        clips.append({"clip_id": 100 + i, "mp3_path": path, "tags": ["piano"], "proxy_tags": ["piano"],
                      "split": "valid" if i % 5 == 0 else "train", "description": f"amapiano, piano, take {i}"})
    return clips
