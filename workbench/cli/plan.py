"""`workbench run PLAN.toml` (scripted batch editing, `workbench.editing.plan`) and
`workbench tag NAME [ID]`."""
from __future__ import annotations

from pathlib import Path

from workbench.cli.args import add_placement, placement


def add_parsers(sub) -> None:
    r = sub.add_parser("run", help="run a plan: edit, forget, merge, eval, gate, tag, export and bundle steps "
                                   "on one loaded model; re-running resumes after the recorded steps")
    r.add_argument("plan", type=Path, help="the plan (TOML; see `workbench.editing.plan`)")
    r.add_argument("--dry-run", action="store_true", help="check every step and stop before the model loads")
    r.add_argument("--model", type=Path, default=None, help="base model folder (default: the plan's, else shipped)")
    r.add_argument("--workspace", type=Path, default=None, help="workspace (default: the plan's, else ./.workbench)")
    r.add_argument("--author", default=None, help="who makes these changes (default: the plan's, $WORKBENCH_AUTHOR "
                                                  "or the login name)")
    add_placement(r)
    r.set_defaults(func=_cmd_run)
    t = sub.add_parser("tag", help="name a point of the history (default: the latest event), usable wherever an id is")
    t.add_argument("name")
    t.add_argument("id", nargs="?", default=None, help="event id, tag or 'base' (default: the latest event)")
    t.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    t.add_argument("--workspace", type=Path, default=Path(".workbench"), help="workspace folder (default ./.workbench)")
    t.add_argument("--author", default=None, help="who names it (default: $WORKBENCH_AUTHOR or the login name)")
    add_placement(t)
    t.set_defaults(func=_cmd_tag)


def _where(args, plan) -> tuple:
    """(model, workspace, author): the command line's, else the plan header's (paths relative to
    the plan file), else the defaults."""
    header = plan.header
    model = args.model
    if model is None and "model" in header:
        rel = plan.path.parent / header["model"]
        model = rel if rel.is_dir() else Path(header["model"])  # a folder beside the plan, or a shipped name
    workspace = args.workspace or (plan.path.parent / header["workspace"] if "workspace" in header
                                   else Path(".workbench"))
    return model, workspace, args.author or header.get("author")


def _cmd_run(args) -> int:
    from workbench.core.ledger import peek_steps_done, peek_tags
    from workbench.core.progress import on_terminal
    from workbench.editing.plan import PlanProgress, StepFailed, load_plan, run_plan
    plan = load_plan(args.plan)
    model, workspace, author = _where(args, plan)
    # the workspace's tags, less those this plan's own finished tag steps gave
    plan.check_tags(peek_tags(workspace) - peek_tags(workspace, plan_hash=plan.hash))
    plan.check_outputs(peek_steps_done(workspace, plan.hash))
    if args.dry_run:
        print(f"plan {plan.path.name}: {len(plan.steps)} step(s) checked (hash {plan.hash[:12]}…)")
        for s in plan.steps:
            print(f"  {s.index + 1}. {s.action} {s.describe()}" + (" (one request per edit)"
                                                                   if s.spec.get("one_by_one") else ""))
        return 0
    from workbench.editing.session import Workbench
    wb = Workbench(model, workspace, author=author, **placement(args))
    summaries, failed = [], None  # the steps that finished, also when one fails
    with PlanProgress(plan, enabled=on_terminal()) as bar:
        try:
            run_plan(wb, plan, progress=bar, collect=summaries)
        except StepFailed as e:
            failed = e
    _print_summary(plan, summaries, failed)
    if failed is None:
        return 0
    return 3 if failed.rejected else 2


def _print_summary(plan, summaries: list[dict], failed) -> None:
    from rich.console import Console
    from rich.table import Table
    from workbench.editing.plan import short
    t = Table(title=f"plan {plan.path.name}")
    for col in ("step", "action", "what", "result", "rel.", "loc.", "s"):
        t.add_column(col, no_wrap=col != "what")
    for s in summaries:
        m = s.get("metrics") or {}
        ev = s.get("events") or []
        result = "done before" if s["status"] == "done before" else (
            f"{ev[0]}–{ev[-1]}" if len(ev) > 1 else (ev[0] if ev else "ok"))
        t.add_row(str(s["step"]), s["action"], s.get("what", ""), result,
                  *(f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "" for k in ("reliability", "locality")),
                  "" if s["status"] == "done before" else f"{s['seconds']:.1f}")
    if failed is not None:
        t.add_row(str(failed.step.index + 1), failed.step.action, short(failed.step),
                  "rejected" if failed.rejected else "failed", "", "", "")
    Console().print(t)
    if failed is not None:
        print(f"step {failed.step.index + 1} {'was rejected' if failed.rejected else 'failed'}: {failed}; "
              "the workspace holds every step before it; run the plan again to resume")


def _cmd_tag(args) -> int:
    from workbench.editing.session import Workbench
    wb = Workbench(args.model, args.workspace, author=args.author, **placement(args))
    e = wb.tag(args.name, args.id)
    print(f"{e.id}: {args.name} names {e.targets[0]}")
    return 0
