"""Merge page: LoRA adapters recorded in this session's history, merged with one of peft's
combination methods, measured on the requests the adapters were trained on."""
import pandas as pd
import streamlit as st

from ui import common
from ui.state import get_workbench

st.title("Merge")
wb = get_workbench()
if wb is None:
    st.stop()

from workbench.editing.registry import describe_editor  # noqa: E402

# The merge editor's own options, as it describes them (no editor module is imported here).
MERGE = {h["name"]: h for h in describe_editor("merge")["hyperparameters"]}
COMBINATIONS = list(MERGE["combination_type"]["choices"])
NEEDS_DENSITY = set(MERGE["density"]["applies_when"]["combination_type"])

# ------------------------------------------------------------------ train adapters
if "merge_start_next" in st.session_state:  # after training: the next adapter starts where this one ended
    st.session_state["merge_start"] = st.session_state.pop("merge_start_next")
with st.expander("Train a LoRA adapter on world edits", expanded=False):
    c = st.columns(4)
    start = c[0].number_input("first request (index)", 0, 999, 0, key="merge_start")
    count = c[1].number_input("how many", 1, 50, 2, key="merge_count")
    steps = c[2].number_input("steps", 1, 1000, 30, key="merge_steps",
                              help="passes over the requests (the lora editor's `steps`)")
    layers = c[3].text_input("layers", str(wb.adapter.num_layers - 1), key="merge_layers",
                             help="blocks to adapt (comma-separated; the lora editor's `layers`). Retrieval "
                                  "below needs adapters after block 0; the last block routes best")
    if st.button("Train adapter", key="merge_train"):
        with common.shown_errors("the adapter was not trained"), st.status("training a LoRA adapter…") as status:
            event = wb.edit("lora", common.world_set("edits_counterfactual.jsonl", int(start), int(count)),
                             {"steps": str(int(steps)), "layers": layers})
            status.update(label=f"{event.id}: {event.kind}", state="complete")
            st.session_state["merge_start_next"] = int(start) + int(count)
            st.rerun()  # the index box and the adapter table below predate this adapter

# ------------------------------------------------------------------ adapters in force
def adapters_of(event) -> list[dict]:
    """The named adapters `event` added that are in the model now, as they describe themselves
    (other attachments say nothing)."""
    return [r for a in common.patch_of(wb, event).attachments if (r := a.describe(wb.model)) and "adapter" in r]


events = {e.id: e for e in wb.log()}
adapters = {}  # adapter name -> (the event that added it, how it stands now)
for eid in wb.active():
    for row in adapters_of(events[eid]):
        adapters[row["adapter"]] = (events[eid], row)
st.subheader("Adapters")
st.caption("Every LoRA adapter an edit in force added: switched on (used by the model) or off (kept; a merge "
           "switches its sources off, and rolling the merge back switches them on again).")
if not adapters:
    st.info("No LoRA adapter is in force. Train some above, or apply the `lora` editor on the Edit page.")
    st.stop()
enabled = {n: row["enabled"] for n, (_, row) in adapters.items()}
st.dataframe(pd.DataFrame([{"adapter": n, "switched": "on" if row["enabled"] else "off", "edit": e.id,
                            "editor": e.editor,
                            "rank": row.get("rank"), "requests": len(e.requests or []),
                            "reliability": (e.metrics_after or {}).get("reliability")}
                           for n, (e, row) in adapters.items()]), hide_index=True)

# ------------------------------------------------------------------ merge
st.subheader("Merge")
# Keyed by the adapters present, so a newly trained or merged adapter gives a fresh selection
# (a widget keeps its old value otherwise); preselected: the enabled ones, as the editor's default.
chosen = st.multiselect("adapters", list(adapters), default=[n for n in adapters if enabled[n]],
                        key="merge_adapters_" + "+".join(adapters))
c = st.columns(3)
method = c[0].selectbox("method (peft combination_type)", COMBINATIONS,
                        index=COMBINATIONS.index("linear"), key="merge_method")
density = c[1].slider("density (share of entries kept)", 0.05, 1.0, 0.5, 0.05, key="merge_density",
                      disabled=method not in NEEDS_DENSITY, help="used by ties, dare_* and magnitude_prune*")
fold = c[2].checkbox("fold into the base weights", key="merge_fold",
                     help="add the merged update to the base weights instead of keeping an adapter")
wcols = st.columns(max(1, len(chosen)))
weights = [wcols[i].number_input(f"weight of {n}", value=round(1.0 / len(chosen), 4), step=0.05,
                                 format="%.4f", key=f"merge_w_{n}_of_{len(chosen)}") for i, n in enumerate(chosen)]
