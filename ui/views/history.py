"""History page: the ledger as a timeline, metrics over edits, a per-layer map of what
changed, verify, roll back, and downloads (bundle, JSON report)."""
import json
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("History")
wb = get_workbench()
if wb is None:
    st.stop()

events = wb.log()
active = wb.active()
st.caption(f"workspace `{wb.workspace}` · base `{wb.base_hash[:12]}…` · in force: {', '.join(active) or 'none'}")
if not events:
    st.info("No edits yet: apply one on the Edit, Unlearn or Merge page.")

if events:
    table = pd.DataFrame([{
        "id": e.id, "kind": e.kind, "editor": e.editor or "", "targets": common.event_targets(e),
        "in force": e.id in active, "author": e.author, "time": e.created_at,
        "reliability": (e.metrics_after or {}).get("reliability"),
        "locality": (e.metrics_after or {}).get("locality"),
        "strict_recitation": (e.metrics_after or {}).get("strict_recitation"),
        "note": e.note or ""} for e in events])
    # the same figures as the HTML audit report (`workbench report`)
    from workbench.editing.report import figures
    figs = []
    with common.shown_errors("reading the patch files failed"):
        figs = figures(wb, events, active)
    if figs:
        st.subheader("Timeline")
        st.plotly_chart(figs[0][1], key="history_timeline")
    st.dataframe(table, hide_index=True, width="stretch")

    cardable = [e for e in events if e.kind in ("edit", "rejected")]
    if cardable:
        from workbench.core.model import model_path
        from workbench.editing.card import evaluation_card, shown_path
        st.subheader("Evaluation card")
        pick = st.selectbox("edit", [e.id for e in reversed(cardable)], key="history_card_pick")
        chosen = next(e for e in cardable if e.id == pick)
        card = evaluation_card(chosen, events, active, base_model=shown_path(wb.model_dir, model_path(None)),
                               workspace=shown_path(wb.workspace))
        with st.expander(f"card of {pick}", expanded=True):
            st.markdown(card)
        st.download_button("this card (Markdown)", card, file_name=f"{pick}_card.md", mime="text/markdown",
                           key="history_card_download")

    for i, (title, fig) in enumerate(figs[1:]):
        st.subheader(title)
        st.plotly_chart(fig, key=f"history_fig{i + 1}")

st.subheader("Audit and roll back")
c = st.columns(3)
if c[0].button("Verify (hash chain, patches, replay)", key="history_verify"):
    with common.shown_errors("verify failed"), st.spinner("replaying the history on a fresh copy of the base…"):
        problems = wb.verify()
        st.session_state["last_verify"] = problems
if "last_verify" in st.session_state:
    problems = st.session_state["last_verify"]
    if problems:
        st.error("verify found problems:\n\n" + "\n".join(f"- {p}" for p in problems))
    else:
        st.success(f"intact: {len(events)} events, chain and patch files intact, replay matches")

target = c[1].selectbox("roll back to", ["base", *active], key="history_target")
if c[1].button("Roll back", key="history_rollback", disabled=not active):
    with common.shown_errors("roll back refused"), st.spinner(f"rolling back to {target}…"):
        e = wb.rollback(target)
        st.session_state["last_rollback"] = f"{e.id}: rolled back {', '.join(e.targets)}"
        st.session_state.pop("last_verify", None)
        st.rerun()  # the timeline above was drawn before the rollback
if "last_rollback" in st.session_state:
    st.success(st.session_state["last_rollback"])
one = c[2].selectbox("revert one edit", active or ["—"], key="history_one")
if c[2].button("Revert this one", key="history_revert", disabled=not active):
    with common.shown_errors("revert refused"):
        e = wb.revert(one)
        st.session_state["last_rollback"] = f"{e.id}: reverted {', '.join(e.targets)}"
        st.rerun()

st.subheader("Download")
c = st.columns(2)
report = {"workspace": str(wb.workspace), "base_model": str(wb.model_dir), "base_hash": wb.base_hash,
          "active": active, "events": [e.to_dict() for e in events]}
c[0].download_button("JSON report", json.dumps(report, indent=2, sort_keys=True), file_name="workbench-report.json",
                     mime="application/json", key="history_report")
if active:
    with common.shown_errors("the bundle could not be written"):
        with tempfile.TemporaryDirectory() as d:
            data = Path(wb.bundle(Path(d) / "history.wbbundle")).read_bytes()
        c[1].download_button("bundle of the edits in force", data, file_name="history.wbbundle",
                             key="history_bundle")
else:
    c[1].caption("no edit in force: nothing to bundle")

st.subheader("Export a checkpoint")
st.caption("The model as it now is, as a plain Hugging Face checkpoint in a new folder on this machine "
           "(`workbench export`); it holds `workbench_edits.json`, the edits in it. Edits that attach "
           "modules (side memories, codebooks, adapters) cannot be exported this way.")
folder = st.text_input("new folder", key="history_export_folder", placeholder="/path/to/edited-model")
if st.button("Export", key="history_export", disabled=not (folder.strip() and active)):
    with common.shown_errors("the checkpoint was not written"):
        from workbench.editing.session import PROVENANCE
        out = wb.export(Path(folder.strip()).expanduser())
        st.session_state["last_export"] = (str(out), json.loads((out / PROVENANCE).read_text()))
if "last_export" in st.session_state:
    where, prov = st.session_state["last_export"]
    st.success(f"wrote {where}: holds {len(prov['edits'])} edit(s) — "
               + ", ".join(f"{e['id']} ({e['editor']})" for e in prov["edits"]))
