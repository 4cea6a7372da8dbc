"""`workbench ui`, added to the CLI through the `workbench.commands` entry point (pyproject.toml).

Light on purpose: `workbench --help` loads this module, so Streamlit is imported only by the
child process that `ui.launch` starts.
"""
from __future__ import annotations

from pathlib import Path

from workbench.cli.args import nonneg_int


def add_parser(sub) -> None:
    u = sub.add_parser("ui", help="open the browser UI (Streamlit, bound to 127.0.0.1)")
    u.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    u.add_argument("--workspace", type=Path, default=Path(".workbench-ui"),
                   help="workspace root; each browser session gets its own subfolder (default ./.workbench-ui)")
    u.add_argument("--port", type=nonneg_int, default=8501, help="port on 127.0.0.1 (default 8501)")
    u.set_defaults(func=_cmd_ui)


def _cmd_ui(args) -> int:
    from ui.launch import launch
    return launch(args.model, args.workspace, args.port)
