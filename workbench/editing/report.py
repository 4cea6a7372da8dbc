"""The audit report: one self-contained HTML file (plotly inline; it opens offline) of a
workspace's history — `workbench report --out FILE.html`.

It holds the hash-chain check (and, with replay, the weights check), the timeline, the metrics
over edits, the per-layer change map, and every event in full: requests, effective
hyper-parameters, metrics before → after with intervals, gates with their outcome and margin,
author, time and note. Paths are shown by name only: the file is meant to be passed around.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

EDIT_KINDS = ("edit", "rejected")
METRICS = ("reliability", "generality", "locality", "strict_recitation", "loose_recitation", "extraction_strength")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def figures(wb, events, active) -> list[tuple[str, object]]:
    """(title, plotly figure) of the history — the History page and the HTML report draw the
    same ones: the timeline, the metrics over edits, and the per-layer map of weight changes and
    of what was attached (each on its own colour scale; reverted edits marked)."""
    import plotly.graph_objects as go
    from workbench.editing.changes import layer_changes
    out = []
    kinds = list(dict.fromkeys(e.kind for e in events))
    fig = go.Figure()
    for kind in kinds:
        mine = [e for e in events if e.kind == kind]
        fig.add_trace(go.Scatter(
            x=[e.created_at for e in mine], y=[kind] * len(mine), mode="markers+text", name=kind,
            # labels alternate above and below, so neighbours in time do not print over each other
            text=[e.id for e in mine], textposition=["top center" if k % 2 else "bottom center"
                                                     for k in range(len(mine))], cliponaxis=False,
            marker={"size": 11, "symbol": ["circle" if e.id in active else "circle-open" for e in mine]},
            hovertext=[f"{e.id} {e.editor or ','.join(e.targets or [])} by {e.author}" for e in mine]))
    fig.update_layout(height=180 + 50 * len(kinds), margin={"t": 40, "l": 90}, xaxis_title="time (UTC)",
                      title="filled: in force", showlegend=False, yaxis={"automargin": True})
    out.append(("Timeline", fig))
    edits = [e for e in events if e.kind in EDIT_KINDS and e.metrics_after]
    keys = [k for k in METRICS if any((e.metrics_after or {}).get(k) is not None for e in edits)]
    if edits and keys:
        fig = go.Figure()
        for j, k in enumerate(keys):
            ys = [(e.metrics_after or {}).get(k) for e in edits]
            ivs = [((e.context or {}).get("intervals_after") or {}).get(k) for e in edits]
            err = None
            if any(iv is not None for iv in ivs):
                err = {"type": "data", "symmetric": False,
                       "array": [iv["hi"] - y if iv and y is not None else 0 for iv, y in zip(ivs, ys)],
                       "arrayminus": [y - iv["lo"] if iv and y is not None else 0 for iv, y in zip(ivs, ys)]}
            # markers, not lines: consecutive edits may be different editors on different
            # requests; each metric a little to the side, so values at 1.0 do not hide each other
            shift = (j - (len(keys) - 1) / 2) * 0.12
            fig.add_trace(go.Scatter(x=[i + shift for i in range(len(edits))], y=ys, mode="markers", name=k,
                                     error_y=err, marker={"size": 9}))
        fig.update_layout(yaxis_range=[-0.02, 1.08], height=380, margin={"t": 30},
                          yaxis_title="after the edit [95% interval]",
                          xaxis={"tickvals": list(range(len(edits))), "ticktext": [f"{e.id} {e.editor}" for e in edits],
                                 "tickangle": -45 if len(edits) > 8 else 0})
        out.append(("Metrics over edits", fig))
    applied = [e for e in events if e.kind == "edit"]
    if applied:
        n = wb.adapter.num_layers
        sizes = [layer_changes(wb.adapter, wb.patch(e.id), split=True) for e in applied]
        names = [f"{e.id} {e.editor}" + ("" if e.id in active else " (reverted)") for e in applied]
        for part, title, bar in ((0, "Weights changed, per layer (‖after − before‖)", "‖Δ‖"),
                                 (1, "Attached, per layer (norm of the side memory, codebook or adapter)", "norm")):
            z = [[s[part].get(i, 0.0) for i in range(n)] for s in sizes]
            if not any(v for row in z for v in row):
                continue
            fig = go.Figure(go.Heatmap(z=z, x=[f"layer {i}" for i in range(n)], y=names, colorscale="Viridis",
                                       colorbar_title=bar, name=bar))
            fig.update_layout(height=140 + 28 * len(applied), margin={"t": 30}, yaxis_autorange="reversed")
            out.append((title, fig))
    return out


def _metrics_table(e) -> str:
    from workbench.eval.stats import fmt
    ctx = e.context or {}
    ivb, iva = ctx.get("intervals_before") or {}, ctx.get("intervals_after") or {}
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(fmt(e.metrics_before.get(k), ivb.get(k)))}</td>"
                   f"<td>{_e(fmt(v, iva.get(k)))}</td></tr>" for k, v in (e.metrics_after or {}).items()
                   if isinstance(v, (int, float)) or v is None)
    return f"<table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>" if rows else ""


def _requests_table(e) -> str:
    reqs = e.requests or []
    if not reqs:
        return ""
    cols = [c for c in ("prompt", "target_new", "prefix", "suffix", "kind") if any(c in r for r in reqs)]
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in reqs[:200])
    more = f"<p>… and {len(reqs) - 200} more</p>" if len(reqs) > 200 else ""
    return (f"<table><tr>{''.join(f'<th>{_e(c)}</th>' for c in cols)}</tr>{body}</table>{more}")


def _event_html(e, active) -> str:
    ctx = e.context or {}
    status = "in force" if e.id in active else ("rejected" if e.kind == "rejected" else "")
    gates = "".join(f"<li>{_e(g['gate'])}: {'passed' if g['passed'] else 'FAILED'}"
                    + ("" if g.get("margin") is None else f" (margin {g['margin']:+.4f})") + "</li>"
                    for g in ctx.get("gates") or [])
    parts = [f"<p><b>{_e(e.kind)}</b> {_e(e.editor or '→ ' + ', '.join(e.targets or []))} by <b>{_e(e.author)}</b> "
             f"at {_e(e.created_at)}" + (f" in {e.duration_s:.2f} s" if e.duration_s is not None else "")
             + (f" · <i>{_e(status)}</i>" if status else "") + "</p>",
             f"<p>weights {_e(e.weights_before[:16])}… → {_e(e.weights_after[:16])}…"
             + (f" · patch sha256 {_e(e.patch_sha256[:16])}…" if e.patch_sha256 else "") + "</p>"]
    if e.note:
        parts.append(f"<p>note: {_e(e.note)}</p>")
    if ctx.get("plan"):
        parts.append(f"<p>plan {_e(ctx['plan'].get('file'))}, step {_e(ctx['plan'].get('step'))}</p>")
    if e.hparams:
        parts.append("<p>hyper-parameters (as run): <code>" + _e(json.dumps(e.hparams, sort_keys=True)) + "</code></p>")
    if gates:
        parts.append(f"<ul>{gates}</ul>")
    parts += [_metrics_table(e), _requests_table(e)]
    return (f'<details id="{_e(e.id)}"><summary>{_e(e.id)} · {_e(e.kind)} · {_e(e.editor or "")} · '
            f'{_e(e.author)}</summary>{"".join(parts)}</details>')


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%;
text-align:left;vertical-align:top}.ok{color:#1a7f37}.bad{color:#c62828}summary{cursor:pointer;padding:2px 0}"""


