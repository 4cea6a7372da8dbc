"""Benchmarks page: the JSON the benches write (`workbench bench lifelong|unlearn|merge --json`)
as tables and charts — the README's tables, drawn — and a small bench run from the page, with
progress, on this session's base model (in scratch workspaces: the session is not touched)."""
import json

import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("Benchmarks")

from workbench.bench import lifelong, merge, unlearn  # noqa: E402
from workbench.bench.plots import figures, kind_of  # noqa: E402
from workbench.core.jsonio import read_json  # noqa: E402
from workbench.core.paths import BENCH_RESULTS  # noqa: E402

KINDS = {"lifelong": lifelong, "unlearn": unlearn, "merge": merge}
NOT_RESULTS = ("layout", "world_", "plan_vs")  # figure layouts, world-building runs, the plan timing


def show(kind: str, rows: list[dict], *, key: str) -> None:
    """A bench's rows as its Markdown table (downloadable) and every figure they draw."""
    text = KINDS[kind].table(rows)
    st.markdown(text)
    common.table_downloads(common.markdown_frame(text), f"{kind}_results", key=f"{key}_table")
    for name, fig in figures(rows).items():
        st.plotly_chart(fig, key=f"{key}_{name}")


st.subheader("Results")
st.caption("Lifelong: T sequential edits, all scored on the final model at each checkpoint, teacher-forced (solid) "
           "and exact greedy (dashed); several files are drawn together, each run named by its file. Unlearning: "
           "every method and the retrain oracle on the same forget sets. Merging: every peft combination type. "
           "Bars and whiskers are 95% intervals.")
shipped = sorted(p.name for p in BENCH_RESULTS.glob("*.json") if not any(s in p.name for s in NOT_RESULTS))
c = st.columns([2, 1])
picked = c[0].multiselect("shipped results", shipped, key="bench_pick")
other = c[1].text_input("or a results file", key="bench_path")
files = [other.strip()] if other.strip() else [str(BENCH_RESULTS / name) for name in picked]
if files:
    with common.shown_errors("cannot show these results"):
        by_kind: dict[str, list[str]] = {}
        for f in files:
            data = read_json(f)  # a missing file or bad JSON: named with its line
            kind = kind_of(data)
            if kind == "unknown":
                from workbench.core.errors import InputError
                raise InputError("not rows of `workbench bench lifelong|unlearn|merge --json` (a list of rows "
                                 "with T, set or method)", file=f)
            by_kind.setdefault(kind, []).append(f)
        if "lifelong" in by_kind:  # several lifelong runs share one table and one chart
            st.markdown(f"**Lifelong editing** ({', '.join(p.rsplit('/', 1)[-1] for p in by_kind['lifelong'])})")
            show("lifelong", lifelong.load_rows(by_kind["lifelong"]), key="bench_lifelong")
        for kind in ("unlearn", "merge"):
            for i, f in enumerate(by_kind.get(kind, [])):
                st.markdown(f"**{'Unlearning' if kind == 'unlearn' else 'Adapter merging'}** ({f.rsplit('/', 1)[-1]})")
                show(kind, KINDS[kind].load_rows(f), key=f"bench_{kind}_{i}")

st.subheader("Run a small bench")
wb = get_workbench()
if wb is None:
    st.stop()
st.caption(f"on this session's base model (`{wb.model_dir.name}`), in scratch workspaces: the session's own "
           "history is not touched. The full runs take minutes to half an hour; use the command line for those.")

kind = st.radio("bench", ["lifelong", "unlearn", "merge"], horizontal=True, key="bench_run_kind")
c = st.columns(3)
if kind == "lifelong":
    editors = c[0].multiselect("editors", common.editors_for("edit"), default=["grace"], key="bench_run_editors")
    ts = c[1].text_input("T values (comma-separated)", "1,4", key="bench_run_T")
    repeats = c[2].number_input("timed forward passes per checkpoint", 1, 20, 3, key="bench_run_repeats")
elif kind == "unlearn":
    editors = c[0].multiselect("editors", common.editors_for("forget"), default=["ga"],
                               key="bench_run_unlearn_editors")
    sets = c[1].multiselect("forget sets", list(unlearn.SETS), default=["quotes"], key="bench_run_sets")
    limit = c[2].number_input("requests per set (and held-out texts, utility items)", 1, 1000, 2,
                              key="bench_run_limit")
else:
    batches = c[0].number_input("adapters (batches)", 2, 20, 2, key="bench_run_batches")
    size = c[1].number_input("edits per adapter", 1, 100, 2, key="bench_run_size")
    types = c[2].multiselect("combination types", list(merge.ALL_TYPES), default=["linear", "ties"],
                             key="bench_run_types")

if st.button("Run", type="primary", key="bench_run"):
    with common.shown_errors("the bench did not run"):
        model = wb.model_dir
        if kind == "lifelong":
            try:
                t_values = [int(t) for t in ts.split(",") if t.strip()]
            except ValueError:
                raise ValueError(f"T values: expected comma-separated integers, got {ts!r}") from None
            rows = wb.run(lifelong.run, editors, t_values, model_dir=model, progress=False, repeats=int(repeats))
        elif kind == "unlearn":
            rows = wb.run(unlearn.run, editors, sets, model_dir=model, limit=int(limit), heldout_limit=int(limit),
                          exposure_samples=20, progress=False)
        else:
            rows = wb.run(merge.run, batches=int(batches), size=int(size), types=types, wise=False, model_dir=model,
                          progress=False)
        st.session_state["last_bench"] = (kind, rows)

if "last_bench" in st.session_state:
    ran, rows = st.session_state["last_bench"]
    st.success(f"{ran} bench: {len(rows)} row(s)")
    show(ran, rows, key="bench_ran")
    st.download_button("rows as JSON (the CLI's --json)", json.dumps(rows, indent=2, sort_keys=True),
                       file_name=f"{ran}.json", mime="application/json", key="bench_ran_json")
