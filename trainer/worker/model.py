"""MusicGen through Hugging Face transformers, and the part of it that learns.

audiocraft's last release pins torch 2.1, so the model is transformers'
MusicgenForConditionalGeneration, which loads the same facebook/musicgen-small weights. Only
the decoder (and the text-to-decoder projection) is fine-tuned; the T5 text encoder and the
EnCodec codec stay frozen and run once per clip when the token cache is built.

transformers does not apply MusicGen's codebook delay pattern in training, so `delay_pattern`
builds the delayed inputs and labels here: codebook k is shifted right by k frames, giving
sequences of T + K - 1 positions whose padding is masked from the loss.

Attention is transformers' SDPA path, set explicitly (the worker then picks the kernels, see
precision.py), and the decoder runs without a KV cache in training: a cache would keep every
layer's keys and values alive past the layer, which gradient checkpointing is meant to free.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from daemon.common.config import Config, ConfigError, TinyModelConfig

from .memory import Arch


def tiny_musicgen_config(tiny: TinyModelConfig):
    """A random MusicGen of the real architecture, small enough for a laptop CPU."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    v = tiny.codebook_size
    decoder = MusicgenDecoderConfig(
        vocab_size=v, pad_token_id=v, bos_token_id=v, decoder_start_token_id=v,
        hidden_size=tiny.hidden_size, num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads, ffn_dim=tiny.ffn_dim, num_codebooks=tiny.num_codebooks,
        max_position_embeddings=4096, dropout=tiny.dropout, activation_dropout=0.0, attention_dropout=0.0,
    )
    # ByT5's tokenizer needs no vocabulary file: 256 bytes + 3 specials + 125 extra ids.
    text = T5Config(vocab_size=384, d_model=tiny.text_hidden_size, d_kv=8,
                    d_ff=2 * tiny.text_hidden_size, num_layers=1, num_heads=4)
    # EnCodec gives bandwidth / (frame rate x log2(codebook size)) codebooks: ask for exactly
    # the decoder's number (32 kHz / hop 320 = 100 frames/s).
    ratios, rate = [8, 5, 4, 2], 32000
    frame_rate = math.ceil(rate / math.prod(ratios))
    kbps = tiny.num_codebooks * math.log2(v) * frame_rate / 1000 + 1e-6
    audio = EncodecConfig(codebook_size=v, num_filters=4, hidden_size=16, codebook_dim=16,
                          upsampling_ratios=ratios, sampling_rate=rate, audio_channels=1,
                          num_residual_layers=1, num_lstm_layers=1, target_bandwidths=[kbps])
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def seed_codebooks(codec, seed: int) -> None:
    """Seeded random codebooks for a tiny EnCodec: transformers leaves them at zero, so every code
    would decode to the same waveform and model and baseline samples could never differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            embed = layer.codebook.embed
            embed.copy_(torch.randn(embed.shape, generator=g, dtype=embed.dtype))
            layer.codebook.embed_avg.copy_(embed)
            layer.codebook.cluster_size.fill_(1.0)


def load_base_model(cfg: Config):
    """(model, tokenizer) as the run starts from: the pretrained weights, or a seeded tiny one."""
    import transformers
    from transformers import ByT5Tokenizer, MusicgenForConditionalGeneration

    transformers.logging.set_verbosity_error()  # the tiny config trips vocabulary-range warnings
    if cfg.model.source == "tiny":
        torch.manual_seed(cfg.run.seed)
        model = MusicgenForConditionalGeneration(tiny_musicgen_config(cfg.model.tiny))
        seed_codebooks(model.audio_encoder, cfg.run.seed)
        return model, ByT5Tokenizer()
    from pathlib import Path

    from transformers import AutoTokenizer

    name = cfg.model.pretrained
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
        raise ConfigError(f"{cfg.source}: [model] pretrained {name!r} is not a directory (a hub id has no leading "
                          "'/', '.' or '~')")
    try:
        return MusicgenForConditionalGeneration.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except OSError as e:  # no network, or no such model: transformers' message runs to a dozen lines
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"[model] pretrained {name!r}: cannot load ({first})") from None


def arch_of(model) -> Arch:
    """The memory model's view of a loaded MusicGen."""
    return Arch.from_hf(model.config.decoder.to_dict(), model.config.text_encoder.hidden_size)


def random_trainable(arch: Arch, seed: int = 0) -> TrainableMusicgen:
    """The trainable part of a MusicGen of this architecture with random weights, built without the
    text encoder and codec (benchmarks and the memory test; nothing to download)."""
    return TrainableMusicgen(random_base(arch, seed))


