"""The `workbench` command line. Heavy imports happen inside commands so `--help` is instant.

Command groups live one module each beside this one; commands that belong to another layer
(the browser UI) are found through the `workbench.commands` entry-point group, so the core
never imports them.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

from workbench.core.errors import WorkbenchError

COMMANDS_GROUP = "workbench.commands"


def build_parser() -> argparse.ArgumentParser:
    from workbench.cli import audit, bench, cache, eval as eval_cli, plan, session, world
    from workbench.cli.args import Parser
    p = Parser(prog="workbench", description="Model editing and unlearning workbench.")
    sub = p.add_subparsers(dest="cmd", required=True)
    world.add_parser(sub)
    eval_cli.add_parser(sub)
    session.add_parsers(sub)
    plan.add_parsers(sub)
    audit.add_parsers(sub)
    bench.add_parser(sub)
    cache.add_parser(sub)
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(sub)  # e.g. `ui`: its module adds its own subcommand
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a refused option (2, said in one line by Parser.error)
        return e.code if isinstance(e.code, int) else 2
    workspace = getattr(args, "workspace", None)
    new_workspace = isinstance(workspace, (str, Path)) and not Path(workspace).exists()
    try:
        return args.func(args)
    except WorkbenchError as e:
        if new_workspace:
            _drop_if_empty(Path(workspace))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`workbench log | head`): what was committed stays committed; stop
        # quietly, and keep the interpreter's final flush from raising again on the closed pipe.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by the closed pipe


def _drop_if_empty(workspace: Path) -> None:
    """A refused command leaves no trace: a workspace folder it created that records nothing (an
    empty ledger, no patch) is removed, so the file system is as it was before the command."""
    import shutil
    from workbench.core.ledger import peek_summary
    session = sys.modules.get("workbench.editing.session")
    if session is None:  # no Workbench was opened: nothing created one
        return
    session.Workbench.close_all()  # this command is over; its own sessions must not count as "in use"
    try:
        summary = peek_summary(workspace)
    except WorkbenchError:
        return
    # another process may have opened the same new folder meanwhile: then it is in use and stays
    if summary is not None and summary["events"] == 0 and not any((workspace / "patches").iterdir()) \
            and session.unused(workspace):
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
