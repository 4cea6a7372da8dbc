"""Edit page: compose or pick requests, choose an editor and its hyperparameters, apply,
and compare metrics and generations before and after."""
import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("Edit")
wb = get_workbench()
if wb is None:
    st.stop()

from workbench.editing.registry import describe_editor  # noqa: E402  (after the early stop)

# ------------------------------------------------------------------ requests
st.subheader("1. Requests")
reqs = common.edit_requests(key="edit")
if reqs:
    st.caption(f"{len(reqs)} request(s)")
    common.requests_table(reqs)

# ------------------------------------------------------------------ editor
st.subheader("2. Editor")
names = common.editors_for("edit")
editor = st.selectbox("editor", names, index=names.index("grace") if "grace" in names else 0, key="edit_editor")
st.caption(describe_editor(editor)["doc"])
with st.expander("hyperparameters", expanded=True):
    params = common.hparam_widgets(editor, key="edit")
c = st.columns(3)
gates = c[0].text_input("gates (optional), e.g. reliability>=0.9,locality>=0.98", key="edit_gates")
note = c[1].text_input("note", key="edit_note")
with c[2]:
    n_rows = common.generation_rows(reqs, key="edit") if reqs else 12

# ------------------------------------------------------------------ apply
if st.button("Apply edit", type="primary", key="edit_apply", disabled=not reqs):
    with common.shown_errors("the edit was not applied"):
        st.session_state["last_edit"] = common.apply_with_generations(
            wb, editor, reqs, params, what="request(s)", gates=gates.strip() or None, note=note.strip() or None,
            rows_limit=n_rows)

if "last_edit" in st.session_state:
    common.show_result(wb, *st.session_state["last_edit"], metrics=common.EDIT_METRICS, key="edit",
                       caption="generations before and after (greedy, 8 tokens)")

st.caption("The lifelong benchmark's results (every editor against T) are on the Benchmarks page.")
