"""`amapiano-train export` (`python -m trainer.evaluation export`): the best checkpoint as a model people can load.

Two layouts in the output directory:

    best_model/         transformers' save_pretrained (MusicgenForConditionalGeneration, with its
                        processor/tokenizer): `from_pretrained(path)` loads it
    state_dict.bin      audiocraft's MusicGen layout: {"best_state": <the LM's state dict in
                        audiocraft's names>, "xp.cfg": <the original checkpoint's config>}

The audiocraft names are the inverse of transformers' own conversion script
(convert_musicgen_transformers.py): q/k/v projections fused back into in_proj_weight,
fc1/fc2 -> linear1/linear2, the layer norms, lm_heads -> linears, enc_to_dec_proj -> the
description conditioner's output_proj. audiocraft needs its "xp.cfg" to build the model; it is
not in the Hugging Face weights, so it is copied from the original audiocraft state_dict.bin
when given (--audiocraft-base), else left None and docs/evaluation.md says how to add it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

_RENAMES = [  # (transformers, audiocraft), applied in this order
    ("model.decoder.embed_tokens", "emb"),
    ("model.decoder.layer_norm", "out_norm"),
    ("model.decoder.layers", "transformer.layers"),
    ("encoder_attn_layer_norm", "norm_cross"),
    ("self_attn_layer_norm", "norm1"),
    ("final_layer_norm", "norm2"),
    ("encoder_attn", "cross_attention"),
    ("fc1", "linear1"),
    ("fc2", "linear2"),
    ("lm_heads", "linears"),
]


def to_audiocraft(decoder_state: dict, enc_to_dec_proj_state: dict) -> dict:
    """MusicgenForCausalLM's state dict (+ the text projection) in audiocraft's LM names."""
    import torch

    out: dict[str, Any] = {}
    pending: dict[str, dict[str, Any]] = {}
    for key, value in decoder_state.items():
        if "embed_positions" in key:
            continue  # sinusoidal, computed, not stored by audiocraft
        name = key
        for hf, ac in _RENAMES:
            name = name.replace(hf, ac)
        for proj in ("q_proj", "k_proj", "v_proj"):
            if f".{proj}.weight" in name:
                base = name.replace(f".{proj}.weight", ".in_proj_weight")
                pending.setdefault(base, {})[proj] = value
                break
        else:
            out[name] = value
    for base, parts in pending.items():
        out[base] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    for key, value in enc_to_dec_proj_state.items():
        out[f"condition_provider.conditioners.description.output_proj.{key}"] = value
    return out


def export(cfg, log: Any, out_dir: Path, audiocraft_base: Path | None = None,
           checkpoint_path: Path | None = None) -> dict:
    """Write both layouts of one checkpoint: `checkpoint_path`, else the best, else the newest."""
    import torch

    from daemon.common.atomic import write_atomic_with

    from trainer.worker import checkpoint
    from trainer.worker.model import TrainableMusicgen, load_base_model

    import transformers

    transformers.utils.logging.disable_progress_bar()  # its bars would be lines without a priority
    if checkpoint_path is not None:
        chosen = checkpoint.committed(cfg.checkpoint_dir, checkpoint_path)
    else:
        chosen = checkpoint.best(cfg.checkpoint_dir) or checkpoint.newest(cfg.checkpoint_dir)
    if chosen is None:
        raise checkpoint.CheckpointError(f"{cfg.checkpoint_dir}: no checkpoint to export")
    xp_cfg = _xp_cfg(audiocraft_base) if audiocraft_base is not None else None  # a bad file fails before any output
    payload = checkpoint.load(chosen)
    model, tokenizer = load_base_model(cfg)
    checkpoint.check_weights(chosen, payload.get("model"), TrainableMusicgen(model).state_dict())
    TrainableMusicgen(model).load_state_dict(payload["model"])
    hf_dir = out_dir / "best_model"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    state = to_audiocraft(model.decoder.state_dict(), model.enc_to_dec_proj.state_dict())
    write_atomic_with(out_dir / "state_dict.bin", lambda f: torch.save({"best_state": state, "xp.cfg": xp_cfg}, f))
    result = {"checkpoint": str(chosen.path), "step": chosen.step, "val_loss": chosen.val_loss,
              "transformers": str(hf_dir), "audiocraft": str(out_dir / "state_dict.bin"),
              "audiocraft_xp_cfg": xp_cfg is not None}
    log.info("export.done", **result)
    return result


def _xp_cfg(path: Path):
    """audiocraft's "xp.cfg" from the original state_dict.bin the person names. audiocraft's export
    writes it as a YAML string beside the tensors, so a weights-only load takes it; a file that
    needs more (pickled objects: another program's, or a malicious one) is refused, not run."""
    import torch

    from trainer.worker.checkpoint import CheckpointError

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing or foreign file: one line, not a traceback
        raise CheckpointError(f"{path}: cannot read as audiocraft's state_dict.bin ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("xp.cfg"), str):
        raise CheckpointError(f"{path}: not audiocraft's state_dict.bin (no \"xp.cfg\" YAML text)")
    return blob["xp.cfg"]