if st.button("Merge", type="primary", key="merge_apply", disabled=not chosen):
    params = {"adapters": ",".join(chosen), "combination_type": method, "weights": ",".join(map(str, weights)),
              "fold": str(fold).lower()}
    if method in NEEDS_DENSITY:
        params["density"] = str(density)
    # The merge is measured on what the merged adapters were trained for.
    reqs = common.requests_of([adapters[n][0] for n in chosen])
    with common.shown_errors("the merge was not applied"):
        with st.status(f"merging {len(chosen)} adapter(s) with {method}…", expanded=True) as status:
            st.write(f"measuring on the adapters' {len(reqs)} request(s), merging with peft, measuring again…")
            event = wb.edit("merge", reqs, params)
            status.update(label=f"{event.id}: {event.kind} in {event.duration_s:.2f} s", state="complete")
        # What the merge made, read now: a later undo takes the merged adapter out of the model.
        made = adapters_of(event) if event.kind == "edit" else []
        st.session_state["last_merge"] = event
        st.session_state["last_merge_into"] = (f"{made[0]['adapter']} (rank {made[0]['rank']})" if made
                                               else "the base weights (folded)")
        st.rerun()  # the adapter table above predates the merge (sources now off, a new adapter)

if "last_merge" in st.session_state:
    event = st.session_state["last_merge"]
    st.subheader("Result")
    if event.kind == "edit":
        into = st.session_state.get("last_merge_into", "a new adapter")
        st.success(f"{event.id}: merged {', '.join(event.hparams.get('adapters', []))} into {into}; "
                   f"the sources are switched off, and rolling back {event.id} switches them on again")
    else:
        st.error(f"{event.id} was rejected and reverted — the model is unchanged. Gate(s) that failed: "
                 + "; ".join(common.failed_gates(event) or [event.note or "?"]))
    common.before_after_chart(event, key="merge_chart")
    with st.expander("all metrics"):
        common.metrics_table(event)

# ------------------------------------------------------------------ retrieval
st.subheader("Retrieval")
st.caption("Instead of merging: each input reads the adapter whose edits it matches, or none (MOS-style "
           "retrieval, `lora-retrieve`). The threshold is calibrated on the adapters' own prompts with the "
           "subject's letters shuffled; refinement re-scores each choice with the chosen adapter's features.")
retrieval = None  # how the last retrieval edit in force left things
for eid in wb.active():
    for a in common.patch_of(wb, events[eid]).attachments:
        if (r := a.describe(wb.model)) and "retrieval" in r:
            retrieval = (events[eid], r)
retrievable = [n for n, (_, row) in adapters.items() if row.get("retrievable")]
if retrieval is not None and retrieval[1]["retrieval"] == "on":
    event, r = retrieval
    st.success(f"{event.id}: retrieval on over {', '.join(r['adapters'])} (threshold {r['threshold']:.3f}); "
               "while it is on, these adapters act only on the inputs routed to them")
    if st.button("Turn retrieval off", key="retrieve_off"):
        with common.shown_errors("retrieval was not switched off"):
            wb.edit("lora-retrieve", common.requests_of([adapters[n][0] for n in r["adapters"]]),
                    {"enabled": "false"})
            st.rerun()
    # Which adapter each probe of the adapters' own requests went to: their prompts and rephrasings
    # should read their own adapter, their locality probes none.
    from workbench.bench.plots import routing_confusion  # noqa: E402
    from workbench.eval.routing import all_probes, confusion, routes  # noqa: E402
    held = [(q, n) for n in r["adapters"] for q in common.requests_of([adapters[n][0]])]
    prompts, answers, want = all_probes([q for q, _ in held], [n for _, n in held])
    # computed once per state of the history: a rerun of the page (any widget) reuses it
    cache_key = (str(wb.workspace), tuple(wb.active()))
    if st.session_state.get("merge_routes_key") != cache_key:
        st.session_state["merge_routes"] = [final for _, final in routes(wb.model, wb.tok, prompts, answers)]
        st.session_state["merge_routes_key"] = cache_key
    got = st.session_state["merge_routes"]
    labels = [*r["adapters"], "none"]
    right = sum(g == w for g, w in zip(got, want))
    st.plotly_chart(routing_confusion({"labels": labels, "counts": confusion(got, want, labels)},
                                      f"Where each probe went: {right} of {len(got)} to the right place"),
                    key="retrieve_chart")
elif not retrievable:
    st.info("No adapter in force recorded the prompts it was trained on (adapters recorded before retrieval "
            "existed did not); train adapters above to route among them.")
else:
    chosen_r = st.multiselect("adapters to route among", retrievable, default=retrievable,
                              key="retrieve_adapters_" + "+".join(retrievable))
    c = st.columns(3)
    refine = c[0].checkbox("refine (MOS)", value=True, key="retrieve_refine")
    calibrate = c[1].checkbox("calibrate the threshold", value=True, key="retrieve_calibrate")
    threshold = c[2].number_input("threshold (cosine)", -1.0, 1.0, 0.95, 0.01, key="retrieve_threshold",
                                  disabled=calibrate)
    if st.button("Turn retrieval on", type="primary", key="retrieve_on", disabled=not chosen_r):
        params = {"adapters": ",".join(chosen_r), "refine": str(refine).lower()}
        if not calibrate:
            params["threshold"] = str(threshold)
        with common.shown_errors("retrieval was not switched on"):
            with st.status(f"computing the keys of {len(chosen_r)} adapter(s)…"):
                wb.edit("lora-retrieve", common.requests_of([adapters[n][0] for n in chosen_r]), params)
            st.rerun()
