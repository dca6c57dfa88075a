"""`python -m trainer --config FILE [--failure-file PATH]`: one run of the training worker
(trainer/worker/cli.py). The supervisor launches exactly this."""
import sys

from trainer.worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
