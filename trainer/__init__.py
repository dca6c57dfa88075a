"""The amapiano-train worker: fine-tunes MusicGen's decoder; knows nothing of cost or shutdown."""
