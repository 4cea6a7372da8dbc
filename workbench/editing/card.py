"""The evaluation card of a recorded edit: one page that says what was changed, how it measured,
whether it passed its gates and by what margin, what else it moved, and how to do it again.

Built from the ledger alone (an event and the events around it), so it can be printed for any
workspace, including one whose model is not loaded: `workbench show ID --card`, the UI's History
page and the audit report all render this Markdown.
"""
from __future__ import annotations

import shlex

from workbench.core.ledger import Event
from workbench.eval.stats import RULE, fmt

MAX_REQUEST_ROWS = 10


def status(event: Event, events: list[Event], active: list[str]) -> str:
    """In force, rejected, or which later event took it out.

    Example:
        >>> status(e, events, active)  # doctest: +SKIP
        'reverted by e0005 (rollback)'
    """
    if event.kind == "rejected":
        return "rejected (reverted at once; never in force)"
    if event.kind != "edit":
        return f"{event.kind} of {', '.join(event.targets or [])}"
    if event.id in active:
        return "in force"
    undoer = next((e for e in events if e.seq > event.seq and e.kind in ("undo", "rollback", "revert")
                   and event.id in (e.targets or [])), None)
    return f"reverted by {undoer.id} ({undoer.kind})" if undoer else "not in force"


def in_force_before(event: Event, events: list[Event]) -> list[str]:
    """The edits in force when `event` was made: redoing it needs a model in that state."""
    from workbench.core.ledger import active_edits
    return active_edits([e for e in events if e.seq < event.seq])


def _md(text) -> str:
    """A table cell: pipes and newlines would break the Markdown table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _param(v) -> str:
    """A hyper-parameter as `--param K=V` reads it back (lists comma-separated, None as none)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def _requests(event: Event) -> list[str]:
    reqs = event.requests or []
    lines = [f"## Requests ({len(reqs)})", ""]
    edit = [r for r in reqs if r.get("type") == "edit"]
    if edit:
        lines += ["| id | prompt | new target | rephrasings | locality probes |", "|---|---|---|---|---|"]
        lines += [f"| {_md(r.get('id', '—'))} | {_md(r['prompt'])} | {_md(r['target_new'])} | "
                  f"{len(r.get('rephrase_prompts', []))} | {len(r.get('locality', []))} |"
                  for r in edit[:MAX_REQUEST_ROWS]]
    forget = [r for r in reqs if r.get("type") == "forget"]
    if forget:
        lines += ["| id | kind | prefix | suffix |", "|---|---|---|---|"]
        lines += [f"| {_md(r.get('id', '—'))} | {r['kind']} | {_md(r['prefix'])} | {_md(r['suffix'])} |"
                  for r in forget[:MAX_REQUEST_ROWS]]
    if len(reqs) > MAX_REQUEST_ROWS:
        lines.append(f"\n… and {len(reqs) - MAX_REQUEST_ROWS} more "
                     f"(`workbench show {event.id} --requests-out FILE`).")
    return lines


def _metrics(event: Event) -> list[str]:
    ctx = event.context or {}
    ivb, iva = ctx.get("intervals_before") or {}, ctx.get("intervals_after") or {}
    after, before = event.metrics_after or {}, event.metrics_before or {}
    lines = ["## Metrics", "", RULE + "." if iva else "No intervals were recorded for this event "
             "(written before schema 2).", "", "| metric | before | after | change |", "|---|---|---|---|"]
    for k in after:
        b, a = before.get(k), after.get(k)
        change = "—" if a is None or b is None else f"{a - b:+.3f}"
        lines.append(f"| {k} | {fmt(b, ivb.get(k))} | {fmt(a, iva.get(k))} | {change} |")
    return lines


def _gates(event: Event) -> list[str]:
    gates = (event.context or {}).get("gates")
    if event.context is None:
        return ["## Gates", "", "Not recorded (event written before schema 2)" +
                (f"; its note: {event.note}" if event.note else "") + "."]
    if not gates:
        return ["## Gates", "", "None: the edit was admitted without a threshold."]
    lines = ["## Gates", "", "| gate | measured | passed | margin |", "|---|---|---|---|"]
    lines += [f"| `{g['gate']}` | {fmt(g['measured'], digits=4)} | {'yes' if g['passed'] else '**no**'} | "
              + ("—" if g["margin"] is None else f"{g['margin']:+.4f}") + " |" for g in gates]
    return lines


