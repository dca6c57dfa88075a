"""The dataset pipeline: MagnaTagATune -> the Amapiano-proxy manifest -> clips -> the token cache.

fetch.py downloads and unpacks, select.py picks and splits (no torch), clips.py copies the
selected MP3s, tokens.py builds the memory-mapped token cache the worker reads.
"""
