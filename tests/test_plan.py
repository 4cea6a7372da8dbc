"""Plans (`workbench run PLAN.toml`), tags, `workbench diff` and the HTML audit report."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from workbench.cli.main import main
from workbench.core.errors import InputError
from workbench.core.patch import weights_hash
from workbench.editing.plan import load_plan, run_plan
from workbench.editing.session import Workbench
from workbench.eval.requests import dump_requests

from .session_helpers import EDITS  # importing it registers the test editors

PLAN = """
[plan]
workspace = "ws"
author = "planner"

[[step]]
action = "edit"
editor = "test-bump"
requests = "edits.jsonl"
count = 5
params = {{ layer = 1 }}

[[step]]
action = "edit"
editor = "test-one"
requests = "edits.jsonl"
start = 5
count = {one}
params = {{ layer = 2 }}

[[step]]
action = "tag"
name = "after-two"

[[step]]
action = "eval"
requests = "edits.jsonl"
count = 3
out = "eval.json"

[[step]]
action = "export"
out = "exported"

[[step]]
action = "bundle"
out = "h.wbbundle"
"""


@pytest.fixture
def plan_dir(tmp_path):
    dump_requests(tmp_path / "edits.jsonl", EDITS[:20])
    return tmp_path


def _write(plan_dir, text, name="plan.toml"):
    (plan_dir / name).write_text(text)
    return plan_dir / name


def _plan_events(ws):
    conn = sqlite3.connect(ws / "ledger.sqlite")
    try:
        rows = conn.execute("SELECT id, kind, context FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(i, k, json.loads(c) if c else {}) for i, k, c in rows]


def test_a_plan_runs_every_step_on_one_model_and_a_rerun_repeats_nothing(plan_dir, capsys, monkeypatch):
    path = _write(plan_dir, PLAN.format(one=4))
    loads = []
    real = Workbench.__init__
    monkeypatch.setattr(Workbench, "__init__", lambda self, *a, **k: (loads.append(1), real(self, *a, **k))[1])
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert len(loads) == 1  # one model load for the whole plan
    assert "plan plan.toml" in out and "after-two" in out
    events = _plan_events(plan_dir / "ws")
    # one batch edit, four one-request edits (items 0-3 of step 2), one tag
    assert [k for _, k, _ in events] == ["edit"] * 5 + ["tag"]
    assert [c["plan"]["item"] for _, _, c in events[1:5]] == [0, 1, 2, 3]
    assert events[0][2]["plan"]["step"] == 1 and "item" not in events[0][2]["plan"]
    assert events[5][2]["tag"] == "after-two"
    assert json.loads((plan_dir / "eval.json").read_text())["edit"]["n"] == 3
    prov = json.loads((plan_dir / "exported" / "workbench_edits.json").read_text())
    assert [e["id"] for e in prov["edits"]] == [i for i, _, _ in events[:5]]
    assert (plan_dir / "h.wbbundle").is_file()
    # the same plan again: every step is recorded as done; nothing is edited or written again
    assert main(["run", str(path)]) == 0
    assert "done before" in capsys.readouterr().out and len(_plan_events(plan_dir / "ws")) == 6
    wb = Workbench(None, plan_dir / "ws")
    assert wb.show("after-two").id == events[4][0] and wb.verify() == []
    assert {e.author for e in wb.log()} == {"planner"}


def test_a_plan_stopped_midway_resumes_without_repeating_a_recorded_edit(plan_dir, monkeypatch):
    path = _write(plan_dir, PLAN.format(one=6))
    plan = load_plan(path)
    wb = Workbench(None, plan_dir / "ws")
    real, calls = Workbench.edit, []

    def killed_on_the_fourth(self, *a, **k):  # the first step's edit, then two of step 2's: then "killed"
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Workbench, "edit", killed_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_plan(wb, plan)
    assert [c["plan"].get("item") for _, k, c in _plan_events(plan_dir / "ws")] == [None, 0, 1]
    assert wb.ledger.steps_done(plan.hash).keys() == {0}
    monkeypatch.setattr(Workbench, "edit", real)
    summaries = run_plan(Workbench(None, plan_dir / "ws"), load_plan(path))
    assert [s["status"] for s in summaries] == ["done before"] + ["ok"] * 5
    items = [c["plan"].get("item") for _, k, c in _plan_events(plan_dir / "ws") if k == "edit"][1:]
    assert items == [0, 1, 2, 3, 4, 5]  # each request edited exactly once


def test_a_killed_plan_process_resumes_without_repeating_a_recorded_edit(plan_dir):
    # a real kill (SIGKILL) at whatever point the process has reached after its third edit
    dump_requests(plan_dir / "many.jsonl", EDITS[:30])
    path = _write(plan_dir, '[plan]\nworkspace = "ws"\n[[step]]\naction = "edit"\neditor = "ft"\n'
                            'requests = "many.jsonl"\none_by_one = true\nparams = { steps = 2 }\n')
    cmd = [sys.executable, "-m", "workbench.cli", "run", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if (plan_dir / "ws" / "ledger.sqlite").is_file() and len(_plan_events(plan_dir / "ws")) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(_plan_events(plan_dir / "ws"))
    assert 3 <= before < 30
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    items = [c["plan"]["item"] for _, k, c in _plan_events(plan_dir / "ws") if k == "edit"]
    assert sorted(items) == list(range(30)) and len(items) == 30


@pytest.mark.parametrize("step, message", [
    ('action = "rewrite"', "unknown action 'rewrite'"),
    ('action = "edit"\neditor = "ft"\nrequests = "missing.jsonl"', "missing.jsonl"),
    ('action = "edit"\neditor = "ft"\nrequests = "edits.jsonl"\ngate = "reliability>>0.9"', "gate"),
    ('action = "edit"\neditor = "nope"\nrequests = "edits.jsonl"', "nope"),
    ('action = "edit"\neditor = "ft"\nrequests = "edits.jsonl"\nparams = { steps = -3 }', "steps"),
    ('action = "forget"\neditor = "ft"\nrequests = "edits.jsonl"', "not a forget editor"),
    ('action = "tag"\nname = "v1"\n[[step]]\naction = "tag"\nname = "v1"', "tag 'v1' is given earlier"),
    ('action = "tag"\nname = "e0004"', "not 'base' or an event id"),
    ('action = "edit"\neditor = "ft"\nrequests = "edits.jsonl"\nlayer = 2', "not layer"),
    ('action = "edit"\neditor = "ga"\nrequests = "edits.jsonl"', "use action = \"forget\""),
    ('action = "export"\nout = "no/such/folder/model"', "no folder"),
])
def test_bad_plans_are_refused_before_anything_loads(plan_dir, capsys, step, message):
    path = _write(plan_dir, f'[plan]\nworkspace = "ws"\n[[step]]\n{step}\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "plan.toml" in err and not (plan_dir / "ws").exists()  # no model loaded, no workspace made


def test_a_tag_the_workspace_already_has_is_refused_by_the_dry_run(plan_dir, capsys):
    wb = Workbench(None, plan_dir / "ws")
    wb.edit("test-bump", EDITS[:1])
    wb.tag("v1")
    wb.close()
    path = _write(plan_dir, '[plan]\nworkspace = "ws"\n[[step]]\naction = "tag"\nname = "v1"\n')
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "tag 'v1' is given in the workspace" in capsys.readouterr().err
    good = _write(plan_dir, PLAN.format(one=2), "good.toml")
    assert main(["run", str(good), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 step(s) checked" in out and "2. edit test-one on 2 request(s)" in out and "one request per edit" in out


def test_a_failing_gate_stops_the_plan_at_that_step(plan_dir, capsys):
    path = _write(plan_dir, '[plan]\nworkspace = "ws"\n'
                            '[[step]]\naction = "edit"\neditor = "test-bump"\nrequests = "edits.jsonl"\ncount = 2\n'
                            '[[step]]\naction = "gate"\nrequests = "edits.jsonl"\ncount = 2\ngate = "reliability>=0.99"\n'
                            '[[step]]\naction = "tag"\nname = "never"\n')
    assert main(["run", str(path)]) == 3
    out = capsys.readouterr().out
    assert "step 2 was rejected" in out and "reliability" in out
    assert [k for _, k, _ in _plan_events(plan_dir / "ws")] == ["edit"]  # the tag step never ran


def test_tags_name_points_usable_wherever_an_id_is(wb):
    e1 = wb.edit("test-bump", EDITS[:1], {"layer": "1"})
    t = wb.tag("first")
    assert t.kind == "tag" and t.targets == [e1.id] and wb.active() == [e1.id]  # a tag changes nothing
    wb.edit("test-bump", EDITS[1:2], {"layer": "2"})
    assert wb.ledger.tags() == {"first": e1.id} and wb.show("first").id == e1.id
    with pytest.raises(InputError, match="given once"):
        wb.tag("first")
    with pytest.raises(InputError, match="a tag starts with a letter"):
        wb.tag("1st")
    wb.tag("start", "base")
    wb.rollback("first")
    assert wb.active() == [e1.id] and wb.verify() == []
    assert wb.state_at("start") == [] and wb.state_at("first") == [e1.id]


def test_diff_lists_the_tensors_that_differ_and_scores_both_states(wb):
    e1 = wb.edit("test-bump", EDITS[:1], {"layer": "1"})
    e2 = wb.edit("test-bump", EDITS[1:2], {"layer": "2"})
    wb.edit("test-shift", EDITS[:1])
    head = weights_hash(wb.model)
    d = wb.diff(e1.id, "base")
    assert d["only_a"] == [e1.id] and d["only_b"] == []
    (t,) = d["tensors"]
    assert "layers.1." in t["name"] and t["diff_norm"] > 0 and 0 < t["relative"] < 1
    d = wb.diff(e1.id, "e0003", EDITS[:3])
    assert d["only_b"] == [e2.id, "e0003"] and [a["kind"] for a in d["attachments"]["b"]] == ["test-shift"]
    assert len(d["tensors"]) == 1 and "layers.2." in d["tensors"][0]["name"]
    assert {c["metric"] for c in d["metrics"]["paired"]} >= {"reliability", "locality"}
    assert weights_hash(wb.model) == head and len(wb.log()) == 3  # back at the head, nothing recorded
    assert wb.diff(e2.id, e2.id)["tensors"] == []


def test_the_report_is_one_self_contained_file_with_every_event(wb, tmp_path):
    from workbench.editing.report import write_report
    wb.edit("test-bump", EDITS[:2], {"layer": "1"}, note="a <b>bold</b> note", gates="locality>=0.5")
    wb.edit("test-bump", EDITS[2:3], {"layer": "2"})
    wb.undo()
    wb.tag("v1", "e0001")
    out = write_report(wb, tmp_path / "r.html")
    text = out.read_text()
    assert "<script src=" not in text and "Plotly" in text  # plotly inline: opens offline
    assert "intact: 4 events" in text and text.count('<details id="e000') == 4
    assert "a &lt;b&gt;bold&lt;/b&gt; note" in text and "<b>bold</b>" not in text  # escaped
    assert "locality&gt;=0.5: passed" in text and EDITS[2].prompt.split()[0] in text
    assert str(tmp_path) not in text and "v1 → e0001" in text


def test_edit_takes_a_file_of_several_for_an_editor_of_one_request_at_a_time(tmp_path, capsys):
    # `workbench edit --editor rome --requests FILE` used to refuse a file of several requests
    dump_requests(tmp_path / "three.jsonl", EDITS[:3])
    out = tmp_path / "events.json"
    assert main(["edit", "--editor", "test-one", "--requests", str(tmp_path / "three.jsonl"), "--workspace",
                 str(tmp_path / "ws"), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "test-one edits one request at a time: 3 requests as 3 sequential edits" in captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["e0001", "e0002", "e0003"]
    assert [e["kind"] for e in json.loads(out.read_text())] == ["edit"] * 3
    # --json that cannot be written is refused before the model loads or anything is recorded
    assert main(["edit", "--editor", "test-one", "--requests", str(tmp_path / "three.jsonl"), "--workspace",
                 str(tmp_path / "ws2"), "--json", str(tmp_path / "missing" / "e.json")]) == 2
    assert "cannot write here" in capsys.readouterr().err and not (tmp_path / "ws2").exists()
