"""CLI commands over the session: edit, log, show, undo, rollback, verify, export, bundle,
apply-bundle, editors. Each opens `Workbench(--model, --workspace)` and calls one method."""
from __future__ import annotations

import json
from pathlib import Path

from workbench.cli.args import int64, add_placement, load_cli_requests, parse_params, placement, writable_output


def _common(p) -> None:
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    p.add_argument("--workspace", type=Path, default=Path(".workbench"), help="workspace folder (default ./.workbench)")
    p.add_argument("--author", default=None, help="who makes this change (default: $WORKBENCH_AUTHOR or the login name)")
    add_placement(p)


def add_parsers(sub) -> None:
    e = sub.add_parser("edit", help="apply an editor to requests, measure before/after, record it")
    _common(e)
    e.add_argument("--editor", required=True, help="editor name (see `workbench editors`)")
    e.add_argument("--requests", type=Path, required=True, help="request file (native JSONL or a public format)")
    e.add_argument("--format", default=None, help="force the request format")
    e.add_argument("--skip-invalid", action="store_true",
                   help="leave out invalid records (each said on stderr and listed in --json) instead of failing")
    e.add_argument("--param", action="append", default=[], metavar="K=V", help="hyperparameter (repeatable)")
    e.add_argument("--gate", default=None, help="admission gates, e.g. reliability>=0.9,locality>=0.98")
    e.add_argument("--note", default=None, help="free text stored with the edit")
    e.add_argument("--seed", type=int64, default=0, help="seed passed to the editor")
    e.add_argument("--json", type=Path, default=None, help="write the ledger record (with metrics) here")
    e.set_defaults(func=_cmd_edit)

    for name, helptext, func in (("log", "list the history", _cmd_log), ("verify", "check the history, patches and "
                                 "replay; non-zero exit names what is wrong", _cmd_verify),
                                 ("undo", "revert the most recent edit in force", _cmd_undo)):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        if name == "log":
            p.add_argument("--json", type=Path, default=None, help="write the events as JSON here")
        if name == "verify":
            p.add_argument("--no-replay", action="store_true", help="check hashes and files only, no replay")
        p.set_defaults(func=func)

    s = sub.add_parser("show", help="one event in full, or its evaluation card")
    _common(s)
    s.add_argument("id")
    s.add_argument("--card", action="store_true",
                   help="the evaluation card (Markdown): requests, hyper-parameters, metrics with intervals, gates "
                        "and margins, locality probes that changed, the commands to reproduce it")
    s.add_argument("--requests-out", type=Path, default=None,
                   help="write the event's requests here as native JSONL (what the card's reproduce command reads)")
    s.set_defaults(func=_cmd_show)
    r = sub.add_parser("rollback", help="roll back to an edit (or 'base'), reverting everything after it")
    _common(r)
    r.add_argument("id")
    r.set_defaults(func=_cmd_rollback)
    rv = sub.add_parser("revert", help="revert one edit out of the middle, where its editor allows it")
    _common(rv)
    rv.add_argument("id")
    rv.set_defaults(func=_cmd_revert)
    x = sub.add_parser("export", help="save the edited model as a plain Hugging Face checkpoint")
    _common(x)
    x.add_argument("out", type=Path)
    x.set_defaults(func=_cmd_export)
    b = sub.add_parser("bundle", help="write the edits in force to one file, to replay elsewhere")
    _common(b)
    b.add_argument("out", type=Path)
    b.set_defaults(func=_cmd_bundle)
    a = sub.add_parser("apply-bundle", help="replay a bundle on this workspace's model (same base required)")
    _common(a)
    a.add_argument("bundle", type=Path)
    a.set_defaults(func=_cmd_apply_bundle)
    ed = sub.add_parser("editors", help="list editors with their capabilities; one editor's hyperparameters")
    ed.add_argument("name", nargs="?", default=None, help="one editor: its hyperparameters")
    ed.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ed.set_defaults(func=_cmd_editors)


def _open(args):
    from workbench.editing.session import Workbench
    return Workbench(args.model, args.workspace, author=args.author, **placement(args))


