"""`workbench ui`: start Streamlit on the app, bound to 127.0.0.1 only.

The model folder and the workspace root travel as environment variables (see `ui.state`),
so the app reads them the same way whether Streamlit or an AppTest runs it.

Example:
    >>> launch(None, ".workbench-ui", 8501)      # blocks until Ctrl-C  # doctest: +SKIP
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .state import ENV_MODEL, ENV_WORKSPACE

MAX_UPLOAD_MB = 50  # = ui.common.MAX_UPLOAD_MB (not imported: common imports streamlit at module level)

APP = Path(__file__).resolve().parent / "app.py"


def command(port: int) -> list[str]:
    # Loopback only: the app can change a model and read local files, so it must not be
    # reachable from other machines. Usage statistics off: the workbench works offline.
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer",  # no "Deploy" button: this app is local by design
            "--server.maxUploadSize", str(MAX_UPLOAD_MB)]


def environment(model: Path | None, workspace: Path) -> dict:
    env = dict(os.environ)
    env[ENV_WORKSPACE] = str(Path(workspace).resolve())
    if model is not None:
        env[ENV_MODEL] = str(Path(model).resolve())
    else:
        env.pop(ENV_MODEL, None)
    return env


def launch(model: Path | None, workspace: Path, port: int) -> int:
    """Run Streamlit in the foreground; returns its exit status."""
    Path(workspace).mkdir(parents=True, exist_ok=True)
    print(f"workbench ui: http://127.0.0.1:{port}  (workspace root {Path(workspace).resolve()}; Ctrl-C stops)",
          flush=True)
    proc = subprocess.Popen(command(port), env=environment(model, workspace))

    def stop(signum, frame):  # a terminated `workbench ui` must not leave Streamlit running
        proc.terminate()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches both; wait for Streamlit's own clean exit
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
