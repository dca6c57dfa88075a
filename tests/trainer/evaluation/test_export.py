"""The export: a transformers directory that loads, and audiocraft's state_dict.bin names."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import AMAPIANO_TRAIN, write_config
from daemon.common.config import load_config
from trainer.evaluation.export import to_audiocraft
from trainer.worker.model import load_base_model


def from_audiocraft(state: dict, hidden: int) -> tuple[dict, dict]:
    """transformers' published mapping (convert_musicgen_transformers.py), written out for the test."""
    renames = [("emb", "model.decoder.embed_tokens"), ("transformer", "model.decoder"),
               ("cross_attention", "encoder_attn"), ("linear1", "fc1"), ("linear2", "fc2"),
               ("norm1", "self_attn_layer_norm"), ("norm_cross", "encoder_attn_layer_norm"),
               ("norm2", "final_layer_norm"), ("out_norm", "model.decoder.layer_norm"), ("linears", "lm_heads"),
               ("condition_provider.conditioners.description.output_proj", "enc_to_dec_proj")]
    dec, proj = {}, {}
    for key, val in state.items():
        for a, b in renames:
            if a in key:
                key = key.replace(a, b)
        if "in_proj_weight" in key:
            dec[key.replace("in_proj_weight", "q_proj.weight")] = val[:hidden]
            dec[key.replace("in_proj_weight", "k_proj.weight")] = val[hidden:2 * hidden]
            dec[key.replace("in_proj_weight", "v_proj.weight")] = val[-hidden:]
        elif key.startswith("enc_to_dec_proj."):
            proj[key[len("enc_to_dec_proj."):]] = val
        else:
            dec[key] = val
    return dec, proj


def test_audiocraft_names_invert_transformers_conversion(tmp_path):
    model, _ = load_base_model(load_config(write_config(tmp_path)))
    dec = {k: v for k, v in model.decoder.state_dict().items() if "embed_positions" not in k}
    state = to_audiocraft(dec, model.enc_to_dec_proj.state_dict())
    assert "transformer.layers.0.self_attn.in_proj_weight" in state and "linears.0.weight" in state
    assert "emb.0.weight" in state and "out_norm.weight" in state
    assert "condition_provider.conditioners.description.output_proj.weight" in state
    back, proj = from_audiocraft(state, model.config.decoder.hidden_size)
    assert back.keys() == dec.keys()
    assert all(torch.equal(back[k], dec[k]) for k in dec)
    assert all(torch.equal(proj[k], v) for k, v in model.enc_to_dec_proj.state_dict().items())


@pytest.mark.slow
def test_export_of_the_best_checkpoint_loads_with_from_pretrained(tmp_path):
    config = write_config(tmp_path, {"train": {"epochs": 2}})
    assert subprocess.run([*AMAPIANO_TRAIN, "train", "--config", str(config)], capture_output=True,
                          timeout=300).returncode == 0
    out = tmp_path / "export"
    r = subprocess.run([sys.executable, "-m", "trainer.evaluation", "export", "--config", str(config), "--out", str(out),
                        "--log-format", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["step"] in (8, 16) and result["val_loss"] is not None  # the best by validation loss
    from transformers import MusicgenForConditionalGeneration

    loaded = MusicgenForConditionalGeneration.from_pretrained(out / "best_model")
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert torch.equal(loaded.decoder.lm_heads[0].weight, ckpt["model"]["decoder.lm_heads.0.weight"])
    bundle = torch.load(out / "state_dict.bin", weights_only=False)
    assert set(bundle) == {"best_state", "xp.cfg"} and "linears.0.weight" in bundle["best_state"]


@pytest.mark.slow
def test_amapiano_train_export_a_named_checkpoint_and_refuses_a_stranger(tmp_path):
    config = write_config(tmp_path, {"train": {"epochs": 1}})  # checkpoints at steps 4 and 8
    assert subprocess.run([*AMAPIANO_TRAIN, "train", "--config", str(config)], capture_output=True,
                          timeout=300).returncode == 0
    ckpt_dir = tmp_path / "state" / "checkpoints"
    stranger = tmp_path / "step_00000004.pt"
    stranger.write_bytes((ckpt_dir / "step_00000004.pt").read_bytes())  # the bytes, outside the run
    r = subprocess.run([*AMAPIANO_TRAIN, "export", "--config", str(config), "--checkpoint", str(stranger)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 65 and "not a committed checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    out = tmp_path / "export4"
    r = subprocess.run([*AMAPIANO_TRAIN, "export", "--config", str(config), "--out", str(out), "--checkpoint",
                        str(ckpt_dir / "step_00000004.pt"), "--log-format", "json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4 and (out / "best_model").is_dir()


@pytest.mark.parametrize("damage, words", [
    (lambda w: w.update({next(iter(w)): torch.zeros(3, 3)}), "has shape (3, 3)"),
    (lambda w: w.pop(next(iter(w))), "weights missing"),
    (lambda w: w.update(stray=torch.zeros(1)), "unknown, e.g. stray"),
    (lambda w: next(iter(w.values())).fill_(float("nan")), "NaN or infinity"),
])
def test_an_intact_checkpoint_that_does_not_fit_is_one_line_and_65(tmp_path, damage, words):
    """Its SHA-256 matches, but it is another model's, or its training diverged: export and
    evaluate refuse it in one line before any work (it was a traceback, or an export of NaNs)."""
    from trainer.worker import checkpoint
    from trainer.worker.model import TrainableMusicgen

    config = write_config(tmp_path)
    cfg = load_config(config)
    model, _ = load_base_model(cfg)
    weights = {k: v.clone() for k, v in TrainableMusicgen(model).state_dict().items()}
    damage(weights)
    checkpoint.save(cfg.checkpoint_dir, 4, {"model": weights}, {"val_loss": 1.0})
    for command in ("export", "evaluate"):
        r = subprocess.run([*AMAPIANO_TRAIN, command, "--config", str(config), "--out", str(tmp_path / command)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 65 and words in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob("evaluate*_samples"))


class _Payload:
    """What a malicious state_dict.bin carries: unpickling it runs code (here: writes a file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_audiocraft_base_gives_its_yaml_and_is_never_unpickled(tmp_path):
    from trainer.worker import checkpoint
    from trainer.worker.model import TrainableMusicgen

    config = write_config(tmp_path)
    cfg = load_config(config)
    model, _ = load_base_model(cfg)
    checkpoint.save(cfg.checkpoint_dir, 4, {"model": TrainableMusicgen(model).state_dict()}, {"val_loss": 1.0})
    original = tmp_path / "state_dict.bin"  # as audiocraft's export_lm writes it
    torch.save({"best_state": {"w": torch.zeros(2)}, "xp.cfg": "transformer_lm:\n  card: 2048\n",
                "version": "1.3.0", "exported": True}, original)
    r = subprocess.run([*AMAPIANO_TRAIN, "export", "--config", str(config), "--out", str(tmp_path / "out"),
                        "--audiocraft-base", str(original)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(tmp_path / "out" / "state_dict.bin", weights_only=True)["xp.cfg"].startswith("transformer_lm:")
    hostile, ran = tmp_path / "hostile.bin", tmp_path / "code-ran"
    torch.save({"best_state": {}, "xp.cfg": _Payload(str(ran))}, hostile)
    r = subprocess.run([*AMAPIANO_TRAIN, "export", "--config", str(config), "--out", str(tmp_path / "out2"),
                        "--audiocraft-base", str(hostile)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 65 and "cannot read as audiocraft's state_dict.bin" in r.stderr, r.stderr[-2000:]
    assert not ran.exists() and not (tmp_path / "out2").exists()
