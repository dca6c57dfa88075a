"""The amapiano-train supervisor: decides what happens to the run. Never imports torch."""
