"""The supervisor never imports torch: it must start fast and stay small beside the worker.

The trainer-side command modules (trainer/*/cli.py) are imported by `amapiano-train`'s parser
for every command, `status` included, so they must be torch-free too until a command runs."""
import subprocess
import sys

import pytest

HEAVY = ('torch', 'transformers', 'numpy')


def heavy_after(code: str) -> list[str]:
    code += f"; import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_supervisor_modules_do_not_import_torch():
    assert heavy_after("import daemon.cli, daemon.supervisor, daemon.executor, daemon.lifecycle, daemon.demo, daemon.status") == []


@pytest.mark.parametrize("module", ["trainer.worker.cli", "trainer.dataset.cli", "trainer.evaluation.cli",
                                    "trainer.args", "trainer.dataset.select", "trainer.dataset.fetch"])
def test_trainer_command_modules_are_torch_free_until_run(module):
    assert heavy_after(f"import {module}") == []


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["export", "--help"], ["dataset", "--help"],
                                  ["train", "--help"], ["evaluate", "--help"], ["--version"]])
def test_the_cli_parser_and_help_do_not_import_torch(argv):
    code = ("import contextlib, io, daemon.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    daemon.cli.main({argv!r})")
    assert heavy_after(f"exec({code!r})") == []
