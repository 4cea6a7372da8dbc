"""Unlearn page: a forget set, a forget editor, recitation before and after, and the charts the
editor describes from its patch (e.g. K-FAC's curvature spectrum with the ρ cut, pruning's
neuron scores)."""
import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("Unlearn")
wb = get_workbench()
if wb is None:
    st.stop()

from workbench.editing.registry import describe_editor  # noqa: E402
from workbench.eval.requests import ForgetRequest  # noqa: E402
from workbench.eval.requests.types import with_retain  # noqa: E402

SETS = {"canaries (memorized secrets)": "forget_canaries.jsonl", "people (forget-split facts)": "forget_people.jsonl",
        "quotes (memorized passages)": "forget_quotes.jsonl"}

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
names = common.editors_for("forget")
editor = st.selectbox("editor", names, index=names.index("prune") if "prune" in names else 0, key="unlearn_editor")
st.caption(describe_editor(editor)["doc"])
with st.expander("hyperparameters", expanded=True):
    params = common.hparam_widgets(editor, key="unlearn")
c = st.columns(2)
note = c[0].text_input("note", key="unlearn_note")
with c[1]:
    n_rows = common.generation_rows(reqs, key="unlearn") if reqs else 12

if st.button("Apply", type="primary", key="unlearn_apply", disabled=not reqs):
    n_tok = max(len(wb.tok(" " + r.suffix, add_special_tokens=False)["input_ids"]) for r in reqs)
    with common.shown_errors("nothing was removed"):
        # K-FAC collects curvature once per model and corpus; later runs read it from the cache.
        st.session_state["last_unlearn"] = common.apply_with_generations(
            wb, editor, reqs, params, what="forget request(s)", n_tokens=n_tok, note=note.strip() or None,
            rows_limit=n_rows)

if "last_unlearn" in st.session_state:
    common.show_result(wb, *st.session_state["last_unlearn"], metrics=common.FORGET_METRICS, key="unlearn",
                       caption="recitation before and after (greedy, as many tokens as the suffix)")

st.caption("The unlearning benchmark's results (every method and the retrain oracle) are on the Benchmarks page.")
