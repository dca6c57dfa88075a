"""The HTML report a person opens, plays and believes: the decision with its evidence.

    python -m daemon.report --config FILE --kind milestone|completion|now [--out DIR]
    amapiano-train report [--config FILE] [--out DIR]          (kind "now": mid-run too)

It reads state.json, the evaluation's and the supervisor's reports and the TensorBoard event
files, and writes `<name>.html` with its plots embedded, the clips it plays copied beside it
in `<name>_files/` (relative links: the folder is the whole report, it opens after `scp -r` or
`aws s3 sync` with no request to the network) and `<name>.zip` of the two (what the decision's
mail attaches). matplotlib and tensorboard make it heavy: it runs as a child of the supervisor
(daemon/evaluation.py starts it, bounded in time), never inside it.
"""
from __future__ import annotations

# kind -> the report's file name (without .html); the milestone's name is the one the README promises
NAMES = {"milestone": "week_5_report", "completion": "completion_report", "now": "report"}
