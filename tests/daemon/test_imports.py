"""The supervisor never imports torch: it must start fast and stay small beside the worker."""
import subprocess
import sys


def test_supervisor_modules_do_not_import_torch():
    code = ("import sys, daemon.cli, daemon.supervisor, daemon.guards, daemon.demo, daemon.status; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
