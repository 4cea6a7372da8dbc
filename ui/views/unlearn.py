"""Unlearn page: a forget set, a forget editor, recitation before and after, and what the
editor saw: the K-FAC curvature spectrum with the ρ cut, or the pruning neuron scores."""
import plotly.graph_objects as go
import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("Unlearn")
wb = get_workbench()
if wb is None:
    st.stop()

from workbench.editing.registry import describe_editor, editor_names  # noqa: E402
from workbench.eval.requests import ForgetRequest  # noqa: E402
from workbench.eval.requests.types import with_retain  # noqa: E402

SETS = {"canaries (memorized secrets)": "forget_canaries.jsonl", "people (forget-split facts)": "forget_people.jsonl"}

st.subheader("1. Forget set")
source = st.radio("source", [*SETS, "upload"], horizontal=True, key="unlearn_source")
reqs: list = []
with common.shown_errors("these requests cannot be used"):
    if source in SETS:
        c = st.columns(2)
        start = c[0].number_input("first request (index)", 0, 999, 0, key="unlearn_start")
        count = c[1].number_input("how many", 1, 50, 2, key="unlearn_count")
        reqs = common.world_set(SETS[source], int(start), int(count))
    else:
        up = st.file_uploader("forget file (native JSONL, TOFU)", key="unlearn_upload")
        if up is not None:
            reqs = common.load_uploaded(up)
            if any(not isinstance(r, ForgetRequest) for r in reqs):
                reqs = []
                raise ValueError(f"{up.name} holds edit requests; use the Edit page")
    n_retain = st.number_input("retain probes attached (what must survive; prune contrasts with them)",
                               0, 500, 40, key="unlearn_retain")
    if reqs and n_retain:
        # Requests that carry their own retain set keep it; the others get the world's.
        mine = [r for r in reqs if r.retain]
        reqs = mine + with_retain([r for r in reqs if not r.retain], common.retain_probes(int(n_retain)))
if reqs:
    st.caption(f"{len(reqs)} forget request(s)")
    common.requests_table(reqs)

st.subheader("2. Editor")
names = [n for n in editor_names() if describe_editor(n)["capabilities"]["forget"]]
editor = st.selectbox("editor", names, index=names.index("prune") if "prune" in names else 0, key="unlearn_editor")
st.caption(describe_editor(editor)["doc"])
with st.expander("hyperparameters", expanded=True):
    params = common.hparam_widgets(editor, key="unlearn")
note = st.text_input("note", key="unlearn_note")

if st.button("Apply", type="primary", key="unlearn_apply", disabled=not reqs):
    rows = common.probe_prompts(reqs)
    n_tok = max(len(wb.tok(" " + r.suffix, add_special_tokens=False)["input_ids"]) for r in reqs)
    with common.shown_errors("nothing was removed"):
        with st.status(f"{editor} on {len(reqs)} forget request(s)…", expanded=True) as status:
            st.write("reciting with the model before…")
            before = common.continuations(wb, [p for _, p, _ in rows], n_tok)
            st.write(f"measuring, running {editor} (K-FAC collects curvature once, then it is cached) "
                     f"and measuring again…")
            event = wb.apply(editor, reqs, params, note=note.strip() or None)
            st.write("reciting with the model after…")
            after = common.continuations(wb, [p for _, p, _ in rows], n_tok)
            status.update(label=f"{event.id}: {event.kind} in {event.duration_s:.2f} s", state="complete",
                          expanded=False)
        st.session_state["last_unlearn"] = (event, rows, before, after)


def spectrum(meta: dict) -> None:
    """Sorted curvature mass λ_G·λ_A per edited weight, with the ρ cut: everything right of
    the line (low curvature, where memorized strings live) was removed."""
    for name, s in meta["spectra"].items():
        stride = s.get("mass_sorted_stride", 1)
        xs = [i * stride for i in range(len(s["mass_sorted"]))]
        fig = go.Figure(go.Scatter(x=xs, y=s["mass_sorted"], mode="lines", name="mass"))
        fig.add_vline(x=s["kept"], line_dash="dash", line_color="red",
                      annotation_text=f"ρ cut: {s['kept']:,} of {s['components']:,} kept")
        fig.update_layout(title=name, yaxis_type="log", xaxis_title="component (by curvature mass)",
                          yaxis_title="λ_G·λ_A", height=300, margin=dict(t=40))
        st.plotly_chart(fig, key=f"spectrum_{name}")


def neuron_scores(meta: dict) -> None:
    """Histogram of the first step's per-neuron forget-vs-retain scores, per layer, and of the
    neurons finally pruned (the tail the editor cut)."""
    pruned = [v[i] for k, v in meta["scores"].items() for i in meta.get("pruned", {}).get(k, []) if i < len(v)]
    fig = go.Figure([go.Histogram(x=v, name=f"layer {k}", opacity=0.5, nbinsx=60)
                     for k, v in meta["scores"].items()]
                    + ([go.Histogram(x=pruned, name="pruned", opacity=0.9, nbinsx=60, marker_color="black")]
                       if pruned and meta.get("scoring") != "wxa" else []))
    fig.update_layout(barmode="overlay", yaxis_type="log", xaxis_title=f"score ({meta.get('scoring')})",
                      yaxis_title="neurons", height=320, margin=dict(t=30),
                      title=f"{meta.get('pruned_total')} unit(s) pruned in {meta.get('steps')} step(s)")
    st.plotly_chart(fig, key="neuron_scores")


if "last_unlearn" in st.session_state:
    event, rows, before, after = st.session_state["last_unlearn"]
    st.subheader("3. Result")
    if event.kind == "rejected":
        st.warning(f"{event.id} was rejected and reverted: {event.note}")
    else:
        st.success(f"{event.id} is in force ({event.editor}, {event.duration_s:.2f} s)")
    common.before_after_chart(event, common.FORGET_METRICS, key="unlearn_chart")
    with st.expander("all metrics"):
        common.metrics_table(event)
    st.caption("recitation before and after (greedy, as many tokens as the suffix)")
    common.side_by_side(rows, before, after)
    if event.kind == "edit":
        meta = common.patch_of(wb, event).meta
        if "spectra" in meta:
            st.subheader("K-FAC curvature spectrum")
            spectrum(meta)
        if "scores" in meta:
            st.subheader("Neuron scores")
            neuron_scores(meta)
