"""`workbench report` (the self-contained HTML audit report) and `workbench diff A B`."""
from __future__ import annotations

import json
from pathlib import Path

from workbench.cli.args import add_placement, placement


def _common(p) -> None:
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the shipped model)")
    p.add_argument("--workspace", type=Path, default=Path(".workbench"), help="workspace folder (default ./.workbench)")
    add_placement(p)


def add_parsers(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML file of the history: check, timeline, metrics, "
                                      "per-layer changes, every event in full")
    _common(r)
    r.add_argument("--out", type=Path, default=Path("workbench-report.html"), help="the HTML file to write")
    r.add_argument("--replay", action="store_true", help="also replay every event on a fresh copy of the base")
    r.set_defaults(func=_cmd_report)
    d = sub.add_parser("diff", help="what differs between two points of the history (ids, tags or 'base')")
    _common(d)
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--requests", type=Path, default=None,
                   help="also score both on these requests and compare them, paired by request")
    d.add_argument("--json", type=Path, default=None, help="write the differences as JSON here")
    d.set_defaults(func=_cmd_diff)


def _open(args):
    from workbench.editing.session import Workbench
    return Workbench(args.model, args.workspace, **placement(args))


def _cmd_report(args) -> int:
    from workbench.editing.report import write_report
    from workbench.core.errors import InputError
    if args.out.is_dir() or not args.out.parent.is_dir():
        raise InputError("cannot write the report here (a folder, or its folder is missing)", file=args.out)
    out = write_report(_open(args), args.out, replay=args.replay)
    print(f"wrote {out}")
    return 0


def _cmd_diff(args) -> int:
    from workbench.eval.requests import load_requests
    from workbench.eval.stats import fmt_paired
    reqs = load_requests(args.requests) if args.requests is not None else None
    wb = _open(args)
    d = wb.diff(args.a, args.b, reqs)
    print(f"{args.a}: {len(d['edits_a'])} edit(s) in force; {args.b}: {len(d['edits_b'])}")
    print(f"only in {args.a}: {', '.join(d['only_a']) or 'none'}; only in {args.b}: {', '.join(d['only_b']) or 'none'}")
    for t in d["tensors"]:
        if t["diff_norm"] is None:
            print(f"  {t['name']}: shape differs")
        else:
            rel = "" if t["relative"] is None else f" ({100 * t['relative']:.3g}% of its norm)"
            print(f"  {t['name']} {tuple(t['shape'])}: ‖B − A‖ = {t['diff_norm']:.4g}{rel}")
    for side, name in (("a", args.a), ("b", args.b)):
        for att in d["attachments"][side]:
            extra = ", ".join(f"{k} {v}" for k, v in att.items() if k not in ("edit", "kind"))
            print(f"  attachment only in {name}: {att['kind']} of {att['edit']}" + (f" ({extra})" if extra else ""))
    if not d["tensors"] and not d["attachments"]["a"] and not d["attachments"]["b"]:
        print("  the two models are identical")
    if "metrics" in d:
        print(f"\n{args.b} − {args.a} on {args.requests.name}, paired by request:")
        for c in d["metrics"]["paired"]:
            if c.get("pvalue") is not None:
                print(f"  {c['metric']}: {c['a']:.3f} → {c['b']:.3f}  {fmt_paired(c)}")
    if args.json is not None:
        args.json.write_text(json.dumps(d, indent=2, sort_keys=True, default=str) + "\n")
    return 0
