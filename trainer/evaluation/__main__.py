"""`python -m trainer.evaluation evaluate|export ...`: the children the supervisor launches at
the milestone and at completion (the same flags as `amapiano-train evaluate|export`)."""
from __future__ import annotations

import sys

from .cli import cmd_evaluate, cmd_export, evaluate_parser, export_parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "python -m trainer.evaluation"
    if argv[:1] == ["evaluate"]:
        return cmd_evaluate(evaluate_parser(f"{prog} evaluate").parse_args(argv[1:]))
    if argv[:1] == ["export"]:
        return cmd_export(export_parser(f"{prog} export", config_required=True).parse_args(argv[1:]))
    print(f"usage: {prog} evaluate|export --config FILE ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
