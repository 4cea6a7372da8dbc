"""Compare page: two to four editors, each with its hyper-parameters, on the same requests. Each
runs on the current model and is reverted exactly (`Workbench.compare`): nothing is recorded
until the user applies the one they choose, which then goes through the session like any edit."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("Compare")
wb = get_workbench()
if wb is None:
    st.stop()

from workbench.editing.registry import describe_editor  # noqa: E402  (after the early stop)
from workbench.eval.metrics import metric_names  # noqa: E402

st.subheader("1. Requests")
reqs = common.edit_requests(key="compare")
if reqs:
    st.caption(f"{len(reqs)} request(s)")
    common.requests_table(reqs)

st.subheader("2. Editors")
names = common.editors_for("edit")
default = [n for n in ("grace", "ft", "memoir") if n in names]  # three that run in seconds
chosen = st.multiselect("editors (2 to 4)", names, default=default, max_selections=4, key="compare_editors")
params = {}
for name in chosen:
    with st.expander(f"{name}: {describe_editor(name)['doc']}"):
        params[name] = common.hparam_widgets(name, key="compare")
ready = bool(reqs) and 2 <= len(chosen) <= 4
if not 2 <= len(chosen) <= 4:
    st.caption("choose two to four editors")

if st.button("Compare", type="primary", key="compare_run", disabled=not ready):
    with common.shown_errors("the comparison did not run"):
        st.session_state.pop("last_compare_applied", None)
        with st.status(f"{len(chosen)} editors on {len(reqs)} request(s), each on the current model…",
                       expanded=True) as status:
            st.write("measuring once before, then each editor: edit, measure, revert exactly…")
            rows = wb.compare(reqs, [(n, params[n]) for n in chosen])
            status.update(label=f"compared {', '.join(chosen)}; nothing recorded", state="complete", expanded=False)
        st.session_state["last_compare"] = (reqs, rows)

if "last_compare" in st.session_state:
    compared_reqs, rows = st.session_state["last_compare"]
    st.subheader("3. Side by side")
    st.caption("each editor alone on the model as it was (edits in force included), reverted afterwards; "
               "teacher-forced (token accuracy) and exact (greedy decoding gives the whole answer)")
    metrics = [m for m in metric_names("edit") if any(r["metrics_after"].get(m) is not None for r in rows)]

    def cell(r, m):
        v = r["metrics_after"].get(m)
        iv = (r.get("intervals_after") or {}).get(m)
        return None if v is None else (f"{v:.3f} [{iv['lo']:.2f}, {iv['hi']:.2f}]" if iv else f"{v:.3f}")
    before = rows[0]
    table = pd.DataFrame([{"editor": "(before)", **{m: cell({"metrics_after": before["metrics_before"],
                                                            "intervals_after": before["intervals_before"]}, m)
                                                   for m in metrics}, "seconds": None, "locality changed": None}]
                         + [{"editor": r["editor"], **{m: cell(r, m) for m in metrics}, "seconds": r["duration_s"],
                             "locality changed": r.get("locality_changed_count")} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch")
    common.table_downloads(table, "comparison", key="compare_table")

    from workbench.bench.plots import error_bars
    shown = [m for m in metrics if m.split("_")[0] in ("reliability", "generality", "locality")]

    def bar(name, values: dict, intervals: dict | None):
        ys = [values.get(m) for m in shown]
        return go.Bar(name=name, x=shown, y=ys, error_y=error_bars([(intervals or {}).get(m) for m in shown]),
                      text=[common.bar_label(v) for v in ys], textposition="outside", cliponaxis=False)
    bars = [bar("before", before["metrics_before"], before["intervals_before"])]
    bars += [bar(r["editor"], r["metrics_after"], r.get("intervals_after")) for r in rows]
    fig = go.Figure(bars)
    fig.update_layout(barmode="group", yaxis_range=[0, 1.15], height=380, margin=dict(t=30, b=10),
                      title="after each editor (before: the model now)", uniformtext_minsize=8)
    st.plotly_chart(fig, key="compare_chart")

    st.markdown("**Locality probes each editor changed** (greedy answer before → after)")
    examples = pd.DataFrame([{"editor": r["editor"], "prompt": c["prompt"], "expected": c["answer"],
                              "before": c["before"], "after": c["after"], "unchanged share": c["unchanged"]}
                             for r in rows for c in r.get("locality_changed", [])])
    if examples.empty:
        st.caption("none: no editor changed a locality probe's greedy answer")
    else:
        st.dataframe(examples, hide_index=True, width="stretch")

    st.subheader("4. Apply one")
    c = st.columns([2, 1])
    pick = c[0].selectbox("editor to apply", [r["editor"] for r in rows], key="compare_pick")
    if c[1].button("Apply this one", type="primary", key="compare_apply"):
        row = next(r for r in rows if r["editor"] == pick)
        with common.shown_errors("the edit was not applied"):
            event = wb.edit(pick, compared_reqs, row["params"], seed=row["seed"],
                            note=f"chosen in a comparison with {', '.join(r['editor'] for r in rows if r is not row)}")
            st.session_state["last_compare_applied"] = (event, row["metrics_after"])
    if "last_compare_applied" in st.session_state:
        event, compared = st.session_state["last_compare_applied"]
        if event.kind == "edit":
            same = event.metrics_after == compared
            st.success(f"{event.id} is in force ({event.editor}, {event.duration_s:.2f} s); its metrics "
                       + ("equal the comparison's." if same else "differ from the comparison's (the editor is not "
                                                                 "deterministic on this machine)."))
        else:
            st.error(f"{event.id} was rejected — the model is unchanged: {event.note}")
