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


def figures(rows: list[dict]) -> dict:
    """{file suffix: figure} of every figure these rows can draw."""
    out = {"recitation_by_repeats": recitation_by_repeats(rows), "utility_vs_k": utility_vs_k(rows),
           "lifelong_vs_T": lifelong_vs_T(rows)}
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
