"""`python -m daemon.report --config FILE --kind milestone|completion|now`: the report as a child
process (the supervisor never imports matplotlib or reads event files itself)."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
