"""Model page: architecture and sizes, the world it was trained on, and a prompt box."""
import json

import pandas as pd
import streamlit as st

from ui import common
from ui.state import get_workbench, replace_workbench

st.title("Model")
wb = get_workbench()

with st.expander("Load another model folder", expanded=wb is None):
    folder = st.text_input("model folder (a local Hugging Face checkpoint; empty: the shipped model)",
                           key="model_folder")
    if st.button("Load model", key="load_model"):
        with common.shown_errors(f"model folder {folder or '(shipped)'} did not load; the current model is kept"):
            replace_workbench(folder.strip() or None)
            st.session_state["last_loaded"] = f"loaded {folder or 'the shipped model'} in a fresh workspace"
            st.rerun()  # redraw every part of the page for the new model
    if "last_loaded" in st.session_state:
        st.success(st.session_state["last_loaded"])

if wb is not None:
    cfg = wb.model.config
    n_params = sum(p.numel() for p in wb.model.parameters())
    st.subheader("Architecture")
    c = st.columns(5)
    c[0].metric("type", cfg.model_type)
    c[1].metric("parameters", f"{n_params:,}")
    c[2].metric("layers", wb.adapter.num_layers)
    c[3].metric("hidden size", wb.adapter.hidden_size)
    c[4].metric("MLP neurons / layer", wb.adapter.num_neurons(0))
    st.caption(f"folder `{wb.model_dir}` · vocabulary {cfg.vocab_size:,} · context "
               f"{getattr(cfg, 'max_position_embeddings', None) or getattr(cfg, 'n_positions', '?')} · "
               f"base weights sha256 `{wb.base_hash[:16]}…` · workspace `{wb.workspace}` · "
               f"edits in force: {', '.join(wb.active()) or 'none'}")

    st.subheader("Ask the model")
    prompt = st.text_input("prompt", value="Q: Where was Lumtrus Vyser born? A:", key="model_prompt")
    n = st.slider("tokens to generate", 1, 32, 8, key="model_ntok")
    if st.button("Generate", key="model_generate") and prompt.strip():
        with common.shown_errors("generation failed"):
            st.session_state["last_answer"] = (prompt, common.continuations(wb, [prompt], n)[0])
    if "last_answer" in st.session_state:
        p, a = st.session_state["last_answer"]
        st.markdown(f"**{p}** → `{a}`")

world_json = common.WORLD / "world.json"
if world_json.exists():
    st.subheader("The world")
    world = json.loads(world_json.read_text())
    counts = world.get("counts", {})
    c = st.columns(max(1, len(counts)))
    for col, (k, v) in zip(c, counts.items()):
        col.metric(k.replace("_", " "), v)
    rel = world.get("relations", {})
    st.dataframe(pd.DataFrame([{"relation": r, "phrasings": len(d.get("phrasings", [])),
                                "example": (d.get("phrasings") or [{}])[0].get("template", "")}
                               for r, d in rel.items()]), hide_index=True)
    people = common.WORLD / "people.jsonl"
    if people.exists():
        with people.open() as f:
            sample = [json.loads(next(f)) for _ in range(8)]
        st.caption("a few of the fictional people")
        # one row a person: id, name and each fact (the held-out phrasing ids are for scoring)
        st.dataframe(pd.DataFrame([{"id": p.get("id"), "name": p.get("name"), **p.get("facts", {})}
                                   for p in sample]), hide_index=True)
    card = common.DEFAULT_MODEL / "card.json"
    if card.exists():
        measured = json.loads(card.read_text()).get("measured", {})
        rows = [{"measurement": k, **{m: v for m, v in d.items() if isinstance(v, (int, float))}}
                for k, d in measured.items() if isinstance(d, dict) and k != "targets"]
        st.caption("the shipped model's card (`workbench world measure`)")
        st.dataframe(pd.DataFrame(rows), hide_index=True)
