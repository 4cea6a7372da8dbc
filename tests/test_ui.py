"""The Streamlit UI, driven headless with AppTest on the shipped model: every page renders,
an edit applied through the page shows its metrics, a rollback restores the model's answer,
two browser sessions never see each other's edits, and bad input leaves a readable message
with nothing applied. Editor settings are the cheap ones (GRACE trains one value vector)."""
import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")
PAGES = ("model", "edit", "compare", "unlearn", "merge", "history", "benchmarks")
EDIT_PROMPT = "Wymkeark Holviol is a citizen of"  # the first world counterfactual: ground truth Drovenia


@pytest.fixture
def app(tmp_path, monkeypatch, one_thread):
    """A fresh browser session of the app on the shipped model, workspace root in tmp."""
    monkeypatch.setenv("WORKBENCH_UI_WORKSPACE", str(tmp_path / "ui"))
    monkeypatch.delenv("WORKBENCH_UI_MODEL", raising=False)

    def new() -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return new


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def traces(at: AppTest) -> list[dict]:
    """The data traces of every plotly chart on the page."""
    return [t for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"]]


def ask(at: AppTest, prompt: str) -> str:
    """The model's greedy answer through the Model page's prompt box."""
    goto(at, "model")
    at.text_input(key="model_prompt").set_value(prompt)
    at.button(key="model_generate").click().run()
    assert not errors(at)
    return at.session_state["last_answer"][1]


def apply_world_edit(at: AppTest, **hparams) -> object:
    goto(at, "edit")
    at.radio(key="edit_source").set_value("world set").run()
    at.selectbox(key="edit_editor").set_value("grace").run()
    for name, value in hparams.items():
        at.text_input(key=f"edit_grace_{name}").set_value(str(value))
    at.button(key="edit_apply").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_every_page_renders(app):
    at = app()
    wb = at.session_state["wb"]
    for page in PAGES:
        goto(at, page)
        assert at.title[0].value.lower() == page
        assert not errors(at), (page, errors(at))
    assert at.session_state["wb"] is wb  # loaded once per session, not per page or rerun
    goto(at, "model")
    assert at.metric[0].label == "type" and at.metric[0].value == "llama"


def test_model_page_asks_items_of_each_suite_and_charts_the_card(app):
    from workbench.eval.requests import Probe
    from workbench.world import World
    from workbench.world.measure import fact_accuracy
    from .conftest import MODEL, WORLD
    at = goto(app(), "model")
    card = json.loads((MODEL / "card.json").read_text())
    assert traces(at)[0]["x"] == list(card["measured"]["targets"])  # held-out accuracy per suite, with targets
    world = World.load(WORLD)
    wb = at.session_state["wb"]
    for suite in world.suite_names():
        at.selectbox(key="model_suite").set_value(suite).run()
        split = at.selectbox(key="model_split").value
        assert split == ("memorized" if suite in ("canaries", "quotes") else "heldout")
        at.number_input(key=f"model_item_{suite}_{split}").set_value(3).run()
        at.button(key="model_ask").click().run()
        assert not errors(at)
        last = at.session_state["last_item"]
        item = world.suite_items(suite, split=split)[3]
        assert last["id"] == item["id"] and last["suite"] == suite
        # the page's verdict is the card's: greedy decoding <=> every answer token the argmax
        scored = fact_accuracy(wb.model, wb.tok, [Probe(item["prompt"], item["answer"])])["exact"]
        assert last["right"] == (scored == 1.0), last
    at.selectbox(key="model_suite").set_value("facts").run()  # back to a long suite, then a short one
    at.number_input(key="model_item_facts_heldout").set_value(5000).run()
    at.selectbox(key="model_suite").set_value("canaries").run()
    assert not at.exception and at.number_input(key="model_item_canaries_memorized").value == 0


def test_edit_shows_metrics_and_rollback_restores_the_answer(app):
    at = app()
    answer_before = ask(at, EDIT_PROMPT)
    assert "Kelmoria" not in answer_before

    apply_world_edit(at, early_stop_loss=0.05)
    assert not errors(at)
    event = at.session_state["last_edit"][0]
    assert event.kind == "edit" and event.editor == "grace"
    assert event.metrics_before["reliability"] < 0.5 < event.metrics_after["reliability"]
    chart = at.get("plotly_chart")
    assert chart, "the before/after chart is on the page"
    assert '"reliability"' in chart[0].proto.spec
    assert any("is in force" in s.value for s in at.success)
    assert at.status and "e0001: edit" in at.status[0].label  # the long work ran under a status element
    assert ask(at, EDIT_PROMPT).startswith("Kelmoria")

    goto(at, "history")
    # timeline, metrics over edits, and the per-layer map of what was attached (GRACE changes no
    # weight, so there is no weights map: a codebook's norm is not put on a weight change's scale)
    assert len(at.get("plotly_chart")) == 3
    assert len(at.get("download_button")) == 3  # the evaluation card, the JSON report and the bundle
    (heat,) = [t for t in traces(at) if t["type"] == "heatmap"]
    assert heat["name"] == "norm"
    changed = [i for i, v in enumerate(heat["z"][0]) if v > 0]
    assert len(changed) == 1  # GRACE attaches its codebook to one layer
    metrics = [t for t in traces(at) if t["type"] == "scatter" and t.get("name") == "reliability"]
    assert metrics and metrics[0]["mode"] == "markers"  # no line joining unrelated edits
    at.selectbox(key="history_target").set_value("base")
    at.button(key="history_rollback").click().run()
    assert not at.exception and not errors(at)
    assert any("rolled back e0001" in s.value for s in at.success)
    assert at.session_state["wb"].active() == []
    assert ask(at, EDIT_PROMPT) == answer_before

    goto(at, "history")
    at.button(key="history_verify").click().run()
    assert any(s.value.startswith("intact") for s in at.success), errors(at)


def test_gate_rejects_and_one_edit_reverts_out_of_the_middle(app):
    at = app()
    wb = at.session_state["wb"]
    goto(at, "edit")
    at.selectbox(key="edit_editor").set_value("ft").run()
    at.number_input(key="edit_ft_steps").set_value(1)
    at.text_input(key="edit_gates").set_value("reliability>=0.9")
    at.button(key="edit_apply").click().run()
    assert at.session_state["last_edit"][0].kind == "rejected"
    # red, naming the gate and what it saw; no success box; the status says nothing changed
    assert any("rejected and reverted" in e.value and "`reliability>=0.9` (measured" in e.value for e in at.error)
    assert not any("in force" in s.value for s in at.success)
    assert "rejected by its gate" in at.status[0].label and "nothing changed" in at.status[0].label
    assert wb.active() == []

    at.selectbox(key="edit_editor").set_value("grace").run()
    at.text_input(key="edit_gates").set_value("")
    at.button(key="edit_apply").click().run()  # the composed request (Kelmoria)
    apply_world_edit(at, early_stop_loss=0.05)  # request 0 of the world set: same prompt, same target
    at.radio(key="edit_source").set_value("compose").run()
    at.text_input(key="edit_prompt").set_value("Q: Where was Lumtrus Vyser born? A:")
    at.text_input(key="edit_target").set_value("Kelmoria")
    at.button(key="edit_apply").click().run()
    assert wb.active() == ["e0002", "e0003", "e0004"]
    goto(at, "history")
    at.selectbox(key="history_one").set_value("e0003")
    at.button(key="history_revert").click().run()
    assert not errors(at), errors(at)
    assert any("reverted e0003" in s.value for s in at.success)
    assert wb.active() == ["e0002", "e0004"]
    # the evaluation card of the rejected edit: its failed gate and the margin it missed by
    at.selectbox(key="history_card_pick").set_value("e0001").run()
    card = next(m.value for m in at.markdown if m.value.startswith("# Evaluation card: e0001"))
    assert "status: rejected" in card and "| `reliability>=0.9` |" in card and "| **no** |" in card
    at.selectbox(key="history_card_pick").set_value("e0003").run()
    card = next(m.value for m in at.markdown if m.value.startswith("# Evaluation card: e0003"))
    assert "status: reverted by e0005 (revert)" in card and "workbench edit --editor grace" in card


def test_sessions_never_see_each_other(app):
    a, b = app(), app()
    wa, wb = a.session_state["wb"], b.session_state["wb"]
    assert wa is not wb and wa.workspace != wb.workspace
    apply_world_edit(a, early_stop_loss=0.05)
    assert a.session_state["last_edit"][0].kind == "edit"
    assert wa.active() == ["e0001"]
    # b: no history, no edit in force, and its model still gives the old answer
    goto(b, "history")
    assert wb.log() == [] and wb.active() == []
    assert any("No edits yet" in i.value for i in b.info)
    assert not ask(b, EDIT_PROMPT).startswith("Kelmoria")
    assert ask(a, EDIT_PROMPT).startswith("Kelmoria")


def reopen(name: str) -> AppTest:
    """A new browser tab on the address `?session=name` (a reload, a bookmark, a second tab)."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["session"] = name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_reload_reopens_the_session_and_tabs_never_edit_a_stale_model(app):
    a = app()
    name = a.query_params["session"]  # the address names the session from the first page on
    apply_world_edit(a, early_stop_loss=0.05)
    b = reopen(name)  # F5: a new browser session on the same address
    wb = b.session_state["wb"]
    assert wb.workspace.name == name and wb.active() == ["e0001"]
    assert ask(b, EDIT_PROMPT).startswith("Kelmoria")  # the edit is in force in the reopened model
    # the Model page lists the session, the open one marked, with its edit in force
    rows = goto(b, "model").dataframe[0].value
    row = rows[rows["session"].str.startswith(name)].iloc[0]
    assert row["session"].endswith("(open here)") and row["edits in force"] == 1 and row["events"] == 1
    # b edits; a (the first tab) is now behind: it is reopened at the head before it draws
    goto(b, "history")
    b.button(key="history_rollback").click().run()
    assert b.session_state["wb"].active() == []
    goto(a, "history")
    assert any("changed in another tab" in i.value for i in a.info)
    assert a.session_state["wb"].active() == [] and len(a.session_state["wb"].log()) == 2
    # a new session, then back to the first through the list
    goto(a, "model").button(key="model_session_new").click().run()
    assert a.query_params["session"] != name and a.session_state["wb"].log() == []
    a.selectbox(key="model_session_pick").set_value(name)
    a.button(key="model_session_open").click().run()
    assert a.query_params["session"] == name and len(a.session_state["wb"].log()) == 2


def test_an_address_naming_no_session_is_refused_and_the_page_still_draws(app):
    for bad in ("../../etc", "session-000000000000"):
        at = reopen(bad)
        assert any("could not be opened" in e.value for e in at.error), errors(at)
        assert at.session_state["wb"] is None


def test_bad_input_is_reported_and_nothing_is_applied(app, tmp_path):
    at = app()
    wb = at.session_state["wb"]
    # a hyperparameter out of range: the dataclass's own message, nothing in the ledger
    goto(at, "edit")
    at.radio(key="edit_source").set_value("world set").run()
    at.selectbox(key="edit_editor").set_value("grace").run()
    at.number_input(key="edit_grace_n_iter").set_value(0)
    at.button(key="edit_apply").click().run()
    assert any("n_iter" in e and "not applied" in e for e in errors(at)), errors(at)
    assert wb.log() == []

    # a real request file in a public format loads through the same loader as the CLI
    at.radio(key="edit_source").set_value("upload").run()
    zsre = Path(__file__).parent / "fixtures" / "requests" / "zsre.json"
    at.file_uploader(key="edit_upload").set_value(("zsre.json", zsre.read_bytes(), "application/json"))
    at.run()
    assert not errors(at) and any("2 request(s)" in c.value for c in at.caption)
    assert not at.button(key="edit_apply").disabled

    # an upload that is not a request file
    at.radio(key="edit_source").set_value("upload").run()
    at.file_uploader(key="edit_upload").set_value(("notes.jsonl", b'{"hello": "world"}\n', "application/json"))
    at.run()
    assert any("notes.jsonl" in e for e in errors(at)), errors(at)
    assert at.button(key="edit_apply").disabled

    # a model folder that does not load: message, the session keeps its model
    (tmp_path / "nomodel").mkdir()
    goto(at, "model")
    at.text_input(key="model_folder").set_value(str(tmp_path / "nomodel"))
    at.button(key="load_model").click().run()
    assert any("did not load" in e for e in errors(at)), errors(at)
    assert at.session_state["wb"] is wb
    assert at.metric[0].value == "llama"  # the page still works
    assert ask(at, EDIT_PROMPT)
    assert wb.log() == []


def test_a_model_that_does_not_load_at_start(app, tmp_path, monkeypatch):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    monkeypatch.setenv("WORKBENCH_UI_MODEL", str(tmp_path / "broken"))
    at = app()
    assert at.session_state["wb"] is None
    for page in PAGES:  # every page says why and keeps rendering
        goto(at, page)
        assert any("could not be opened" in e for e in errors(at)), page
    goto(at, "model")
    at.text_input(key="model_folder").set_value("")  # empty: the shipped model
    at.button(key="load_model").click().run()
    assert at.session_state["wb"] is not None
    assert not errors(at) and any("loaded the shipped model" in s.value for s in at.success)
    assert ask(at, EDIT_PROMPT)


def test_ui_command_binds_loopback():
    from ui.launch import command
    from workbench.cli.main import build_parser
    args = build_parser().parse_args(["ui", "--port", "8999", "--workspace", "/tmp/x"])
    assert args.port == 8999 and args.model is None
    cmd = command(args.port)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8999"
    assert cmd[cmd.index("run") + 1].endswith("ui/app.py")
    from ui.common import MAX_UPLOAD_MB
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == str(MAX_UPLOAD_MB)


class _Upload:
    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


def test_uploads_are_size_limited_and_their_names_cannot_escape(tmp_path, monkeypatch):
    from ui.common import MAX_UPLOAD_MB, load_uploaded
    from workbench.core.errors import InputError
    good = b'{"type": "edit", "prompt": "Ada lives in", "target_new": "Rome"}\n'
    import tempfile
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the upload's copy lands under tmp_path
    monkeypatch.chdir(tmp_path)
    for name in ("../../escape.jsonl", "/etc/passwd.jsonl", "a/../../b.jsonl", "x.json/..", "..", "r.jsonl"):
        assert load_uploaded(_Upload(name, good))[0].target_new == "Rome"
    left = [p for p in tmp_path.parent.rglob("*") if "escape" in p.name or p.name in ("b.jsonl", "passwd.jsonl")]
    assert not left and not list((tmp_path / "tmp").iterdir()), "an upload was written outside its temporary folder"
    with pytest.raises(InputError, match=f"over the {MAX_UPLOAD_MB} MB limit.*big.jsonl|big.jsonl.*over the"):
        load_uploaded(_Upload("big.jsonl", good * (MAX_UPLOAD_MB * 2**20 // len(good) + 1)))


def test_unlearn_page_prunes_and_shows_scores(app):
    at = app()
    goto(at, "unlearn")
    at.selectbox(key="unlearn_editor").set_value("prune").run()
    at.number_input(key="unlearn_prune_max_steps").set_value(3)
    at.button(key="unlearn_apply").click().run()
    assert not errors(at), errors(at)
    event = at.session_state["last_unlearn"][0]
    assert event.editor == "prune" and event.kind == "edit"
    assert event.metrics_after["strict_recitation"] < event.metrics_before["strict_recitation"]
    hist = [t for t in traces(at) if t["type"] == "histogram"]
    assert len(hist) >= 2 and sum(len(t["x"]) for t in hist) > 100, "the neuron-score histogram is drawn"
    # one set of bins for all and pruned neurons: the pruned ones cannot spread over the whole range
    assert all(t["xbins"] == hist[0]["xbins"] and t["autobinx"] is False for t in hist)


def test_unlearn_page_kfac_spectrum(app):
    at = app()
    goto(at, "unlearn")
    at.selectbox(key="unlearn_editor").set_value("kfac").run()
    at.number_input(key="unlearn_kfac_max_tokens").set_value(2000)
    at.number_input(key="unlearn_kfac_block_size").set_value(64)
    at.text_input(key="unlearn_kfac_rho").set_value("0.3")
    at.button(key="unlearn_apply").click().run()
    assert not errors(at), errors(at)
    assert at.session_state["last_unlearn"][0].editor == "kfac"
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    spectra = [s for s in specs if any("ρ cut" in a.get("text", "") for a in s["layout"].get("annotations", []))]
    assert spectra, "the spectrum with the rho cut is drawn"
    axis = spectra[0]["layout"]["yaxis"]
    assert len(spectra[0]["data"][0]["y"]) > 100 and axis["type"] == "log"
    assert axis["exponentformat"] == "power" and axis["dtick"] >= 1  # one notation, about six labels


def test_a_log_axis_has_about_six_labels_whatever_the_span():
    from ui.common import log_axis
    assert log_axis([1e-16, 1e2])["dtick"] == 3 and log_axis([0.5, 2.0])["dtick"] == 1
    assert log_axis([0.0, -1.0, 1e-3, 1e3])["dtick"] == 1  # non-positive values are not on a log axis


def test_merge_page_merges_two_adapters(app):
    at = app()
    goto(at, "merge")
    assert any("No LoRA adapter" in i.value for i in at.info)
    for start in (0, 2):
        # the index moves on by itself after each adapter: the second starts at request 2
        assert at.number_input(key="merge_start").value == start
        at.number_input(key="merge_steps").set_value(5)
        at.button(key="merge_train").click().run()
        assert not errors(at), errors(at)
    assert at.number_input(key="merge_start").value == 4
    assert at.multiselect[0].value == ["lora0", "lora1"]
    at.selectbox(key="merge_method").set_value("ties").run()
    at.button(key="merge_apply").click().run()
    assert not errors(at), errors(at)
    event = at.session_state["last_merge"]
    assert event.editor == "merge" and event.kind == "edit" and event.hparams["density"] == 0.5
    assert len(event.requests) == 4  # measured on both adapters' requests
    assert at.session_state["wb"].active() == ["e0001", "e0002", "e0003"]
    # after the merge: the sources are switched off, the merged adapter is on and preselected
    assert at.multiselect[0].options == ["lora0", "lora1", "lora2"] and at.multiselect[0].value == ["lora2"]
    assert any("merged lora0, lora1 into lora2" in s.value for s in at.success)
    shown = at.dataframe[0].value
    assert dict(zip(shown["adapter"], shown["switched"])) == {"lora0": "off", "lora1": "off", "lora2": "on"}


def test_merge_page_turns_retrieval_on_and_shows_where_each_probe_went(app):
    at = app()
    goto(at, "merge")
    for _ in range(2):  # on the last block by default: retrieval routes there
        at.number_input(key="merge_steps").set_value(40)
        at.button(key="merge_train").click().run()
        assert not errors(at), errors(at)
    wb = at.session_state["wb"]
    assert [e.hparams["layers"] for e in wb.log()] == [[3], [3]]
    at.button(key="retrieve_on").click().run()
    assert not errors(at), errors(at)
    event = wb.log()[-1]
    assert event.editor == "lora-retrieve" and event.kind == "edit" and event.hparams["adapters"] == ["lora0", "lora1"]
    assert any("retrieval on over lora0, lora1" in s.value for s in at.success)
    heat = [t for t in traces(at) if t["type"] == "heatmap"]
    # each adapter's 2 requests: the prompt, 2 rephrasings and 2 locality probes, counted once each
    assert len(heat) == 1 and heat[0]["x"] == ["lora0", "lora1", "none"] and sum(map(sum, heat[0]["z"])) == 20
    assert heat[0]["z"][0][0] >= 2 and heat[0]["z"][1][1] >= 2  # each edit prompt reads its own adapter
    at.button(key="retrieve_off").click().run()
    assert not errors(at), errors(at)
    assert wb.log()[-1].hparams["enabled"] is False
    assert not any("retrieval on over" in s.value for s in at.success) and not traces(at)
    assert at.multiselect(key="retrieve_adapters_lora0+lora1").value == ["lora0", "lora1"]  # ready to switch on


def test_benchmarks_page_shows_unlearning_results_and_refuses_a_bad_file(app, tmp_path):
    rows = [{"editor": "ga", "set": "canaries", "n": 2, "seconds": 1.0,
             "before": {"by_repeats": {"1": 1.0, "8": 1.0}, "utility": {"reading": 0.9}},
             "after": {"by_repeats": {"1": 0.0, "8": 0.5}, "utility": {"reading": 0.9}},
             "sustain": [{"k": 1, "n_forgotten": 1, "utility": {"reading": 0.8},
                          "forgotten": {"strict_recitation": 0.0}, "whole": {"strict_recitation": 0.5}}]}]
    for r in (rows[0]["before"], rows[0]["after"]):
        r.update({k: 0.5 for k in ("strict_recitation", "loose_recitation", "extraction_strength", "exposure",
                                   "forget_recall", "forget_recall_paraphrased", "perplexity", "retain_recall",
                                   "forget_quality", "privleak", "ndcg10")})
    good = tmp_path / "unlearn.json"
    good.write_text(json.dumps(rows))
    at = app()
    goto(at, "benchmarks")
    at.text_input(key="bench_path").set_value(str(good)).run()
    assert not errors(at), errors(at)
    assert any("| ga | canaries |" in m.value for m in at.markdown)
    names = {t.get("name") for t in traces(at)}
    assert {"before (canaries)", "ga (canaries)"} <= names  # recitation by repeats and utility vs k
    assert {"before", "ga"} <= names  # the suites before and after
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"editor": "ga", "set": "canaries"}]))
    at.text_input(key="bench_path").set_value(str(bad)).run()
    assert any("bad.json" in e and "after" in e for e in errors(at)), errors(at)
    bad.write_text(json.dumps([{"hello": 1}]))
    at.text_input(key="bench_path").set_value(str(bad)).run()
    assert any("bad.json" in e and "not rows of" in e for e in errors(at)), errors(at)


def test_benchmarks_page_charts_lifelong_results_and_refuses_a_bad_file(app, tmp_path):
    def row(editor, T, rel):
        return {"editor": editor, "T": T, "reliability": rel, "reliability_exact": rel, "generality": 0.5,
                "generality_exact": 0.4, "locality": 1.0, "locality_exact": 1.0, "median_edit_s": 0.1,
                "inference_overhead": 0.02}
    a, b = tmp_path / "lifelong_a.json", tmp_path / "lifelong_b.json"
    a.write_text(json.dumps([row("memoir", 1, 1.0), row("memoir", 10, 0.9)]))
    b.write_text(json.dumps([{"editor": "memoir", "T": 10}]))  # no scores: refused, file and field named
    at = app()
    goto(at, "benchmarks")
    at.text_input(key="bench_path").set_value(str(a)).run()
    assert not errors(at), errors(at)
    assert any("| memoir | 10 | 0.900 |" in m.value for m in at.markdown)
    names = {t.get("name") for t in traces(at)}
    assert {"memoir", "memoir exact"} <= names
    assert [t["y"] for t in traces(at) if t.get("name") == "memoir"][0] == [1.0, 0.9]
    # the table as CSV and JSON, cell for cell as shown
    from ui.common import markdown_frame
    from workbench.bench.lifelong import load_rows, table
    frame = markdown_frame(table(load_rows([a])))
    assert list(frame["T"]) == ["1", "10"] and frame["rel."][1].startswith("0.900")
    assert len(at.get("download_button")) == 2
    at.text_input(key="bench_path").set_value(str(b)).run()
    assert any("lifelong_b.json" in e and "median_edit_s" in e for e in errors(at)), errors(at)


def test_an_edit_that_moves_nothing_or_fails_a_gate_is_said_so():
    # issue 19: K-FAC with defaults ran 77 s, strict recitation 1.00 -> 1.00, and the page said
    # "in force" in green; a rejection showed a green tick
    from types import SimpleNamespace
    from ui.common import failed_gates, unmoved
    still = SimpleNamespace(id="e0005", metrics_before={"strict_recitation": 1.0},
                            metrics_after={"strict_recitation": 0.995}, context={})
    assert "e0005 did not move its target metric: strict_recitation 1.00 → 0.99" in unmoved(still)
    moved = SimpleNamespace(id="e0001", metrics_before={"reliability": 0.1}, metrics_after={"reliability": 0.9})
    assert unmoved(moved) is None
    from ui.common import event_targets
    edit = SimpleNamespace(kind="edit", requests=[{"prompt": "p", "target_new": " Kelmoria"}] * 5)
    assert event_targets(edit) == "Kelmoria, Kelmoria, Kelmoria (+2 more)"  # the History table's column
    assert event_targets(SimpleNamespace(kind="undo", targets=["e0002"])) == "→ e0002"
    gated = SimpleNamespace(context={"gates": [
        {"gate": "locality>=0.98", "measured": 0.9167, "passed": False, "margin": -0.0633},
        {"gate": "reliability>=0.9", "measured": 1.0, "passed": True, "margin": 0.1}]})
    assert failed_gates(gated) == ["`locality>=0.98` (measured 0.917, short by 0.063)"]


def test_choice_hyperparameters_are_select_boxes(app):
    at = app()
    goto(at, "edit")
    at.selectbox(key="edit_editor").set_value("ft").run()
    box = at.selectbox(key="edit_ft_objective")
    assert list(box.options) == ["target", "last"] and box.value == "target"
    box.set_value("last")
    at.number_input(key="edit_ft_steps").set_value(1)
    at.number_input(key="edit_gen_rows").set_value(2)  # generations: as many probes as asked for
    at.button(key="edit_apply").click().run()
    assert not errors(at), errors(at)
    assert at.session_state["last_edit"][0].hparams["objective"] == "last"
    assert len(at.session_state["last_edit"][1]) == 2
    # the request table shows the rephrasings and locality probes too
    table = at.dataframe[0].value
    assert {"rephrase_prompts", "locality"} <= set(table.columns) and " → " in str(table["locality"][0])


def test_history_page_exports_a_checkpoint_that_loads(app, tmp_path):
    at = app()
    goto(at, "edit")
    at.selectbox(key="edit_editor").set_value("ft").run()
    at.number_input(key="edit_ft_steps").set_value(1)
    at.button(key="edit_apply").click().run()
    goto(at, "history")
    at.text_input(key="history_export_folder").set_value(str(tmp_path / "ckpt")).run()
    at.button(key="history_export").click().run()
    assert not errors(at), errors(at)
    assert any("holds 1 edit(s) — e0001 (ft)" in s.value for s in at.success)
    from workbench.core.model import load_model
    from workbench.core.patch import weights_hash
    model, _ = load_model(tmp_path / "ckpt")
    assert weights_hash(model) == at.session_state["wb"].weights_hash()


def test_compare_three_editors_then_apply_one(app):
    at = goto(app(), "compare")
    wb = at.session_state["wb"]
    at.radio(key="compare_source").set_value("world set").run()
    at.number_input(key="compare_count").set_value(2).run()
    at.multiselect(key="compare_editors").set_value(["grace", "ft", "memoir"])
    at.run()
    at.number_input(key="compare_ft_steps").set_value(2)
    at.button(key="compare_run").click().run()
    assert not at.exception and not errors(at), errors(at)
    reqs, rows = at.session_state["last_compare"]
    assert [r["editor"] for r in rows] == ["grace", "ft", "memoir"] and rows[1]["hparams"]["steps"] == 2
    assert wb.log() == [] and wb.weights_hash() == wb.base_hash  # compared on scratch, nothing recorded
    table = at.dataframe[1].value  # after the requests table
    assert list(table["editor"]) == ["(before)", "grace", "ft", "memoir"]
    assert table["reliability"][1].startswith("1.000")  # GRACE's codebook answers its own prompts
    (chart,) = [c for c in at.get("plotly_chart")]
    assert {t["name"] for t in json.loads(chart.proto.spec)["data"]} == {"before", "grace", "ft", "memoir"}
    at.selectbox(key="compare_pick").set_value("grace")
    at.button(key="compare_apply").click().run()
    event, compared = at.session_state["last_compare_applied"]
    assert event.kind == "edit" and wb.active() == [event.id] and event.metrics_after == compared
    assert any("equal the comparison's" in s.value for s in at.success)


def test_benchmarks_page_draws_the_shipped_merge_results_and_runs_a_small_bench(app):
    at = goto(app(), "benchmarks")
    at.multiselect(key="bench_pick").set_value(["merge_v2.json"]).run()
    assert not errors(at), errors(at)
    assert any("| ties |" in m.value for m in at.markdown)
    bars = {t["name"]: t for t in traces(at) if t["type"] == "bar"}
    assert set(bars) == {"reliability", "generality", "locality"} and "ties_svd" in bars["locality"]["x"]
    # a small lifelong run from the page: GRACE at T = 1 and 2, in scratch workspaces
    at.multiselect(key="bench_pick").set_value([]).run()
    at.text_input(key="bench_run_T").set_value("1,2")
    at.number_input(key="bench_run_repeats").set_value(1)
    at.button(key="bench_run").click().run()
    assert not errors(at), errors(at)
    kind, rows = at.session_state["last_bench"]
    assert kind == "lifelong" and [r["T"] for r in rows] == [1, 2] and rows[0]["reliability"] == 1.0
    assert [t["y"] for t in traces(at) if t.get("name") == "grace"][0] == [r["reliability"] for r in rows]
    assert at.session_state["wb"].log() == []  # the session's history is not touched