def _cmd_edit(args) -> int:
    from workbench.core.gates import Gate
    from workbench.editing.registry import get_editor
    params = parse_params(args.param)
    gates = Gate.parse_all(args.gate) if args.gate else []
    get_editor(args.editor)  # an unknown name fails before the model loads
    reqs, skipped = load_cli_requests(args)
    if args.json is not None:
        writable_output(args.json, "--json")
    wb = _open(args)
    if len(reqs) > 1 and not get_editor(args.editor).capabilities.batch:
        events = _edit_each(wb, args, reqs, params, gates)
    else:
        events = [wb.edit(args.editor, reqs, params, gates=gates, note=args.note, seed=args.seed)]
        _print_metrics(events[0])
    if args.json is not None:
        doc = events[0].to_dict() if len(events) == 1 else [e.to_dict() for e in events]
        if skipped:  # what --skip-invalid left out, beside the record(s)
            doc = {"events": doc if isinstance(doc, list) else [doc], "skipped": skipped}
        args.json.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0 if events[-1].kind == "edit" else 3


def _edit_each(wb, args, reqs, params, gates) -> list:
    """An editor that takes one request at a time: the file as sequential edits, with progress."""
    from workbench.core.progress import notice, on_terminal, progress_bar
    from workbench.eval.stats import fmt
    wb.check_each(args.editor, reqs, params)  # every request, before the notice and the first edit
    notice(f"{args.editor} edits one request at a time: {len(reqs)} requests as {len(reqs)} sequential edits")
    with progress_bar(f"{args.editor} edits", len(reqs), enabled=on_terminal()) as advance:
        events = wb.edit_each(args.editor, reqs, params, gates=gates, note=args.note, seed=args.seed,
                              progress=advance)
    for e in events:
        m = e.metrics_after or {}
        print(f"{e.id}: {e.kind}  " + "  ".join(f"{k} {fmt(m.get(k))}" for k in ("reliability", "generality",
                                                                                  "locality")))
    if events[-1].kind != "edit":
        print(f"stopped at request {len(events)} of {len(reqs)}: {events[-1].note}")
    return events


def _print_metrics(event) -> None:
    from workbench.eval.stats import RULE, fmt
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{event.id}: {event.kind} ({event.editor}, {event.duration_s:.2f} s)")
    for col in ("metric", "before", "after"):
        t.add_column(col)
    ctx = event.context or {}
    ivb, iva = ctx.get("intervals_before") or {}, ctx.get("intervals_after") or {}
    for k in event.metrics_after:
        b, a = event.metrics_before.get(k), event.metrics_after.get(k)
        t.add_row(k, fmt(b, ivb.get(k), digits=4, bound_digits=3), fmt(a, iva.get(k), digits=4, bound_digits=3))
    Console().print(t)
    if iva:
        print(f"[{RULE}]")
    for g in ctx.get("gates") or []:
        print(f"gate {g['gate']}: {'passed' if g['passed'] else 'FAILED'}"
              + ("" if g["margin"] is None else f" (margin {g['margin']:+.4f})"))
    if event.note:
        print(event.note)


def _cmd_log(args) -> int:
    writable_output(args.json, "--json")
    from rich import box
    from rich.console import Console
    from rich.table import Table
    wb = _open(args)
    events, active = wb.log(), set(wb.active())
    console = Console()
    # At 80 columns every fixed column must fit whole (an auditor reads every id, kind and
    # time): no vertical rules, and the year only where there is room (`show` has the seconds).
    wide = console.width >= 100
    heads = ("id", "kind", "what", "author", "time (UTC)", "on", "rel.", "loc.")
    rows = []
    for e in events:
        m = e.metrics_after or {}
        what = e.editor if e.kind in ("edit", "rejected") else "→ " + ",".join(e.targets or [])
        stamp = e.created_at[:16].replace("T", " ")
        rows.append((e.id, e.kind, what, e.author if len(e.author) <= 12 else e.author[:11] + "…",
                     stamp if wide else stamp[5:], "✓" if e.id in active else "", _f(m.get("reliability")),
                     _f(m.get("locality"))))
    # the note gets the width that is left, one line each (`workbench show ID` has it in full)
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(heads)]
    room = max(8, console.width - sum(w + 3 for w in widths) - 2)
    t = Table(title=f"history of {args.workspace} (base {wb.base_hash[:12]}…)", box=box.SIMPLE_HEAD, pad_edge=False,
              caption="what: the editor, or → the edits undone, rolled back or tagged · ✓ in force")
    for col, w in zip(heads, widths):
        t.add_column(col, no_wrap=True, min_width=w)
    t.add_column("note", no_wrap=True, max_width=room)
    for e, row in zip(events, rows):
        note = " ".join((e.note or "").split())
        t.add_row(*row, note if len(note) <= room else note[:room - 1] + "…")
    console.print(t)
    if args.json is not None:
        args.json.write_text(json.dumps([e.to_dict() for e in events], indent=2, sort_keys=True) + "\n")
    return 0