def _changed(event: Event) -> list[str]:
    ctx = event.context or {}
    if "locality_changed" not in ctx:
        return []
    changed, count = ctx["locality_changed"], ctx.get("locality_changed_count", 0)
    lines = ["## Locality probes the edit changed", ""]
    if not count:
        return lines + ["None: every locality probe's greedy tokens are as before the edit."]
    lines += [f"{count} probe(s) changed; the first {len(changed)}:", "",
              "| request | prompt | expected | before | after | tokens unchanged |", "|---|---|---|---|---|---|"]
    lines += [f"| {_md(c['request'])} | {_md(c['prompt'])} | {_md(c['answer'])} | {_md(c['before'])} | "
              f"{_md(c['after'])} | {c['unchanged']:.2f} |" for c in changed]
    return lines


def shown_path(path, default=None) -> str | None:
    """How a card names a folder: None when it is `default` (the shipped model), else relative to
    the working directory when it lies under it — a card never holds an absolute path it need not."""
    import os
    from pathlib import Path
    path = Path(path).resolve()
    if default is not None and path == Path(default).resolve():
        return None
    return os.path.relpath(path) if path.is_relative_to(Path.cwd().resolve()) else str(path)


def reproduce_command(event: Event, *, base_model: str | None, requests_file: str) -> str:
    """The `workbench edit` command that applies this edit again, from its requests written to
    `requests_file` (`workbench show ID --requests-out FILE`), to a model in the state it was
    made on (the base model with `in_force_before` applied)."""
    ctx = event.context or {}
    parts = ["workbench", "edit", *(["--model", base_model] if base_model else []), "--editor", event.editor,
             "--requests", requests_file]
    for k, v in sorted((event.hparams or {}).items()):
        parts += ["--param", f"{k}={_param(v)}"]
    if "seed" in ctx:
        parts += ["--seed", str(ctx["seed"])]
    if ctx.get("gates"):
        parts += ["--gate", ",".join(g["gate"] for g in ctx["gates"])]
    return shlex.join(parts)


def evaluation_card(event: Event, events: list[Event], active: list[str], *, base_model: str | None = None,
                    workspace: str = ".workbench") -> str:
    """The Markdown card of an edit or rejected edit (`events`: the whole history, for its status;
    `base_model`: the model folder as the user named it, None for the shipped default).

    Example:
        >>> print(evaluation_card(wb.show("e0001"), wb.log(), wb.active(), base_model="m"))  # doctest: +SKIP
        # Evaluation card: e0001 …
    """
    if event.kind not in ("edit", "rejected"):
        raise ValueError(f"{event.id} is a {event.kind}, not an edit: it has no evaluation card")
    ctx = event.context or {}
    lines = [f"# Evaluation card: {event.id} ({event.editor})", "",
             f"- status: {status(event, events, active)}",
             f"- author: {event.author}, {event.created_at}; the editor ran {event.duration_s:.2f} s",
             f"- base model: {f'`{base_model}`' if base_model else 'the shipped default'}; "
             f"weights {event.weights_before[:12]}… → {event.weights_after[:12]}…",
             f"- applied on top of: {', '.join(in_force_before(event, events)) or 'nothing (the base model)'}",
             f"- seed: {ctx.get('seed', 'not recorded')}"]
    if event.note:
        lines.append(f"- note: {event.note}")
    lines += [""] + _requests(event)
    lines += ["", "## Hyper-parameters that ran", "",
              ", ".join(f"`{k}={_param(v)}`" for k, v in sorted((event.hparams or {}).items())) or "none"]
    lines += [""] + _metrics(event) + [""] + _gates(event)
    changed = _changed(event)
    if changed:
        lines += [""] + changed
    req_file = f"{event.id}_requests.jsonl"
    before = in_force_before(event, events)
    lines += ["", "## Reproduce", "",
              "On the base model" + (f" with {', '.join(before)} applied (e.g. a workspace rolled back to "
                                     f"{before[-1]}, or their bundle replayed)" if before else "") + ":", "", "```",
              shlex.join(["workbench", "show", event.id, "--workspace", workspace, "--requests-out", req_file]),
              reproduce_command(event, base_model=base_model, requests_file=req_file), "```"]
    return "\n".join(lines) + "\n"
