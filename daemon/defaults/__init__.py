"""Embedded default configs (symlinks to etc/amapiano-train/)."""
