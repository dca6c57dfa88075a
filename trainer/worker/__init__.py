"""The training worker: model, data order, checkpoints, the loop. Started as `python -m trainer`."""
