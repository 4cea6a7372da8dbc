"""Plotly figures of the benchmarks' rows: for unlearning, recitation against how often a string
was trained on (the K-FAC paper's frequency axis) and utility as forget requests accumulate
(sustainability); for lifelong editing, reliability, generality and locality against T.
`workbench bench unlearn --json F` and `bench lifelong --json F` write them next to F as HTML;
the UI's Unlearn page draws the unlearning figures from a results file.

Example:
    >>> figs = figures(json.loads(Path("bench/results/unlearn_v2.json").read_text()))  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path


def _label(row: dict) -> str:
    return f"{row['editor']} ({row['set']})"


def recitation_by_repeats(rows: list[dict]):
    """Strict recitation per repetition count, before (dashed, once per set) and after each
    method; None when no row has a repetition count (e.g. forget-split people)."""
    import plotly.graph_objects as go
    fig, seen_sets = go.Figure(), set()
    for r in rows:
        after = r.get("after", {}).get("by_repeats") if "skipped" not in r else None
        if not after:
            continue
        if r["set"] not in seen_sets and r["before"].get("by_repeats"):
            seen_sets.add(r["set"])
            xs = sorted(r["before"]["by_repeats"], key=int)
            fig.add_trace(go.Scatter(x=[int(x) for x in xs], y=[r["before"]["by_repeats"][x] for x in xs],
                                     name=f"before ({r['set']})", mode="lines+markers", line={"dash": "dash"}))
        xs = sorted(after, key=int)
        fig.add_trace(go.Scatter(x=[int(x) for x in xs], y=[after[x] for x in xs], name=_label(r),
                                 mode="lines+markers"))
    if not fig.data:
        return None
    fig.update_layout(title="Strict recitation by how often the string was trained on",
                      xaxis={"title": "training repetitions", "type": "log"},
                      yaxis={"title": "strict recitation", "range": [-0.02, 1.02]})
    return fig


def utility_vs_k(rows: list[dict]):
    """Worst utility suite (share of before) and recitation of the forgotten slices as k
    sequential forget requests accumulate; None when no row has a sustainability run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2, subplot_titles=("utility: worst suite, share of before",
                                                        "strict recitation of the slices forgotten"))
    for r in rows:
        points = r.get("sustain") or []
        before = r.get("before", {}).get("utility") or {}
        if not points:
            continue
        ks = [p["k"] for p in points]
        worst = [min((p["utility"][n] / before[n] for n in p["utility"] if before.get(n)), default=None) for p in points]
        fig.add_trace(go.Scatter(x=ks, y=worst, name=_label(r), mode="lines+markers", legendgroup=_label(r)),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=ks, y=[p["forgotten"]["strict_recitation"] for p in points], name=_label(r),
                                 mode="lines+markers", legendgroup=_label(r), showlegend=False), row=1, col=2)
    if not fig.data:
        return None
    fig.update_xaxes(title_text="k (forget requests applied in sequence)", type="log")
    fig.update_layout(title="Sustainability")
    return fig


def error_bars(intervals: list[dict | None]) -> dict | None:
    """Plotly `error_y` for points with these 95% intervals ({value, lo, hi} each); a zero-length
    bar where a point has none (rows written before intervals were recorded), None when none has.

    Example:
        >>> error_bars([{"value": 0.5, "lo": 0.25, "hi": 0.75}, None])["arrayminus"]
        [0.25, 0.0]
    """
    if not any(intervals):
        return None
    return {"type": "data", "symmetric": False, "thickness": 1,
            "array": [iv["hi"] - iv["value"] if iv else 0.0 for iv in intervals],
            "arrayminus": [iv["value"] - iv["lo"] if iv else 0.0 for iv in intervals]}


