"""config.toml: the schema, its defaults, and validation with one-line errors.

Every section is a frozen dataclass; a field's type says what TOML value it takes and its
metadata says what makes it impossible. An unknown key, a wrong type or an impossible value
raises ConfigError, whose text names the file, the section and the key. The CLI turns it
into exit status exits.CONFIG (78), which the unit's RestartPreventExitStatus= will not loop on.
Stdlib only: the supervisor and the trainer both read it.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import config_rules
from .atomic import read_bytes
from .config_sections import (AT_FORMS, AwsConfig, BudgetConfig, EmailConfig, GpuConfig,  # noqa: F401 - re-exported
                              IdleConfig, MilestoneConfig, RedFlagsConfig, ShutdownAction, parse_milestone_at)
from .schema import FRACTION, NON_NEGATIVE, PERCENT, POSITIVE, ConfigError, Duration, _build, _check, between  # noqa: F401



@dataclass(frozen=True)
class RunConfig:
    name: str = "musicgen-small-amapiano"
    seed: int = field(default=1337, metadata=NON_NEGATIVE)
    # Relative paths are relative to the config file's directory.
    state_dir: Path = Path("/var/lib/amapiano-train")
    cache_dir: Path = Path("/var/cache/amapiano-train")
    log_dir: Path = Path("/var/log/amapiano-train")


@dataclass(frozen=True)
class TinyModelConfig:
    """A random MusicGen of the same architecture, for tests and the demo (no download)."""

    hidden_size: int = field(default=64, metadata=POSITIVE)
    num_layers: int = field(default=2, metadata=POSITIVE)
    num_heads: int = field(default=4, metadata=POSITIVE)
    ffn_dim: int = field(default=128, metadata=POSITIVE)
    num_codebooks: int = field(default=4, metadata=POSITIVE)
    codebook_size: int = field(default=64, metadata=POSITIVE)
    text_hidden_size: int = field(default=32, metadata=POSITIVE)
    dropout: float = field(default=0.1, metadata=FRACTION)


@dataclass(frozen=True)
class ModelConfig:
    source: Literal["pretrained", "tiny"] = "pretrained"
    # A Hugging Face hub id or a local directory, loaded with from_pretrained.
    pretrained: str = "facebook/musicgen-small"
    tiny: TinyModelConfig = TinyModelConfig()


@dataclass(frozen=True)
class DataConfig:
    # "synthetic": structured random codes made at start-up; "cache": the token cache
    # built by `amapiano-train dataset tokenize` (not available yet).
    source: Literal["synthetic", "cache"] = "cache"
    frames: int = field(default=1500, metadata=between(1, 100_000))  # codec frames per example (30 s at 50 Hz)
    synthetic_train_clips: int = field(default=256, metadata=POSITIVE)
    synthetic_valid_clips: int = field(default=32, metadata=POSITIVE)
    text_max_tokens: int = field(default=64, metadata=POSITIVE)


@dataclass(frozen=True)
class DatasetConfig:
    """MagnaTagATune -> the Amapiano-proxy subset -> the token cache (`amapiano-train dataset`)."""

    annotations_url: str = "https://mirg.city.ac.uk/datasets/magnatagatune/annotations_final.csv"
    clip_info_url: str = "https://mirg.city.ac.uk/datasets/magnatagatune/clip_info_final.csv"
    annotations_md5: str = "f04fa01752a8cc64f6e1ca142a0fef1d"   # the published files
    clip_info_md5: str = "03ef3cb8ddcfe53fdcdb8e0cda005be2"
    # The audio parts the person downloads by hand (the site's terms), into <cache_dir>/mtat/.
    parts: list[str] = field(default_factory=lambda: ["mp3.zip.001", "mp3.zip.002", "mp3.zip.003"])
    part_md5: list[str] = field(default_factory=list)   # optional, same order as parts
    # MTAT has no "amapiano", "log drum" or "soulful" tag: these are its nearest traits.
    proxy_tags: list[str] = field(default_factory=lambda: [
        "house", "deep", "dance", "electronic", "electro", "techno", "beat", "beats", "drums", "drum",
        "percussion", "bass", "piano", "jazzy", "jazz", "synth", "funky", "tribal"])
    min_tags: int = field(default=3, metadata=POSITIVE)
    top_n: int = field(default=0, metadata=NON_NEGATIVE)   # >0: the N clips with the most proxy tags
    split: Literal["random", "mtat"] = "random"
    train_size: int = field(default=8000, metadata=POSITIVE)
    valid_size: int = field(default=2000, metadata=POSITIVE)
    codec: str = "facebook/encodec_32khz"                # hub id or local directory
    tokenize_batch: int = field(default=8, metadata=POSITIVE)


AUTO_CLIPS_PER_STEP = 32  # the production step: 8 x 4 clips before batch_size = "auto"
AUTO_EVAL_BATCH = 8


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=20, metadata=POSITIVE)
    # Clips in one forward/backward pass. "auto": the micro-batch whose step is fastest among those
    # that fit this GPU by the memory model (trainer/worker/speed.py), at most 8 on the CPU, the
    # accumulation making up clips_per_step. A number: that micro-batch, x grad_accum_steps a step.
    batch_size: int | Literal["auto"] = field(default="auto", metadata=_check(
        lambda v: v == "auto" or 0 < v <= 4096, "must be \"auto\" or a number of clips from 1 to 4096"))
    grad_accum_steps: int = field(default=4, metadata=POSITIVE)  # with a numeric batch_size
    # Clips per optimizer step (the data order and the loss curve follow it, not the micro-batch):
    # 0 is batch_size x grad_accum_steps, or AUTO_CLIPS_PER_STEP with batch_size = "auto".
    clips_per_step: int = field(default=0, metadata=between(0, 100_000))
    lr: float = field(default=1e-5, metadata=POSITIVE)
    warmup_steps: int = field(default=500, metadata=NON_NEGATIVE)
    min_lr_ratio: float = field(default=0.1, metadata=FRACTION)
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    max_grad_norm: float = field(default=1.0, metadata=POSITIVE)
    # "auto": bf16 where the GPU computes it natively (compute capability >= 8.0), else fp16 with
    # a grad scaler; fp32 on the CPU (trainer/worker/precision.py).
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Recompute each decoder layer in the backward pass instead of keeping its activations
    # (about a third more compute). "auto": on where `amapiano-train plan` finds that the
    # micro-batch does not fit this GPU without it.
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    # torch.compile the model (minutes of start-up, faster steps on a GPU); "auto": on a GPU, when the
    # steps this worker has left pay for the compilation (trainer/worker/speed.py).
    compile: bool | Literal["auto"] = "auto"
    log_every: int = field(default=10, metadata=POSITIVE)  # steps between heartbeats
    val_every: int = field(default=500, metadata=POSITIVE)
    val_batches: int = field(default=0, metadata=NON_NEGATIVE)  # 0: the whole valid split; else x eval_batch clips
    checkpoint_every: int = field(default=1000, metadata=POSITIVE)
    keep_checkpoints: int = field(default=3, metadata=POSITIVE)
    cpu_threads: int = field(default=0, metadata=NON_NEGATIVE)  # 0: torch's default
    # Processes on this machine, one per GPU: "auto" is every visible GPU (1 on the CPU); more
    # than one runs the worker through torchrun (trainer/worker/distributed.py). batch_size x
    # grad_accum_steps stays the clips per optimizer step: each process takes its slice of
    # every micro-batch, so batch_size must divide by the number of processes.
    nproc_per_node: int | Literal["auto"] = field(default="auto", metadata=_check(
        lambda v: v == "auto" or 0 < v <= 64, "must be \"auto\" or a number of processes from 1 to 64"))
    # "ddp": every process holds the whole model; "fsdp": parameters, gradients and optimizer
    # state sharded across processes (musicgen-medium and -large), checkpoints sharded too.
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @property
    def per_step(self) -> int:
        """Clips per optimizer step: what the data order and the curve follow, whatever the micro-batch."""
        if self.clips_per_step:
            return self.clips_per_step
        return self.batch_size * self.grad_accum_steps if isinstance(self.batch_size, int) else AUTO_CLIPS_PER_STEP

    @property
    def eval_batch(self) -> int:
        """Clips a validation batch counts in (val_batches, evaluation): batch_size, 8 with "auto"."""
        return self.batch_size if isinstance(self.batch_size, int) else AUTO_EVAL_BATCH


@dataclass(frozen=True)
class SupervisorConfig:
    poll_interval: Duration = field(default=Duration(2), metadata=POSITIVE)
    restart_backoff_initial: Duration = field(default=Duration(10), metadata=POSITIVE)
    restart_backoff_max: Duration = field(default=Duration(600), metadata=POSITIVE)
    restart_jitter: float = field(default=0.2, metadata=FRACTION)
    # Give up (FAILED) after this many worker runs in a row that ended without a new checkpoint...
    max_restarts_without_progress: int = field(default=3, metadata=POSITIVE)
    # ...or after this many crashes within crash_window.
    max_crashes: int = field(default=5, metadata=POSITIVE)
    crash_window: Duration = field(default=Duration(3600), metadata=POSITIVE)
    # How long SIGTERM waits for the worker's emergency checkpoint before SIGKILL.
    stop_timeout: Duration = field(default=Duration(90), metadata=POSITIVE)
    # A heartbeat older than this (while training) is a hung worker: dumped, killed, restarted.
    heartbeat_timeout: Duration = field(default=Duration(600), metadata=POSITIVE)
    # Longer allowances for the slow activities; each grows to 3x the longest one measured.
    loading_timeout: Duration = field(default=Duration(1800), metadata=POSITIVE)
    validation_timeout: Duration = field(default=Duration(1800), metadata=POSITIVE)
    checkpoint_timeout: Duration = field(default=Duration(900), metadata=POSITIVE)
    # A failed shutdown (StopInstances refused, poweroff denied) is retried with backoff.
    shutdown_retry_initial: Duration = field(default=Duration(30), metadata=POSITIVE)
    shutdown_retry_max: Duration = field(default=Duration(900), metadata=POSITIVE)
    # The fallback when StopInstances fails (and the "poweroff" action itself).
    poweroff_command: list[str] = field(default_factory=lambda: ["systemctl", "poweroff"])


@dataclass(frozen=True)
class Config:
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    dataset: DatasetConfig = DatasetConfig()
    train: TrainConfig = TrainConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    idle: IdleConfig = IdleConfig()
    budget: BudgetConfig = BudgetConfig()
    gpu: GpuConfig = GpuConfig()
    aws: AwsConfig = AwsConfig()
    email: EmailConfig = EmailConfig()
    milestone: MilestoneConfig = MilestoneConfig()
    red_flags: RedFlagsConfig = RedFlagsConfig()
    # Where it was read from (not a TOML key).
    source: Path | None = field(default=None, metadata={"internal": True})

    @property
    def state_file(self) -> Path:
        return self.run.state_dir / "state.json"

    @property
    def heartbeat_file(self) -> Path:
        return self.run.state_dir / "heartbeat.json"

    @property
    def failure_file(self) -> Path:
        return self.run.state_dir / "worker_failure.json"

    @property
    def hold_file(self) -> Path:
        return self.run.state_dir / "hold.json"

    @property
    def reports_dir(self) -> Path:
        return self.run.state_dir / "reports"

    @property
    def mtat_dir(self) -> Path:
        return self.run.cache_dir / "mtat"

    @property
    def manifest_file(self) -> Path:
        return self.run.cache_dir / "manifest.jsonl"

    @property
    def clips_dir(self) -> Path:
        return self.run.cache_dir / "clips"

    @property
    def tokens_dir(self) -> Path:
        return self.run.cache_dir / "tokens"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run.state_dir / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return self.run.log_dir / "tensorboard"


CONFIG_LIMIT = 1 << 20  # a config is a few KiB; a MiB is no config


def load_config(path: str | Path) -> Config:
    """Read and validate config.toml; raises ConfigError with a one-line message."""
    path = Path(path)
    name = str(path)
    try:
        raw = read_bytes(path, CONFIG_LIMIT)  # a FIFO or a device planted there is refused, never waited on
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read ({e.strerror or str(e).removeprefix(name + ': ')})") from None
    try:
        table = tomllib.loads(raw.decode("utf-8-sig"))  # a byte-order mark (Windows editors) is no TOML error
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: invalid TOML: {e}") from None
    for section, value in table.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: top-level key '{section}' must be a [section]")
    cfg = _build(Config, table, "", name, path.resolve().parent)
    cfg = dataclasses.replace(cfg, source=path.resolve())
    config_rules.check(cfg, name)  # what keys allow together: a config that passes works at run time
    return cfg


def to_dict(obj: Any) -> Any:
    """Config -> plain JSON-able data (for checkpoints and reports)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, float):
        return float(obj)  # a Duration becomes a plain float: checkpoints load with weights_only
    return obj
