"""Widgets and charts shared by the pages. Everything that changes the model goes through
the session API (`Workbench.edit`, `rollback`, ...); what is here only reads.

Example:
    >>> params = hparam_widgets("ft", key="edit")            # inside a page  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path

import streamlit as st

from workbench.core.errors import WorkbenchError
from workbench.core.paths import BENCHMARKS, DEFAULT_MODEL, WORLD  # noqa: F401 (pages read them here)
from workbench.eval.metrics import metric_names

MAX_UPLOAD_MB = 50  # request files are small; the server refuses larger uploads too (ui/launch.py)


@contextlib.contextmanager
def shown_errors(what: str):
    """Show a failure of `what` as a readable message on the page instead of a traceback;
    the session API changes nothing when it raises, so the page simply keeps working."""
    try:
        yield
    except WorkbenchError as e:
        st.error(f"{what}: {e}")
    except (ValueError, TypeError, OSError) as e:  # e.g. a malformed upload or a bad folder
        st.error(f"{what}: {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------- hyperparameters

DERIVED = "(derived from the model)"


def editors_for(kind: str) -> list[str]:
    """The registered editors a page offers: "edit" (edit requests; not the ones that compose
    recorded adapters, which the Merge page drives) or "forget"."""
    from workbench.editing.registry import describe_editor, editor_names
    caps = {n: describe_editor(n)["capabilities"] for n in editor_names()}
    if kind == "forget":
        return [n for n, c in caps.items() if c["forget"]]
    return [n for n, c in caps.items() if not c["forget"] and not c["composes"]]


def hparam_widgets(editor: str, *, key: str) -> dict:
    """One widget per field of the editor's hyperparameter dataclass, its help as tooltip.

    Returns only the values the user changed, as strings (the CLI's `K=V` form), so fields
    left alone keep their defaults — including the ones derived from the model."""
    from workbench.editing.registry import describe_editor
    out = {}
    cols = st.columns(2)
    for i, f in enumerate(describe_editor(editor)["hyperparameters"]):
        name, typ, default = f["name"], f["type"], f["default"]
        wkey = f"{key}_{editor}_{name}"
        with cols[i % 2]:
            if f.get("choices"):
                # a choice is picked, never typed: the spec's choices are the only values allowed
                options = [DERIVED] * (default is None) + [str(c) for c in f["choices"]]
                value = st.selectbox(name, options, index=options.index(str(default)) if default is not None
                                     and str(default) in options else 0, help=f["help"], key=wkey)
                changed, text = value != (DERIVED if default is None else str(default)), value
            elif typ == "bool":
                value = st.checkbox(name, value=bool(default), help=f["help"], key=wkey)
                changed, text = value != bool(default), str(value).lower()
            elif typ == "int" and default is not None:
                # No min/max here on purpose: the dataclass validates, and its message names
                # the allowed range, exactly as on the command line.
                value = st.number_input(name, value=int(default), step=1, help=f["help"], key=wkey)
                changed, text = value != default, str(int(value))
            else:
                shown = "" if default is None else (",".join(map(str, default)) if isinstance(default, tuple)
                                                    else str(default))
                value = st.text_input(name, value=shown, help=f["help"], key=wkey,
                                      placeholder="derived from the model" if default is None else None)
                # cleared: passed on as "", which the field's validation reports by name
                changed, text = value.strip() != shown, value.strip()
        if changed:
            out[name] = text
    return out


# ---------------------------------------------------------------------------- requests

def load_uploaded(upload) -> list:
    """Requests from an uploaded file, through the same loader (and errors) as the CLI.

    The loader detects the format from the content and the suffix, so the upload is written
    to a temporary file with its own name."""
    from workbench.core.errors import InputError
    from workbench.eval.requests import load_requests
    data = upload.getvalue()
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise InputError(f"{len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB limit for request files",
                         file=upload.name)
    # Only the suffix of the user's file name is used (for format detection): the copy lives in
    # a fresh temporary folder under a fixed name, so no name can point outside it.
    suffix = Path(upload.name).suffix or ".jsonl"
    if not re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix):
        suffix = ".jsonl"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_requests(path)
        except WorkbenchError as e:
            # name the file the user knows, not our temporary copy
            raise type(e)(str(e).replace(str(path), upload.name)) from None


def edit_requests(*, key: str) -> list:
    """The edit requests a page works on, from a composed request, the world's counterfactual
    set, an uploaded file or a file on this machine (any format the CLI reads: native JSONL,
    ZsRE, CounterFact, EasyEdit/KnowEdit, WISE); [] with the reason on the page when unusable."""
    from workbench.eval.requests import EditRequest, load_requests
    source = st.radio("source", ["compose", "world set", "upload", "file on this machine"], horizontal=True,
                      key=f"{key}_source")
    reqs: list = []
    with shown_errors("these requests cannot be used"):
        if source == "compose":
            c = st.columns(2)
            prompt = c[0].text_input("prompt", value="Wymkeark Holviol is a citizen of", key=f"{key}_prompt")
            target = c[1].text_input("new target", value="Kelmoria", key=f"{key}_target")
            rephrases = st.text_area("rephrased prompts (generality), one a line",
                                     value="The nation that Wymkeark Holviol belongs to is", key=f"{key}_rephrase")
            locality = st.text_area("locality probes, one a line as `prompt => answer`",
                                    value="Every day Kainio Fethbrai feeds the family => beagle", key=f"{key}_locality")
            loc = []
            for i, line in enumerate(locality.splitlines(), 1):
                if line.strip():
                    if "=>" not in line:
                        raise ValueError(f"locality line {i}: expected `prompt => answer`, got {line!r}")
                    p, a = line.split("=>", 1)
                    loc.append((p.strip(), a.strip()))
            return [EditRequest(prompt.strip(), target.strip(), locality=loc,
                                rephrase_prompts=[r.strip() for r in rephrases.splitlines() if r.strip()])]
        if source == "world set":
            c = st.columns(2)
            start = c[0].number_input("first request (index)", 0, 999, 0, key=f"{key}_start")
            count = c[1].number_input("how many", 1, 50, 1, key=f"{key}_count")
            return world_set("edits_counterfactual.jsonl", int(start), int(count))
        if source == "upload":
            up = st.file_uploader("request file (native JSONL, ZsRE, CounterFact, EasyEdit/KnowEdit, WISE)",
                                  key=f"{key}_upload")
            reqs, name = (load_uploaded(up), up.name) if up is not None else ([], "")
        else:
            c = st.columns([3, 1, 1])
            path = c[0].text_input("request file (native JSONL, ZsRE, CounterFact, EasyEdit/KnowEdit, WISE)",
                                   key=f"{key}_path", placeholder="/path/to/zsre_eval.json")
            start = c[1].number_input("first request (index)", 0, None, 0, key=f"{key}_path_start")
            count = c[2].number_input("how many", 1, 1000, 10, key=f"{key}_path_count")
            name = path.strip()
            reqs = load_requests(Path(name).expanduser())[int(start):int(start) + int(count)] if name else []
        if any(not isinstance(r, EditRequest) for r in reqs):
            raise ValueError(f"{name} holds forget requests; use the Unlearn page")
    return reqs


def world_set(name: str, start: int, count: int) -> list:
    return _cached_set(name)[start:start + count]


@st.cache_resource(show_spinner=False)
def _cached_set(name: str) -> list:
    # Request sets are read-only (frozen dataclasses), so one copy serves every session.
    from workbench.eval.requests import load_requests
    return load_requests(BENCHMARKS / name)


@st.cache_resource(show_spinner=False)
def shipped_world():
    """The bundled world (read only, so one copy serves every session); None when it is absent."""
    from workbench.world import World
    return World.load(WORLD) if (WORLD / "world.json").is_file() else None


@st.cache_resource(show_spinner=False)
def suite_items(suite: str) -> list:
    """The bundled world's items of one suite (`World.suite_items`), built once (facts: 72k)."""
    return shipped_world().suite_items(suite)


@st.cache_resource(show_spinner=False)
def retain_probes(n: int) -> list:
    from workbench.eval.requests import load_probes
    return load_probes(BENCHMARKS / "retain.jsonl")[:n]


def markdown_frame(text: str):
    """The rows of a Markdown table (the benches' `table()` output) as a DataFrame, cells as
    printed (a value with its interval stays one cell, "0.950 [0.76, 0.99]")."""
    import pandas as pd
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    body = [r for r in split[1:] if not all(set(c) <= {"-", ":"} for c in r)]
    return pd.DataFrame(body, columns=split[0]) if split else pd.DataFrame()


def table_downloads(frame, name: str, *, key: str) -> None:
    """CSV and JSON download buttons for a results table."""
    c = st.columns(6)
    c[0].download_button("CSV", frame.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv",
                         key=f"{key}_csv")
    c[1].download_button("JSON", frame.to_json(orient="records", indent=2), file_name=f"{name}.json",
                         mime="application/json", key=f"{key}_json")


def requests_table(reqs: list) -> None:
    """Every field of the requests, lists too (rephrasings, locality and portability probes,
    retain items), each list shown in one cell."""
    import pandas as pd
    st.dataframe(pd.DataFrame([{k: cell(v) for k, v in r.to_dict().items()} for r in reqs]), hide_index=True,
                 width="stretch")


def cell(value) -> str | int | float | None:
    """A request field as one table cell: a list of probes as "prompt → answer" joined by " | "."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, dict):
        if "prompt" in value:
            return f"{value['prompt']} → {value.get('answer', value.get('target', ''))}"
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " | ".join(str(cell(v)) for v in value)
    return str(value)


def requests_of(events) -> list:
    """The requests recorded with ledger events, rebuilt as request objects."""
    from workbench.eval.requests.types import request_from_dict
    return [request_from_dict(d) for e in events for d in (e.requests or [])]


# ---------------------------------------------------------------------------- generations

def continuations(wb, prompts: list[str], n_tokens: int = 8) -> list[str]:
    """Greedy continuation of each prompt by the session's current model (read only)."""
    from workbench.eval.scoring import greedy_continuations, pad_id
    if not prompts:
        return []
    tok = wb.tok
    ids = tok(list(prompts), add_special_tokens=True)["input_ids"]
    gen = greedy_continuations(wb.model, ids, [n_tokens] * len(ids), pad_id=pad_id(tok))
    return [tok.decode(g, skip_special_tokens=True).strip() for g in gen]


def generation_rows(reqs: list, *, key: str) -> int:
    """How many probes to generate before and after (a number box; 12 by default, all at most)."""
    total = len(probe_prompts(reqs, None))
    return int(st.number_input(f"generations to show (of {total} probes)", min_value=1, max_value=max(total, 1),
                               value=min(12, max(total, 1)), step=1, key=f"{key}_gen_rows"))


def probe_prompts(reqs: list, limit: int | None = 12) -> list[tuple[str, str, str]]:
    """(role, prompt, expected) rows to generate before and after an edit: the edit prompt,
    its rephrases (generality) and its locality prompts; a forget prefix and its suffix."""
    return [row for r in reqs for row in r.probes()][:limit]


def apply_with_generations(wb, editor: str, reqs: list, params: dict, *, what: str, n_tokens: int = 8,
                           rows_limit: int = 12, **kw):
    """Generate before, apply through the session (measured, gated, recorded), generate after,
    inside a status box. Returns (event, rows, before, after) for `show_result`; `rows_limit`
    probes (edit prompts, rephrasings, locality prompts, forget prefixes) are generated."""
    rows = probe_prompts(reqs, rows_limit)
    with st.status(f"{editor} on {len(reqs)} {what}…", expanded=True) as status:
        st.write("generating with the model before…")
        before = continuations(wb, [p for _, p, _ in rows], n_tokens)
        st.write(f"measuring, running {editor} and measuring again…")
        event = wb.edit(editor, reqs, params, **kw)
        st.write("generating with the model in force after it…")
        after = continuations(wb, [p for _, p, _ in rows], n_tokens)
        if event.kind == "rejected":  # red, with what refused it: a rejection is not a success
            status.update(label=f"{event.id}: rejected by its gate in {event.duration_s:.2f} s — nothing changed",
                          state="error", expanded=False)
        else:
            status.update(label=f"{event.id}: {event.kind} in {event.duration_s:.2f} s", state="complete",
                          expanded=False)
    return event, rows, before, after


# The metric whose movement says the edit did anything, per kind of request.
TARGET_METRIC = {"edit": "reliability", "forget": "strict_recitation"}
UNMOVED = 0.01  # a change of the target metric smaller than this is "did not move"


def event_targets(event) -> str:
    """What an event aimed at, for a table cell: an edit's requested targets (the first few), a
    forget's suffixes, or the events an undo, rollback, revert or tag names."""
    if event.kind not in ("edit", "rejected"):
        return "→ " + ", ".join(event.targets or [])
    reqs = event.requests or []
    wanted = [str(r.get("target_new") or r.get("suffix") or "") for r in reqs]
    shown = ", ".join(w.strip() for w in wanted[:3] if w.strip())
    return shown + (f" (+{len(wanted) - 3} more)" if len(wanted) > 3 else "")


def failed_gates(event) -> list[str]:
    """Each gate the event failed, with the value it saw and the margin it missed by."""
    out = []
    for g in (event.context or {}).get("gates") or []:
        if g["passed"]:
            continue
        if g.get("measured") is None:
            out.append(f"`{g['gate']}` (not measured)")
        else:
            out.append(f"`{g['gate']}` (measured {g['measured']:.3f}, short by {-g['margin']:.3f})")
    return out


def unmoved(event) -> str | None:
    """A sentence when the edit left its target metric where it was (e.g. K-FAC with defaults on a
    string it does not reach), else None."""
    m = TARGET_METRIC["forget" if "strict_recitation" in (event.metrics_after or {}) else "edit"]
    b, a = (event.metrics_before or {}).get(m), (event.metrics_after or {}).get(m)
    if b is None or a is None or abs(a - b) >= UNMOVED:
        return None
    return (f"{event.id} did not move its target metric: {m} {b:.2f} → {a:.2f}. The edit is recorded, but the "
            "model answers these requests as before; try other hyper-parameters (or roll it back).")


def show_result(wb, event, rows, before, after, *, metrics, key: str, caption: str) -> None:
    """The outcome of `apply_with_generations`: in force or rejected, metrics before and after,
    generations side by side, and the charts the editor describes."""
    st.subheader("3. Result")
    if event.kind == "rejected":
        st.error(f"{event.id} was rejected and reverted — the model is unchanged. Gate(s) that failed: "
                 + "; ".join(failed_gates(event) or [event.note or "?"]))
        st.caption("The bars' \"after\" is what the edit reached before its gate refused it; the generations "
                   "below are from the model in force, which is the model before.")
    else:
        st.success(f"{event.id} is in force ({event.editor}, {event.duration_s:.2f} s). "
                   f"Roll it back on the History page.")
        warning = unmoved(event)
        if warning:
            st.warning(warning)
    before_after_chart(event, metrics, key=f"{key}_chart")
    with st.expander("all metrics"):
        metrics_table(event, key=f"{key}_metrics")
    st.caption(caption)
    side_by_side(rows, before, after)
    if event.kind == "edit":
        editor_charts(wb, event, key=key)


def side_by_side(rows, before: list[str], after: list[str]) -> None:
    import pandas as pd
    df = pd.DataFrame([{"role": role, "prompt": p, "expected": want, "before": b, "in force now": a}
                       for (role, p, want), b, a in zip(rows, before, after)])
    st.dataframe(df, hide_index=True, width="stretch")


# ---------------------------------------------------------------------------- charts

EDIT_METRICS = metric_names("edit", summary=True)
FORGET_METRICS = metric_names("forget", summary=True)


def before_after_chart(event, metrics=EDIT_METRICS, key: str = "chart"):
    """Grouped bars of the event's metrics before and after; returns the figure."""
    import plotly.graph_objects as go
    from workbench.bench.plots import error_bars
    names = [m for m in metrics if (event.metrics_after or {}).get(m) is not None]
    ctx = event.context or {}
    bars = []
    for label, attr, ivs in (("before", "metrics_before", ctx.get("intervals_before") or {}),
                             ("after", "metrics_after", ctx.get("intervals_after") or {})):
        vals = [(getattr(event, attr) or {}).get(m) for m in names]
        bars.append(go.Bar(name=label, x=names, y=vals, text=[bar_label(v) for v in vals], textposition="outside",
                           cliponaxis=False, error_y=error_bars([ivs.get(m) for m in names])))
    fig = go.Figure(bars)
    if event.kind == "rejected":
        fig.data[1].name = "after (rejected; reverted)"
    fig.update_layout(barmode="group", yaxis_range=[0, 1.15], height=340, margin=dict(t=30, b=10),
                      title=f"{event.id}: {event.editor} ({event.kind})")
    st.plotly_chart(fig, key=key)
    return fig


def bar_label(value) -> str:
    """A bar's label: its value (a zero is labelled "0.00", so it is not read as a missing metric),
    "—" where the metric was not measured."""
    return "—" if value is None else f"{value:.2f}"


def metrics_table(event, *, key: str | None = None) -> None:
    """Every metric before and after, each with its 95% interval where the event recorded one;
    with `key`, CSV and JSON downloads of the table."""
    import pandas as pd
    keys = list(event.metrics_after or {})
    ctx = event.context or {}

    def bounds(which: str, k: str):
        iv = (ctx.get(f"intervals_{which}") or {}).get(k)
        return "" if not iv else f"[{iv['lo']:.3f}, {iv['hi']:.3f}]"

    frame = pd.DataFrame({"metric": keys,
                          "before": [(event.metrics_before or {}).get(k) for k in keys],
                          "before 95% interval": [bounds("before", k) for k in keys],
                          "after": [(event.metrics_after or {}).get(k) for k in keys],
                          "after 95% interval": [bounds("after", k) for k in keys]})
    st.dataframe(frame, hide_index=True)
    if key is not None:
        table_downloads(frame, f"{event.id}_metrics", key=key)
    if ctx.get("intervals_after"):
        from workbench.eval.stats import RULE
        st.caption(RULE + ".")


def editor_charts(wb, event, *, key: str) -> None:
    """Draw the charts the event's editor describes from its patch (`Editor.charts`)."""
    import plotly.graph_objects as go
    from workbench.editing.registry import get_editor
    for i, chart in enumerate(get_editor(event.editor).charts(patch_of(wb, event))):
        if chart.kind == "line":
            traces = [go.Scatter(x=[j * chart.x_stride for j in range(len(ys))], y=ys, mode="lines", name=name)
                      for name, ys in chart.series.items()]
        else:
            # one set of bins for every series: each on its own 60 bins, a small subset (the pruned
            # neurons) drew wide bars across the whole score range
            values = [float(v) for xs in chart.series.values() for v in xs]
            lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
            bins = {"start": lo, "end": hi, "size": (hi - lo) / 60 or 1.0}
            traces = [go.Histogram(x=xs, name=name, opacity=0.6, xbins=bins, autobinx=False)
                      for name, xs in chart.series.items()]
        fig = go.Figure(traces)
        if chart.marker is not None:
            fig.add_vline(x=chart.marker[0], line_dash="dash", line_color="red", annotation_text=chart.marker[1])
        fig.update_layout(title=chart.title, xaxis_title=chart.x_label, yaxis_title=chart.y_label,
                          barmode="overlay", height=320, margin=dict(t=40))
        if chart.log_y:
            fig.update_yaxes(**log_axis([v for ys in chart.series.values() for v in ys]))
        st.plotly_chart(fig, key=f"{key}_chart_{event.id}_{i}")


def log_axis(values) -> dict:
    """A log axis labelled in one notation (10⁻¹⁶ … 10², never µ/n/p beside powers of ten) with
    about six labels whatever the span, so they never crowd."""
    import math
    pos = [float(v) for v in values if v is not None and float(v) > 0]
    decades = math.log10(max(pos)) - math.log10(min(pos)) if pos else 1.0
    return {"type": "log", "exponentformat": "power", "dtick": max(1, math.ceil(decades / 6)), "minor_showgrid": False}


# ---------------------------------------------------------------------------- patches

def patch_of(wb, event):
    """The saved patch of a ledger edit (the session's cached loader, which also imports the
    editor that defines the patch's attachment kinds)."""
    return wb.patch(event.id)