def random_base(arch: Arch, seed: int = 0):
    """What the worker needs of a loaded MusicGen (decoder, text projection, configs), random, with
    no text encoder or codec: `Trainer.setup(base=...)` trains it on a GPU with nothing downloaded."""
    from types import SimpleNamespace

    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    v = arch.vocab
    config = MusicgenDecoderConfig(
        vocab_size=v, pad_token_id=v, bos_token_id=v, decoder_start_token_id=v, hidden_size=arch.hidden,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, ffn_dim=arch.ffn,
        num_codebooks=arch.codebooks, max_position_embeddings=2048, dropout=0.1 if arch.dropout else 0.0,
        activation_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)
    with torch.device("meta"):  # skip transformers' slow init: normal(0, 0.02) below is enough
        decoder = MusicgenForCausalLM(config)
    decoder = decoder.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*decoder.named_parameters(), *decoder.named_buffers()]:
            if "embed_positions" in name:
                continue
            t.copy_(torch.ones_like(t) if name.endswith("layer_norm.weight") else
                    torch.zeros_like(t) if name.endswith("bias") else torch.randn(t.shape, generator=g) * 0.02)
        decoder.model.decoder.embed_positions.weights.copy_(
            decoder.model.decoder.embed_positions.get_embedding(*decoder.model.decoder.embed_positions.weights.shape))
    return SimpleNamespace(decoder=decoder, enc_to_dec_proj=nn.Linear(arch.text_hidden, arch.hidden), audio_encoder=None,
                           config=SimpleNamespace(decoder=config, text_encoder=SimpleNamespace(hidden_size=arch.text_hidden)))


def shape_of(model) -> dict:
    """The config that decides tensor shapes; a checkpoint must match it to be resumed."""
    d = model.config.decoder
    return {"hidden_size": d.hidden_size, "num_hidden_layers": d.num_hidden_layers,
            "num_attention_heads": d.num_attention_heads, "ffn_dim": d.ffn_dim,
            "num_codebooks": d.num_codebooks, "vocab_size": d.vocab_size,
            "text_hidden_size": model.config.text_encoder.hidden_size}


def delay_pattern(codes: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes (B, K, T) -> decoder inputs (B*K, T+K-1) and labels (B, T+K-1, K).

    Labels: codebook k holds codes[:, k, t] at position t + k, `pad` elsewhere (the decoder
    masks pad labels out of the loss). Inputs: the labels shifted right by one, starting from
    the BOS token (= pad for MusicGen).
    """
    b, k, t = codes.shape
    length = t + k - 1
    delayed = codes.new_full((b, k, length), pad)
    for i in range(k):
        delayed[:, i, i:i + t] = codes[:, i]
    inputs = codes.new_full((b, k, length), pad)
    inputs[:, :, 1:] = delayed[:, :, :-1]
    return inputs.reshape(b * k, length), delayed.transpose(1, 2)


class TrainableMusicgen(nn.Module):
    """The decoder and the text projection: what fine-tuning updates and checkpoints hold."""

    def __init__(self, full_model):
        super().__init__()
        self.decoder = full_model.decoder
        self.enc_to_dec_proj = getattr(full_model, "enc_to_dec_proj", None)
        self.pad = full_model.config.decoder.pad_token_id

    def forward(self, codes: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Mean per-codebook cross-entropy of next-code prediction (audiocraft's loss)."""
        states = self.enc_to_dec_proj(text_states) if self.enc_to_dec_proj is not None else text_states
        states = states * text_mask[..., None].to(states.dtype)
        inputs, labels = delay_pattern(codes, self.pad)
        return self.decoder(input_ids=inputs, encoder_hidden_states=states,
                            encoder_attention_mask=text_mask, labels=labels, use_cache=False).loss

    def prepare(self, checkpointing: bool) -> None:
        """SDPA attention, and activation checkpointing of every decoder layer when asked."""
        self.decoder.config._attn_implementation = "sdpa"
        d, kwargs = self.decoder, {"use_reentrant": False}
        if hasattr(d, "activation_checkpointing_enable"):  # transformers 5 (the gradient_* names warn)
            on, off = d.is_activation_checkpointing, d.activation_checkpointing_disable
            enable = lambda: d.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            on, off = d.is_gradient_checkpointing, d.gradient_checkpointing_disable
            enable = lambda: d.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if checkpointing:
            enable()
        elif on:
            off()


@torch.no_grad()
def encode_text(model, tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen text encoder: texts -> (states (N, S, D) float32, mask (N, S) long), S = max_tokens."""
    batch = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=max_tokens)
    encoder = model.text_encoder.eval()
    states = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return states.float(), batch.attention_mask.long()
