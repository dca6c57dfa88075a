"""config.toml's money, machine and milestone sections: [idle], [budget], [gpu], [aws], [email],
[milestone], [red_flags]. Frozen dataclasses; daemon/common/config.py assembles them and loads
the file. Stdlib only."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Literal

from .schema import FRACTION, NON_NEGATIVE, PERCENT, POSITIVE, Duration, _check, between  # noqa: F401


ShutdownAction = Literal["auto", "ec2-stop", "terminate", "poweroff", "none"]

# A price past this is a typo, not an instance: the largest GPU instance lists at about $100 an
# hour. It keeps every rate x duration the config can express (3650d at most) finite in the ledger.
MAX_USD_PER_HOUR = 10_000.0


@dataclass(frozen=True)
class IdleConfig:
    """Idle shutdown: no training progress (and, with NVML, GPU under the threshold) for `timeout`."""

    timeout: Duration = field(default=Duration(7200), metadata=POSITIVE)
    gpu_util_threshold_pct: float = field(default=10.0, metadata=_check(
        lambda v: 1 <= v <= 100, "must be between 1 and 100: at 0 every reading counts as busy and the idle rule "
                                 "never fires"))
    warn_before: Duration = field(default=Duration(900), metadata=POSITIVE)
    action: ShutdownAction = "auto"
    check_every: Duration = field(default=Duration(30), metadata=POSITIVE)


@dataclass(frozen=True)
class BudgetConfig:
    """Spend caps: alerts at fractions, a warning when the forecast passes the cap, a stop at it."""

    max_usd: float = field(default=600.0, metadata=between(0.01, 1e9))
    # 0: the live Spot price for this instance's type and zone (EC2 DescribeSpotPriceHistory).
    hourly_rate_usd: float = field(default=0.0, metadata=between(0, MAX_USD_PER_HOUR))
    # While the live price is unknown (IMDS or EC2 not answering yet), spend is charged at this
    # ceiling, never at $0: an unknown price must not switch the cap off.
    ceiling_usd_per_hour: float = field(default=1.0, metadata=between(0.001, MAX_USD_PER_HOUR))
    alert_fractions: list[float] = field(default_factory=lambda: [0.5, 0.8])
    ebs_gb: float = field(default=0.0, metadata=NON_NEGATIVE)
    ebs_usd_per_gb_month: float = field(default=0.08, metadata=NON_NEGATIVE)
    action: ShutdownAction = "auto"  # at the cap, after the checkpoint and the email
    check_every: Duration = field(default=Duration(10), metadata=POSITIVE)


@dataclass(frozen=True)
class GpuConfig:
    sample_every: Duration = field(default=Duration(10), metadata=POSITIVE)


@dataclass(frozen=True)
class AwsConfig:
    region: str = ""            # empty: the instance's own, from IMDS
    endpoint_url: str = ""      # empty: AWS itself (tests point this at a local moto server)
    imds_url: str = field(default="http://169.254.169.254", metadata=_check(
        lambda u: u == "" or u.startswith(("http://", "https://")), "must be an http:// URL, or \"\" for none"))
    # Each IMDS request's whole deadline. restore_state asks IMDS for the region before READY, so a
    # long one would hold the start (TimeoutStartSec is 120 s): 10 s is already slow for a link-local server.
    imds_timeout: Duration = field(default=Duration(1), metadata=_check(
        lambda v: 0 < v <= 10, "must be > 0 and at most 10s (a link-local service; it is asked before READY)"))
    spot_poll: Duration = field(default=Duration(5), metadata=POSITIVE)
    price_refresh: Duration = field(default=Duration(3600), metadata=POSITIVE)
    s3_bucket: str = ""         # empty: no S3 mirror of checkpoints
    s3_prefix: str = "amapiano-train"
    # The continuous mirror: the newest committed checkpoint and state.json go up this often.
    mirror_every: Duration = field(default=Duration(300), metadata=POSITIVE)


@dataclass(frozen=True)
class EmailConfig:
    """Alerts. The SMTP password and the apprise URLs are never here: see daemon/ports/mail.py."""

    transport: Literal["smtp", "ses", "apprise", "none"] = "none"
    to: list[str] = field(default_factory=list)
    sender: str = "amapiano-train@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = field(default=587, metadata=between(1, 65535))
    smtp_starttls: bool = True
    smtp_ca_file: str = ""      # a CA bundle for a relay with a private CA; empty: the system's
    smtp_user: str = ""
    password_credential: str = "smtp-password"
    apprise_credential: str = "apprise-urls"   # or AMAPIANO_APPRISE_URLS in secrets.env
    timeout: Duration = field(default=Duration(20), metadata=POSITIVE)
    retry_every: Duration = field(default=Duration(60), metadata=POSITIVE)
    give_up_after: Duration = field(default=Duration(86400), metadata=POSITIVE)
    shutdown_wait: Duration = field(default=Duration(120), metadata=POSITIVE)


AT_FORMS = "a duration (\"35d\"), a share of training from 1% to 100% (\"62.5%\") or an epoch (\"epoch 12\")"
# ASCII digits only: float() and int() also take "+50", "5_0", "1e-300", "９" and "٣", none of them meant.
_SHARE = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_EPOCH = re.compile(r"epoch[ \t]*([0-9]+)")


def parse_milestone_at(text: str) -> tuple[str, float]:
    """`[milestone] at`: "35d" -> ("duration", s), "62.5%" -> ("share", 0.625), "epoch 12" -> ("epoch", 12)."""
    t = text.strip().lower()
    share, epoch = _SHARE.fullmatch(t), _EPOCH.fullmatch(t)
    if share:  # below 1 % the milestone is the run's first minutes: a slip of the decimal point
        if 1 <= float(share[1]) <= 100:
            return "share", float(share[1]) / 100
    elif epoch:
        if int(epoch[1]) > 0:
            return "epoch", float(int(epoch[1]))
    else:
        with contextlib.suppress(ValueError):
            seconds = float(Duration.parse(t))
            if seconds > 0:
                return "duration", seconds
    raise ValueError(f"must be {AT_FORMS}")


def _parses(parse, text: str) -> bool:
    """Whether `parse` (parse_milestone_at, parse_window) takes `text`: a config field's check."""
    with contextlib.suppress(ValueError):
        return bool(parse(text))
    return False


