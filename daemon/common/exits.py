"""Exit statuses, named once. The unit's RestartPreventExitStatus= lists DATAERR and CONFIG:
restarting cannot fix a bad file, so systemd must not loop on them (sysexits.h values)."""
from __future__ import annotations

OK = 0           # done: all epochs trained, or the command did what it was asked
FAILED = 1       # an unexpected error (a bug): systemd may restart
DATAERR = 65     # EX_DATAERR: an input file (state, checkpoint, annotations, audio) is unusable
PREEMPTED = 75   # EX_TEMPFAIL: the worker checkpointed on request (SIGUSR1/SIGTERM); not a failure
CONFIG = 78      # EX_CONFIG: the config (or the environment it names) is wrong