def write_report(wb, out, *, replay: bool = False) -> Path:
    """Write the report of session `wb`'s workspace to `out` (atomically); `replay` also replays
    every event on a fresh copy of the base (`Workbench.verify`), else the chain and files only."""
    import os
    from plotly.offline import get_plotlyjs
    from workbench.core.ledger import utc_now
    out = Path(out)
    events, active = wb.log(), wb.active()
    problems = wb.verify(replay=replay)
    check = (f'<p class="ok">intact: {len(events)} events; hash chain and patch files'
             + (", and replaying every event gives its recorded weights" if replay else "") + "</p>"
             if not problems else '<ul class="bad">' + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    figs = "".join(f"<h2>{_e(t)}</h2>" + f.to_html(full_html=False, include_plotlyjs=False,
                                                  div_id=f"fig{i}", config={"displaylogo": False})
                   for i, (t, f) in enumerate(figures(wb, events, active)))
    rows = "".join(f'<tr><td><a href="#{_e(e.id)}">{_e(e.id)}</a></td><td>{_e(e.kind)}</td>'
                   f"<td>{_e(e.editor or '→ ' + ','.join(e.targets or []))}</td><td>{_e(e.author)}</td>"
                   f"<td>{_e(e.created_at)}</td><td>{'yes' if e.id in active else ''}</td>"
                   f"<td>{_e(e.note or '')}</td></tr>" for e in events)
    tags = wb.ledger.tags()
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>workbench audit: {_e(wb.workspace.name)}</title>
<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>
<h1>Audit report: workspace {_e(wb.workspace.name)}</h1>
<p>base model {_e(wb.model_dir.name)} (weights sha256 {_e(wb.base_hash)}); now {_e(wb.weights_hash())};
in force: {_e(', '.join(active) or 'none')}{'; tags: ' + _e(', '.join(f'{k} → {v}' for k, v in tags.items()))
                                            if tags else ''}</p>
<p>written {_e(utc_now())} by {_e(wb.author)}</p>
<h2>History check</h2>{check}
{figs}
<h2>Events</h2><table><tr><th>id</th><th>kind</th><th>editor / targets</th><th>author</th><th>time (UTC)</th>
<th>in force</th><th>note</th></tr>{rows}</table>
{''.join(_event_html(e, active) for e in events)}
</body></html>
"""
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, out)
    return out
