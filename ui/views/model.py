"""Model page: architecture and sizes, a prompt box, items of every suite to ask, the world it
was trained on and the shipped model's accuracy on each suite."""
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import common
from ui.state import get_workbench, replace_workbench, sessions, switch_session

st.title("Model")
wb = get_workbench()

with st.expander("Sessions", expanded=wb is None):
    st.caption("Every session of this workspace root; the page's address names the open one, so a reload or a "
               "bookmark reopens it with its edits in force.")
    listed = sessions()
    if listed:
        from datetime import datetime
        current = Path(wb.workspace).name if wb is not None else None
        st.dataframe(pd.DataFrame([{
            "session": r["session"] + (" (open here)" if r["session"] == current else ""),
            "model": Path(r["base_model"]).name if r.get("base_model") else "(unreadable ledger)",
            "events": r.get("events"), "edits in force": len(r.get("active") or []),
            "last event": " ".join(str(x) for x in (r.get("last_event"), r.get("last_kind"), r.get("last_editor"))
                                   if x) or "—",
            "last change": datetime.fromtimestamp(r["modified"]).strftime("%Y-%m-%d %H:%M:%S")}
            for r in listed]), hide_index=True, width="stretch")
        c = st.columns([2, 1, 1])
        pick = c[0].selectbox("session", [r["session"] for r in listed], key="model_session_pick",
                              label_visibility="collapsed")
        if c[1].button("Open this session", key="model_session_open", disabled=pick == current):
            with common.shown_errors(f"session {pick} did not open; the current one is kept"):
                switch_session(pick)
                st.rerun()
        if c[2].button("New session", key="model_session_new"):
            with common.shown_errors("no new session; the current one is kept"):
                replace_workbench(str(wb.model_dir) if wb is not None else None)
                st.rerun()
    else:
        st.caption("no session yet")

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

    world = common.shipped_world()
    st.subheader("Ask the model")
    example = f"Q: Where was {world.people[0]['name']} born? A:" if world else "The capital of France is"
    prompt = st.text_input("prompt", value=example, key="model_prompt")
    n = st.slider("tokens to generate", 1, 32, 8, key="model_ntok")
    if st.button("Generate", key="model_generate") and prompt.strip():
        with common.shown_errors("generation failed"):
            st.session_state["last_answer"] = (prompt, common.continuations(wb, [prompt], n)[0])
    if "last_answer" in st.session_state:
        p, a = st.session_state["last_answer"]
        st.markdown(f"**{p}** → `{a}`")

    if world is not None:
        st.subheader("Ask an item of a suite")
        st.caption("the item's prompt goes to the current model (with the edits in force); the answer counts "
                   "when greedy decoding starts with it, as the card scores it")
        c = st.columns(3)
        suite = c[0].selectbox("suite", [n for n in world.suite_names() if common.suite_items(n)], key="model_suite")
        splits = sorted({i["split"] for i in common.suite_items(suite)})
        split = c[1].selectbox("split", splits, index=splits.index("heldout") if "heldout" in splits else 0,
                               key="model_split")
        items = [i for i in common.suite_items(suite) if i["split"] == split]
        # one widget per (suite, split): an item number kept from a longer suite would be out of range
        k = c[2].number_input(f"item (0-{len(items) - 1})", 0, len(items) - 1, 0, key=f"model_item_{suite}_{split}")
        item = items[int(k)]
        st.markdown(f"`{item['id']}` **{item['prompt']}** · expected `{item['answer']}`")
        if st.button("Ask", key="model_ask"):
            with common.shown_errors("generation failed"):
                n = len(wb.tok(" " + item["answer"], add_special_tokens=False)["input_ids"])
                said = common.continuations(wb, [item["prompt"]], n)[0]
                st.session_state["last_item"] = {**item, "suite": suite, "said": said,
                                                 "right": said == item["answer"]}
        if "last_item" in st.session_state:
            last = st.session_state["last_item"]
            mark = "right" if last["right"] else "wrong"
            st.markdown(f"{last['suite']} `{last['id']}` → `{last['said']}` ({mark})")

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
        targets = measured.get("targets", {})
        if targets:
            from workbench.bench.plots import error_bars
            from workbench.eval.stats import wilson

            def interval(name: str):  # Wilson over the measurement's items, where the card gives their count
                d = measured.get(name)
                if not isinstance(d, dict) or not isinstance(d.get("n"), int) \
                        or not isinstance(d.get("exact"), (int, float)):
                    return None
                return wilson(round(d["exact"] * d["n"]), d["n"]).as_dict()

            st.caption("the shipped model on each target of its card (bars, with 95% Wilson intervals over the "
                       "items; held-out items except the training phrasings and the memorized text) and the target "
                       "(marks)")
            fig = go.Figure([go.Bar(x=list(targets), y=[t["measured"] for t in targets.values()], name="measured",
                                    error_y=error_bars([interval(k) for k in targets])),
                             go.Scatter(x=list(targets), y=[t["target"] for t in targets.values()],
                                        mode="markers", marker_symbol="line-ew-open", marker_size=28,
                                        name="target")])
            fig.update_layout(yaxis_range=[0, 1.02], yaxis_title="exact", height=320, margin=dict(t=10))
            st.plotly_chart(fig, key="model_suites")
        rows = [{"measurement": k, **{m: v for m, v in d.items() if isinstance(v, (int, float))}}
                for k, d in measured.items() if isinstance(d, dict) and k != "targets"]
        st.caption("the shipped model's card (`workbench world measure`)")
        st.dataframe(pd.DataFrame(rows), hide_index=True)
