"""The shared kernel: what the supervisor and every trainer command both stand on.

Stdlib only (no torch, no third-party imports at module level except structlog in log.py):
the config schema, atomic files, the clock, logging, the exit statuses, the one child-process
launcher and the checkpoint layout. Nothing here imports from daemon/ or trainer/.
"""
