"""The amapiano-train trainer side: fine-tunes MusicGen's decoder; knows nothing of cost or shutdown.

    worker/       the training worker (`python -m trainer`): model, data order, checkpoints, the loop
    dataset/      MagnaTagATune -> manifest -> clips -> token cache (`amapiano-train dataset ...`)
    evaluation/   the milestone figures and the export (`amapiano-train evaluate|export`)
"""