def _f(v) -> str:
    return "" if v is None else f"{v:.3f}"


def _cmd_show(args) -> int:
    from workbench.core.errors import InputError
    writable_output(args.requests_out, "--requests-out")
    wb = _open(args)
    event = wb.show(args.id)
    if args.requests_out is not None:
        if not event.requests:
            raise InputError(f"event {event.id} ({event.kind}) holds no requests", field="--requests-out")
        args.requests_out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in event.requests))
        print(f"wrote {len(event.requests)} request(s) to {args.requests_out}")
    if args.card:
        from workbench.editing.card import evaluation_card
        if event.kind not in ("edit", "rejected"):
            raise InputError(f"{event.id} is a {event.kind}, not an edit: only edits have an evaluation card",
                             field="id")
        print(evaluation_card(event, wb.log(), wb.active(), base_model=str(args.model) if args.model else None,
                              workspace=str(args.workspace)), end="")
    elif args.requests_out is None:
        print(json.dumps(event.to_dict(), indent=2, sort_keys=True))
    return 0


def _cmd_undo(args) -> int:
    e = _open(args).undo()
    print(f"{e.id}: undid {', '.join(e.targets)}")
    return 0


def _cmd_rollback(args) -> int:
    e = _open(args).rollback(args.id)
    print(f"{e.id}: rolled back {', '.join(e.targets)}; weights {e.weights_after[:12]}…")
    return 0


def _cmd_revert(args) -> int:
    e = _open(args).revert(args.id)
    print(f"{e.id}: reverted {', '.join(e.targets)}")
    return 0


def _cmd_verify(args) -> int:
    wb = _open(args)
    problems = wb.verify(replay=not args.no_replay)
    for p in problems:
        print(f"FAIL {p}")
    if not problems:
        print(f"ok: {len(wb.log())} events, chain intact, patch files intact"
              + ("" if args.no_replay else ", replay matches every recorded weights hash"))
    return 1 if problems else 0


def _cmd_export(args) -> int:
    out = _open(args).export(args.out)
    print(f"exported to {out}")
    return 0


def _cmd_bundle(args) -> int:
    out = _open(args).bundle(args.out)
    print(f"wrote bundle {out}")
    return 0


def _cmd_apply_bundle(args) -> int:
    events = _open(args).apply_bundle(args.bundle)
    print(f"replayed {len(events)} edit(s): {', '.join(e.id for e in events)}")
    return 0


def _cmd_editors(args) -> int:
    from workbench.editing.registry import describe_editor, editor_names
    names = [args.name] if args.name else editor_names()
    infos = [describe_editor(n) for n in names]
    if args.json:
        print(json.dumps(infos, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table
    console = Console()
    if not args.name:
        t = Table(title="editors (`workbench editors NAME`: one editor's hyperparameters)",
                  caption="capabilities: " + "; ".join(f"{v}: {CAPABILITY_HELP[k]}" for k, v in CAPABILITIES.items()))
        t.add_column("editor", no_wrap=True)
        t.add_column("capabilities", ratio=1)
        t.add_column("what it does", ratio=2)
        for info in infos:
            caps = info["capabilities"]
            t.add_row(info["name"], ", ".join(v for k, v in CAPABILITIES.items() if caps.get(k)), info.get("doc", ""))
        console.print(t)
        return 0
    info = infos[0]
    caps = ", ".join(CAPABILITIES[k] for k, v in info["capabilities"].items() if v and k in CAPABILITIES) or "none"
    console.print(f"[bold]{info['name']}[/bold]: {info.get('doc', '')}\ncapabilities: {caps}")
    t = Table()
    for col in ("hyperparameter", "type", "default", "help"):
        t.add_column(col)
    for h in info["hyperparameters"]:
        t.add_row(h["name"], h["type"], "derived" if h["default"] is None else str(h["default"]), h["help"])
    console.print(t)
    return 0


# Capability flag -> column title: what a user asks of an editor before choosing it.
CAPABILITIES = {"batch": "batch", "sequential": "stacks", "forget": "forgets", "single_revert": "revert-one",
                "composes": "composes"}
CAPABILITY_HELP = {"batch": "several requests in one edit", "sequential": "applies on top of earlier edits",
                   "forget": "takes forget requests", "single_revert": "one edit reverts out of the middle",
                   "composes": "merges or switches earlier adapters"}
