import subprocess
import sys


def test_help_does_not_import_torch():
    code = "import sys, workbench.cli.main as c; c.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_help_lists_world_commands():
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "world", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("generate", "train", "measure"):
        assert cmd in r.stdout
