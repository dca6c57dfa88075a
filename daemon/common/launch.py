"""The one way a child process (the worker, evaluate, export) is started.

A child gets a minimal environment built from an allow-list, never the parent's whole one:
the supervisor holds the SMTP password, systemd's credentials directory and the notify socket,
and no child needs them (only the supervisor talks to systemd and sends mail). What passes is
what Python, torch, CUDA and Hugging Face read, plus our own AMAPIANO_* settings; and even of
those, nothing secret-named (AMAPIANO_APPRISE_URL, a typo the daemon never reads, would pass by its
prefix) and nothing holding a secret the log's redactor knows (common/log.py), by any name. The
one secret a child may have is its own: the Hugging Face token, to fetch a gated model.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .log import SECRET_NAMES, holds_secret

# Exact names and prefixes a child may inherit.
PASS_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
                        "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "COLUMNS", "NO_COLOR"})
PASS_PREFIXES = ("LC_", "PYTHON", "AMAPIANO_", "CUDA_", "NVIDIA_", "HF_", "TRANSFORMERS_", "TORCH",
                 "PYTORCH_", "NCCL_", "GLOO_", "OMP_", "MKL_", "OPENBLAS_", "XDG_CACHE_HOME")
# Never passed, whatever the lists above say.
NEVER = frozenset({"AMAPIANO_SMTP_PASSWORD", "AMAPIANO_APPRISE_URLS", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET",
                   "WATCHDOG_USEC", "WATCHDOG_PID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"})
WORKER_OWN = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})  # the worker's credential, not the daemon's


def _passes(name: str, value: str) -> bool:
    if name in WORKER_OWN:
        return True
    return (name not in NEVER and (name in PASS_NAMES or name.startswith(PASS_PREFIXES))
            and not SECRET_NAMES.search(name) and not holds_secret(value))


def child_environment(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment a child starts with: the allow-listed part of ours, plus `extra`."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if _passes(k, v)}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def python_command(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS` with this interpreter (the venv's, under systemd too)."""
    return [sys.executable, "-m", module, *args]


def spawn(argv: Sequence[str], *, stdout: int | None = None, cwd: Path | None = None,
          **extra_env: str) -> subprocess.Popen:
    """Start a child with the minimal environment, no stdin, in its own process group only if
    asked by a caller (not here: systemd's KillMode=control-group reaps the whole tree)."""
    return subprocess.Popen(list(argv), env=child_environment(**extra_env), stdin=subprocess.DEVNULL,
                            stdout=stdout, cwd=cwd)
