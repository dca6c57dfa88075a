"""The MusicGen stack: the delay pattern, and the real from_pretrained path on a local directory."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import write_config
from daemon.common.config import load_config
from trainer.worker.model import delay_pattern, load_base_model, shape_of

PAD = 99


def test_delay_pattern_shifts_codebook_k_by_k_frames():
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # B=1, K=2, T=3
    inputs, labels = delay_pattern(codes, PAD)
    assert labels.shape == (1, 4, 2)  # (B, T+K-1, K)
    assert labels[0, :, 0].tolist() == [1, 2, 3, PAD]
    assert labels[0, :, 1].tolist() == [PAD, 4, 5, 6]
    assert inputs.shape == (2, 4)  # (B*K, T+K-1): BOS (= pad) then the labels shifted right
    assert inputs.tolist() == [[PAD, 1, 2, 3], [PAD, PAD, 4, 5]]


def test_pad_labels_do_not_count_in_the_loss(tmp_path):
    from trainer.worker.model import TrainableMusicgen

    cfg = load_config(write_config(tmp_path))
    base, _ = load_base_model(cfg)
    model = TrainableMusicgen(base).eval()
    codes = torch.randint(0, 64, (2, 4, 12))
    states, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        loss = model(codes, states, mask)
        inputs, labels = delay_pattern(codes, model.pad)
        logits = model.decoder(input_ids=inputs, encoder_hidden_states=model.enc_to_dec_proj(states),
                               encoder_attention_mask=mask).logits.view(2, 4, 15, -1)  # (B, K, L, V)
    per_codebook = [torch.nn.functional.cross_entropy(logits[:, k].reshape(-1, logits.shape[-1]),
                                                      labels[:, :, k].reshape(-1), ignore_index=model.pad)
                    for k in range(4)]
    assert loss.item() == pytest.approx(torch.stack(per_codebook).mean().item(), rel=1e-5)


@pytest.mark.slow
def test_trains_from_a_pretrained_directory(tmp_path):
    """The production path (from_pretrained + AutoTokenizer) on a model saved to disk here."""
    cfg = load_config(write_config(tmp_path))
    base, tokenizer = load_base_model(cfg)
    model_dir = tmp_path / "musicgen-local"
    base.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = write_config(tmp_path, {"model": {"source": "pretrained", "pretrained": str(model_dir)},
                                     "train": {"epochs": 1}}, name="pretrained.toml")
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json"],
                            capture_output=True, text=True, timeout=180, env={"HF_HUB_OFFLINE": "1",
                                                                               "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert '"event":"train.completed"' in result.stdout
    loaded = load_config(config)
    back, _ = load_base_model(loaded)
    assert shape_of(back) == shape_of(base)


@pytest.mark.parametrize("pretrained, code, words", [
    ("/nonexistent/musicgen-small", 78, "is not a directory"),        # a typo in a local path: the config
    ("facebook/musicgen-small", 1, "cannot load"),                    # the hub unreachable: may pass later
])
def test_a_pretrained_model_that_cannot_load_is_one_line(tmp_path, pretrained, code, words):
    """Once a dozen lines of transformers' text and a traceback. HF_HUB_OFFLINE: no network is tried."""
    from conftest import cli

    config = write_config(tmp_path, {"model": {"source": "pretrained", "pretrained": pretrained}})
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    from trainer.worker import checkpoint

    checkpoint.save(load_config(config).checkpoint_dir, 4, {"model": {}}, {})  # something to evaluate
    for command in ("evaluate", "export"):
        r = cli(command, "--config", str(config), "--out", str(tmp_path / command), env=env, timeout=120)
        assert r.returncode == code and words in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    train = cli("train", "--config", str(config), "--log-format", "json", env=env, timeout=120)
    assert train.returncode == code and words in train.stdout + train.stderr