@dataclass(frozen=True)
class MilestoneConfig:
    """The go/no-go: `amapiano-train evaluate`, then GO / CONDITIONAL GO / NO-GO / INCONCLUSIVE."""

    # When: a duration after the run started ("35d"), a share of the training steps ("62.5%",
    # week 5 of 8), or the end of an epoch ("epoch 12"). `after` is the older duration-only key.
    at: str = field(default="62.5%",
                    metadata=_check(lambda t: _parses(parse_milestone_at, t), f"must be {AT_FORMS}"))
    after: Duration = field(default=Duration(0), metadata=NON_NEGATIVE)   # counts only while `at` is unset
    min_authenticity_pct: float = field(default=35.0, metadata=PERCENT)
    max_cost_usd: float = field(default=600.0, metadata=POSITIVE)
    max_val_loss: float = field(default=3.5, metadata=POSITIVE)
    margin_pct: float = field(default=5.0, metadata=PERCENT)   # "close to a threshold"
    samples: int = field(default=32, metadata=between(1, 4096))        # generated per model (and baseline), paired
    keep_wavs: int = field(default=10, metadata=NON_NEGATIVE)  # the first of those kept as WAV, to listen to
    sample_seconds: float = field(default=10.0, metadata=between(0.05, 300))
    alpha: float = field(default=0.05, metadata=_check(lambda v: 0 < v < 1, "must be between 0 and 1, exclusive"))
    prompts: list[str] = field(default_factory=lambda: [
        "amapiano, house, piano, drums, deep log drum bass, shakers",
        "amapiano, deep house, jazzy piano chords, percussion",
        "amapiano, electronic, dance, beat, bass, synth"])
    # The scorer (trainer/evaluation/score.py). An empty clap_model: the librosa descriptors alone.
    clap_model: str = "laion/larger_clap_music"
    reference_dir: str = ""    # real Amapiano clips (WAV/FLAC/OGG/MP3); relative to this file
    genres: list[str] = field(default_factory=lambda: [
        "amapiano", "deep house", "techno", "hip hop", "jazz", "rock", "pop", "classical", "reggae", "afrobeats",
        "gqom", "kwaito", "drum and bass", "ambient"])
    descriptions: list[str] = field(default_factory=lambda: [
        "an amapiano track with a deep log drum bassline, shakers and jazzy piano chords",
        "south african amapiano, slow house groove around 113 bpm with percussive sub-bass log drums",
        "amapiano dance music with airy pads, piano stabs and syncopated log drum hits"])
    conditional_every: Duration = field(default=Duration(3 * 86400), metadata=POSITIVE)
    retry_every: Duration = field(default=Duration(86400), metadata=POSITIVE)  # after INCONCLUSIVE
    dry_run: bool = False      # log each decision and its evidence without acting on it
    # When all epochs are done: a final evaluation, the export, a report, an email, then this.
    completion_action: ShutdownAction = "auto"

    @property
    def when(self) -> tuple[str, float]:
        """("duration", seconds) | ("share", 0-1) | ("epoch", n)."""
        legacy = self.after > 0 and self.at == MilestoneConfig.at
        return ("duration", float(self.after)) if legacy else parse_milestone_at(self.at)


WINDOW_FORMS = "a duration (\"3d\") or a share of training from 1% to 100% (\"15%\")"


def parse_window(text: str) -> tuple[str, float]:
    """`[red_flags] val_loss_stall`: "3d" -> ("duration", s), "15%" -> ("share", 0.15)."""
    with contextlib.suppress(ValueError):
        kind, value = parse_milestone_at(text)
        if kind != "epoch":
            return kind, value
    raise ValueError(f"must be {WINDOW_FORMS}")


@dataclass(frozen=True)
class RedFlagsConfig:
    """Early warnings before the milestone (daemon/rules/red_flags.py)."""

    # The window the validation loss must fall over: a share of the training steps (the default:
    # a run of hours and one of weeks alike), or a duration (the plan's "3d").
    val_loss_stall: str = field(default="15%",
                                metadata=_check(lambda t: _parses(parse_window, t), f"must be {WINDOW_FORMS}"))
    min_gpu_util_pct: float = field(default=50.0, metadata=PERCENT)
    max_cost_before_milestone_usd: float = field(default=400.0, metadata=POSITIVE)