def lifelong_vs_T(rows: list[dict]):
    """Reliability, generality and locality against T for every editor of a lifelong run,
    teacher-forced (solid) and exact (dashed); None when no row has a T."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    scored = [r for r in rows if "T" in r and "skipped" not in r]
    if not scored:
        return None
    fig = make_subplots(rows=1, cols=3, subplot_titles=("reliability", "generality", "locality"))

    def name(r):  # a row's series: its label (ablation runs of one editor), else its editor
        return r.get("label") or r["editor"]

    for editor in dict.fromkeys(name(r) for r in scored):
        mine = sorted((r for r in scored if name(r) == editor), key=lambda r: r["T"])
        for col, metric in enumerate(("reliability", "generality", "locality"), 1):
            for suffix, dash in (("", None), ("_exact", "dash")):
                m = metric + suffix
                fig.add_trace(go.Scatter(x=[r["T"] for r in mine], y=[r[m] for r in mine],
                                         error_y=error_bars([(r.get("intervals") or {}).get(m) for r in mine]),
                                         name=f"{editor}{' exact' if suffix else ''}", legendgroup=editor + suffix,
                                         showlegend=col == 1, mode="lines+markers", line={"dash": dash}),
                              row=1, col=col)
    fig.update_xaxes(title_text="T (sequential edits)", type="log")
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_layout(title="Lifelong editing: every edit so far scored at T (bars: 95% intervals over the requests)")
    return fig


UNLEARN_SHOWN = ("strict_recitation", "forget_recall", "retain_recall")


def unlearning_before_after(rows: list[dict]):
    """Per forget set, the forget and retain rates and every utility suite before (once) and after
    each method, the retrain oracle among them, with their 95% intervals; None without such rows."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    scored = [r for r in rows if "set" in r and isinstance(r.get("after"), dict) and "skipped" not in r]
    sets = list(dict.fromkeys(r["set"] for r in scored))
    if not sets:
        return None
    fig = make_subplots(rows=len(sets), cols=1, subplot_titles=[f"forget set: {s}" for s in sets],
                        vertical_spacing=0.3 / len(sets))
    palette: dict[str, int] = {}  # one colour (and one legend entry) a method across the subplots

    def bars(m: dict, name: str):
        suites = sorted(m.get("utility") or {})
        xs = [*UNLEARN_SHOWN, *(f"utility: {u}" for u in suites)]
        ys = [m.get(k) for k in UNLEARN_SHOWN] + [m["utility"][u] for u in suites]
        ivs = m.get("intervals") or {}
        first = name not in palette
        colour = palette.setdefault(name, len(palette))
        return go.Bar(x=xs, y=ys, name=name, legendgroup=name, showlegend=first,
                      marker_color=COLOURS[colour % len(COLOURS)],
                      error_y=error_bars([ivs.get(k) for k in UNLEARN_SHOWN] + [ivs.get(f"utility.{u}") for u in suites]))
    for i, s in enumerate(sets, 1):
        mine = [r for r in scored if r["set"] == s]
        for name, m in [("before", mine[0]["before"]), *((r["editor"], r["after"]) for r in mine)]:
            fig.add_trace(bars(m, name), row=i, col=1)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(barmode="group", height=330 * len(sets), title="Unlearning: before, each method after, and the "
                      "model retrained without the forget set (bars: 95% intervals)")
    return fig


def merge_methods(rows: list[dict]):
    """Reliability, generality and locality of every merge method (and the stacked sources), with
    their 95% intervals; None without merge rows."""
    import plotly.graph_objects as go
    scored = [r for r in rows if "method" in r]
    if not scored:
        return None
    methods = [r["method"] for r in scored]
    fig = go.Figure([go.Bar(x=methods, y=[r[m] for r in scored], name=m,
                            error_y=error_bars([(r.get("intervals") or {}).get(m) for r in scored]))
                     for m in ("reliability", "generality", "locality")])
    fig.update_layout(barmode="group", yaxis_range=[0, 1.05], title="Adapter merging: every edit scored on the merged "
                      "adapter alone (bars: 95% intervals over the edits)")
    return fig


def routing_confusion(confusion: dict, title: str = "Where each probe went"):
    """Heatmap of the routing counts: rows = the adapter holding the probe's edit ("none" for locality
    probes), columns = the adapter the probe read; each cell annotated with its count."""
    import plotly.graph_objects as go
    labels, counts = confusion["labels"], confusion["counts"]
    fig = go.Figure(go.Heatmap(z=counts, x=labels, y=labels, colorscale="Blues", text=counts,
                               texttemplate="%{text}", hovertemplate="held by %{y}, read %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="adapter read", yaxis_title="adapter holding the edit",
                      yaxis_autorange="reversed", height=max(320, 40 * len(labels) + 160))
    return fig


def merge_routing(rows: list[dict]):
    """The routing confusion of the retrieval row with refinement (else the first retrieval row);
    None without one."""
    routed = [r for r in rows if isinstance(r.get("routing"), dict)]
    if not routed:
        return None
    row = next((r for r in routed if r["method"] == "retrieval + refinement"), routed[0])
    return routing_confusion(row["routing"]["confusion"], f"{row['method']}: where each probe went "
                             "(rows: the adapter holding its edit, none for locality probes)")


COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff",
           "#fecb52")  # plotly's default sequence: one colour a method in every subplot


def kind_of(rows: list) -> str:
    """Which bench wrote these rows: "lifelong" (rows have a T), "unlearn" (a forget set) or
    "merge" (a merge method)."""
    first = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else {}
    return "lifelong" if "T" in first else "unlearn" if "set" in first else "merge" if "method" in first else "unknown"


def figures(rows: list[dict]) -> dict:
    """{file suffix: figure} of every figure these rows can draw."""
    out = {"recitation_by_repeats": recitation_by_repeats(rows), "utility_vs_k": utility_vs_k(rows),
           "lifelong_vs_T": lifelong_vs_T(rows), "before_after": unlearning_before_after(rows),
           "merge_methods": merge_methods(rows), "merge_routing": merge_routing(rows)}
    return {k: v for k, v in out.items() if v is not None}


def write_figures(rows: list[dict], json_path: Path) -> list[Path]:
    """Each figure as `<json stem>_<name>.html` next to `json_path`; plotly.js goes once into
    that folder (`plotly.min.js`), so the pages open offline."""
    written = []
    for name, fig in figures(rows).items():
        path = json_path.with_name(f"{json_path.stem}_{name}.html")
        fig.write_html(path, include_plotlyjs="directory")
        written.append(path)
    return written
