"""Session API and ledger guarantees: exact rollback, reopen, tamper evidence, gates, bundles."""
import os
import random
import signal
import sqlite3
import time

import pytest
import torch

from workbench.core.errors import InputError
from workbench.core.patch import weights_hash
from workbench.eval.requests import EditRequest, ForgetRequest
from workbench.editing.session import Workbench

from .session_helpers import EDITS  # importing it registers the test editors


def test_many_edits_then_rollback_to_base_is_bit_exact(wb):
    base = weights_hash(wb.model)
    for i in range(6):
        wb.edit("test-bump", EDITS[i:i + 1], {"layer": str(i % 4)})
    assert weights_hash(wb.model) != base and len(wb.active()) == 6
    wb.edit("test-shift", EDITS[:1])
    ev = wb.rollback("base")
    assert weights_hash(wb.model) == base == ev.weights_after and wb.active() == []
    assert not hasattr(wb.model.model.norm, "inner")  # the attachment is gone too
    assert wb.verify() == []


def test_ledger_records_who_what_and_metrics(wb):
    ev = wb.edit("test-bump", EDITS[:2], {"scale": "0.1"}, note="why not")
    assert ev.kind == "edit" and ev.author == "tester" and ev.note == "why not"
    assert ev.hparams == {"layer": wb.adapter.default_layer(), "scale": 0.1}
    assert [r["prompt"] for r in ev.requests] == [EDITS[0].prompt, EDITS[1].prompt]
    assert set(ev.metrics_before) >= {"reliability", "generality", "locality"}
    assert ev.metrics_before["locality"] == 1.0
    assert ev.weights_before == wb.base_hash and ev.weights_after == weights_hash(wb.model)
    assert ev.patch_bytes > 0 and (wb.workspace / ev.patch_file).is_file()


def test_reopening_restores_the_edited_state(tmp_path):
    w = Workbench(None, tmp_path / "ws")
    w.edit("test-bump", EDITS[:1])
    w.edit("test-shift", EDITS[:1])
    w.edit("test-bump", EDITS[1:2], {"layer": "0"})
    w.undo()
    h = weights_hash(w.model)
    w.close()
    w2 = Workbench(None, tmp_path / "ws")
    assert weights_hash(w2.model) == h and len(w2.active()) == 2
    assert hasattr(w2.model.model.norm, "inner")


def test_undo_and_revert_out_of_the_middle(wb):
    e1 = wb.edit("test-bump", EDITS[:1], {"layer": "0"})
    h1 = weights_hash(wb.model)
    wb.edit("test-bump", EDITS[1:2], {"layer": "2"})
    wb.undo()
    assert weights_hash(wb.model) == h1
    e3 = wb.edit("test-bump", EDITS[1:2], {"layer": "2"})
    wb.revert(e1.id)  # layers differ, the bump editor allows single revert
    assert wb.active() == [e3.id]
    # The result equals applying only the later edit to the base model.
    assert weights_hash(wb.model) != e3.weights_after  # e1's bump is gone from the state
    e5 = wb.edit("test-bump", EDITS[2:3], {"layer": "2"})
    with pytest.raises(InputError, match="same weights"):
        wb.revert(wb.active()[0])
    assert wb.active()[-1] == e5.id


def test_revert_matches_base_plus_later_edit(tmp_path):
    a = Workbench(None, tmp_path / "a")
    e1 = a.edit("test-bump", EDITS[:1], {"layer": "0"})
    a.edit("test-bump", EDITS[1:2], {"layer": "3"})
    a.revert(e1.id)
    b = Workbench(None, tmp_path / "b")
    b.edit("test-bump", EDITS[1:2], {"layer": "3"})
    assert weights_hash(a.model) == weights_hash(b.model)


def test_tampering_with_a_row_or_a_patch_is_named(tmp_path):
    w = Workbench(None, tmp_path / "ws")
    e1 = w.edit("test-bump", EDITS[:1])
    e2 = w.edit("test-bump", EDITS[1:2])
    assert w.verify() == []
    w.close()
    db = sqlite3.connect(tmp_path / "ws" / "ledger.sqlite")
    db.execute("UPDATE events SET author = 'mallory' WHERE id = ?", (e1.id,))
    db.commit()
    db.close()
    problems = Workbench(None, tmp_path / "ws").verify()
    assert any(e1.id in p and "record hash" in p for p in problems)
    db = sqlite3.connect(tmp_path / "ws" / "ledger.sqlite")
    db.execute("UPDATE events SET author = ? WHERE id = ?", (e1.author, e1.id))
    db.commit()
    db.close()
    w = Workbench(None, tmp_path / "ws")
    assert w.verify() == []  # restoring the row restores the chain
    patch = tmp_path / "ws" / e2.patch_file
    data = bytearray(patch.read_bytes())
    data[-3] ^= 0xFF
    patch.write_bytes(bytes(data))
    problems = w.verify(replay=False)
    assert any(e2.patch_file in p and "changed" in p for p in problems)


def test_deleting_a_row_breaks_the_chain(tmp_path):
    w = Workbench(None, tmp_path / "ws")
    w.edit("test-bump", EDITS[:1])
    e2 = w.edit("test-bump", EDITS[1:2])
    w.edit("test-bump", EDITS[2:3])
    w.close()
    db = sqlite3.connect(tmp_path / "ws" / "ledger.sqlite")
    db.execute("DELETE FROM events WHERE id = ?", (e2.id,))
    db.commit()
    db.close()
    from workbench.core.ledger import LedgerError
    with pytest.raises(LedgerError):  # replay no longer reaches the recorded head
        Workbench(None, tmp_path / "ws")


def test_bad_request_in_a_batch_changes_nothing(wb):
    h = weights_hash(wb.model)
    long = EditRequest(prompt="word " * 400, target_new="x")
    with pytest.raises(InputError, match="request 3"):
        wb.edit("test-bump", [EDITS[0], EDITS[1], long])
    with pytest.raises(InputError, match="request 2 is a ForgetRequest"):
        wb.edit("test-bump", [EDITS[0], ForgetRequest(kind="text", prefix="a", suffix="b")])
    with pytest.raises(InputError) as e:
        wb.edit("test-bump", EDITS[:1], {"scale": "-1"})
    assert e.value.field == "scale"
    assert weights_hash(wb.model) == h and wb.log() == []


def test_gate_rejects_and_records(wb):
    h = weights_hash(wb.model)
    ev = wb.edit("test-bump", EDITS[:1], gates="reliability>=1.01,locality>=0.5")
    assert ev.kind == "rejected" and "reliability" in ev.note and ev.metrics_after is not None
    assert weights_hash(wb.model) == h and wb.active() == []
    ok = wb.edit("test-bump", EDITS[:1], gates="locality>=0.0")
    assert ok.kind == "edit" and wb.active() == [ok.id]
    assert wb.verify() == []


def test_export_weights_only_and_refuse_attachments(wb, tmp_path):
    from transformers import AutoModelForCausalLM
    import json
    import stat
    first = wb.edit("test-bump", EDITS[:1], note="first")
    out = wb.export(tmp_path / "exp")
    m = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert weights_hash(m) == weights_hash(wb.model)
    # every file readable like ordinary output (safetensors' own file came out 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o666 & ~umask}
    # the checkpoint says what it holds, with no absolute path
    prov = json.loads((out / "workbench_edits.json").read_text())
    assert [e["id"] for e in prov["edits"]] == [first.id] and prov["edits"][0]["note"] == "first"
    assert prov["weights_hash"] == weights_hash(m) and prov["base_hash"] == wb.base_hash
    assert str(tmp_path) not in json.dumps(prov) and "/" not in prov["base_model"]
    wb.edit("test-shift", EDITS[:1])
    with pytest.raises(InputError, match="adds modules"):
        wb.export(tmp_path / "exp2")
    assert not (tmp_path / "exp2").exists()


def test_bundle_replays_on_another_copy_and_refuses_another_base(tmp_path):
    a = Workbench(None, tmp_path / "a")
    a.edit("test-bump", EDITS[:1])
    a.edit("test-shift", EDITS[:1])
    a.edit("test-bump", EDITS[1:2], {"layer": "1"})
    path = a.bundle(tmp_path / "h.wbbundle")
    b = Workbench(None, tmp_path / "b", author="other")
    events = b.apply_bundle(path)
    assert len(events) == 3 and weights_hash(b.model) == weights_hash(a.model)
    assert "replayed from bundle" in events[0].note and b.verify() == []
    # Another base model: save a perturbed copy and try there.
    other = tmp_path / "other-model"
    with torch.no_grad():
        c = Workbench(None, tmp_path / "c")
        c.model.lm_head.weight[0, 0] += 1.0
        c.model.save_pretrained(other)
        c.tok.save_pretrained(other)
    d = Workbench(other, tmp_path / "d")
    with pytest.raises(InputError, match="another base model"):
        d.apply_bundle(path)
    assert d.log() == []


def test_a_bundle_after_a_revert_out_of_the_middle_replays_on_a_fresh_workspace(tmp_path):
    # the later edit was recorded on top of the reverted one: its recorded starting hash is no
    # state a fresh copy of the base can reach, so the bundle carries the hashes of the chain
    a = Workbench(None, tmp_path / "a")
    first = a.edit("test-bump", EDITS[:1], {"layer": "0"})
    second = a.edit("test-bump", EDITS[1:2], {"layer": "2"})
    a.edit("test-bump", EDITS[2:3], {"layer": "3"})
    a.revert(first.id)
    head = weights_hash(a.model)
    path = a.bundle(tmp_path / "h.wbbundle")
    assert weights_hash(a.model) == head  # walked back to base and forward again, exactly
    from workbench.editing.bundle import read_manifest
    z, manifest = read_manifest(path)
    z.close()
    recs = manifest["edits"]
    assert [r["id"] for r in recs] == [second.id, "e0003"] and recs[0]["weights_before"] == a.base_hash
    assert recs[0]["recorded_weights_before"] == second.weights_before != a.base_hash
    assert recs[1]["weights_before"] == recs[0]["weights_after"] and recs[1]["weights_after"] == head
    b = Workbench(None, tmp_path / "b")
    events = b.apply_bundle(path)
    assert len(events) == 2 and weights_hash(b.model) == head and b.verify() == []
    # without a revert the recorded hashes are the chain's, and nothing is re-walked or renamed
    c = Workbench(None, tmp_path / "c")
    c.edit("test-bump", EDITS[:1], {"layer": "0"})
    z, manifest = read_manifest(c.bundle(tmp_path / "c.wbbundle"))
    z.close()
    assert "recorded_weights_before" not in manifest["edits"][0]


def test_an_editor_of_one_request_at_a_time_takes_a_file_as_sequential_edits(wb):
    ticks = []
    events = wb.edit_each("test-one", EDITS[:3], {"layer": "1"}, note="batch", progress=ticks.append)
    assert [e.kind for e in events] == ["edit"] * 3 and ticks == [1, 1, 1]
    assert wb.active() == [e.id for e in events] and events[1].note == "batch (request 2 of 3)"
    assert [e.requests[0]["prompt"] for e in events] == [r.prompt for r in EDITS[:3]]
    # bad hyper-parameters are refused before the first edit
    with pytest.raises(InputError, match="scale"):
        wb.edit_each("test-one", EDITS[3:5], {"scale": "-1"})
    assert len(wb.log()) == 3
    # a gate that fails stops the run at that request; the ones before it stay in force
    events = wb.edit_each("test-one", EDITS[3:6], gates="reliability>=0.99")
    assert [e.kind for e in events] == ["rejected"] and len(wb.active()) == 3


def test_workspace_refuses_another_base_model(tmp_path):
    w = Workbench(None, tmp_path / "ws")
    w.edit("test-bump", EDITS[:1])
    w.close()
    other = tmp_path / "other-model"
    w2 = Workbench(None, tmp_path / "tmpws")
    with torch.no_grad():
        w2.model.lm_head.weight[0, 0] += 1.0
    w2.model.save_pretrained(other)
    w2.tok.save_pretrained(other)
    with pytest.raises(InputError, match="another base model"):
        Workbench(other, tmp_path / "ws")


def _child_loop(ws):
    """Edits, undos, rollbacks, bundle writes and exports, at random, forever."""
    torch.set_num_threads(1)
    w = Workbench(None, ws)
    rng = random.Random(os.getpid())
    out = ws.parent / "out"
    n = 0
    while True:
        n += 1
        r = rng.random()
        active = w.active()
        if active and r < 0.2:
            w.undo()
        elif active and r < 0.35:
            w.rollback(rng.choice(["base"] + active[:-1]))
        elif active and r < 0.45:
            w.bundle(out / f"b{os.getpid()}-{n}.wbbundle")
        elif active and r < 0.55:
            w.export(out / f"x{os.getpid()}-{n}")
        else:
            w.edit("test-bump", EDITS[rng.randrange(10):][:1], {"layer": str(rng.randrange(4))})


def _check_outputs(out) -> None:
    """Every bundle or export under its final name is complete (temporaries may remain)."""
    from safetensors import safe_open

    from workbench.editing.bundle import read_manifest
    for p in sorted(out.glob("b*.wbbundle")):
        z, manifest = read_manifest(p)  # raises on a partial zip
        assert manifest["edits"] and all(z.read(e["bundle_file"]) for e in manifest["edits"]), p
        z.close()
    for p in sorted(out.glob("x*")):
        assert (p / "config.json").is_file(), p
        with safe_open(p / "model.safetensors", "pt") as f:  # raises on a truncated file
            assert len(list(f.keys())) > 10, p


def _crash_trials(tmp_path, trials: int) -> None:
    ws = tmp_path / "ws"
    Workbench(None, ws).close()
    rng = random.Random(0)
    committed_events = []
    for trial in range(trials):
        pid = os.fork()
        if pid == 0:  # child
            try:
                _child_loop(ws)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.3, 1.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        w = Workbench(None, ws)  # raises if replay does not reach the recorded head
        assert w.verify(replay=False) == [], f"trial {trial}"
        assert weights_hash(w.model) == w.ledger.head_hash()
        committed_events.append(len(w.log()))
        w.close()
        _check_outputs(ws.parent / "out")
    assert committed_events[-1] > trials // 5  # the kills did land between many commits
    kinds = {e.kind for e in Workbench(None, ws).log()}
    assert {"edit", "undo", "rollback"} <= kinds, kinds
    w = Workbench(None, ws)
    assert w.verify() == []  # a full replay of the whole history at the end


def test_crash_at_any_point_leaves_a_consistent_history(tmp_path):
    """10 trials: a child process editing, undoing, rolling back, bundling and exporting in a
    loop is SIGKILLed at a random moment; the workspace must then verify clean and reopen at
    the last committed version, and every bundle or export under its final name is complete.
    (10 keep the default run under 10 minutes on this machine; 120 run with -m slow.)"""
    _crash_trials(tmp_path, 10)


@pytest.mark.slow
def test_crash_at_any_point_many_trials(tmp_path):
    """The same with 120 trials (`pytest -m slow`)."""
    _crash_trials(tmp_path, 120)


def test_two_sessions_on_one_workspace_are_serialized_not_interleaved(tmp_path):
    """A session whose model is behind the ledger (another session recorded meanwhile) is
    refused with a clear message and records nothing; reopening brings it to the head."""
    from workbench.core.ledger import LedgerError
    from workbench.eval.requests import EditRequest
    from workbench.editing.session import Workbench
    ws = tmp_path / "ws"
    a, b = Workbench(None, ws), Workbench(None, ws)
    reqs = [EditRequest("Vahir Thiosteal was born in", "Lorvan")]
    try:
        base = a.weights_hash()
        first = a.edit("ft", reqs, {"steps": "3"})
        assert b.stale() and not a.stale()
        for act in (lambda: b.edit("ft", reqs, {"steps": "3"}), b.undo, lambda: b.rollback("base")):
            with pytest.raises(LedgerError, match="changed by another session"):
                act()
            assert b.weights_hash() == base and [e.id for e in a.log()] == [first.id]
        c = Workbench(None, ws)  # reopening replays to the head
        assert c.weights_hash() == a.weights_hash()
        c.undo()
        with pytest.raises(LedgerError, match="changed by another session"):
            a.edit("ft", reqs, {"steps": "3"})
        assert a.verify() == [] and len(a.log()) == 2
        c.close()
    finally:
        a.close()
        b.close()


def test_two_processes_editing_one_workspace_leave_a_verifiable_history(tmp_path):
    """Two CLI processes race on one workspace: each edit either lands or is refused with the
    message; the history always verifies and replays."""
    import subprocess
    import sys
    from workbench.eval.requests import EditRequest, dump_requests
    from workbench.editing.session import Workbench
    ws, req = tmp_path / "ws", tmp_path / "r.jsonl"
    dump_requests(req, [EditRequest("Vahir Thiosteal was born in", "Lorvan")])
    cmd = [sys.executable, "-m", "workbench.cli", "edit", "--editor", "ft", "--requests", str(req),
           "--param", "steps=3", "--workspace", str(ws)]
    Workbench(None, ws).close()  # create the workspace first, so both processes open the same one
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all(code in (0, 2) for code, _ in results), results
    assert any(code == 0 for code, _ in results)
    assert all("changed by another session" in err for code, err in results if code == 2), results
    wb = Workbench(None, ws)
    try:
        assert wb.verify() == [] and len(wb.log()) == sum(code == 0 for code, _ in results)
    finally:
        wb.close()


def test_compare_runs_each_candidate_on_the_current_model_and_records_nothing(wb):
    wb.edit("test-bump", EDITS[:1], {"layer": "0"})
    h, n = weights_hash(wb.model), len(wb.log())
    rows = wb.compare(EDITS[1:3], [("test-bump", {"layer": "2"}), ("test-shift", None), ("grace", {"n_iter": "20"})])
    assert weights_hash(wb.model) == h and len(wb.log()) == n  # every trial reverted exactly, none recorded
    assert not hasattr(wb.model.model.norm, "inner")  # the shift's attachment is gone too
    assert [r["editor"] for r in rows] == ["test-bump", "test-shift", "grace"]
    assert rows[0]["metrics_before"] == rows[1]["metrics_before"] == rows[2]["metrics_before"]  # measured once
    assert rows[2]["metrics_after"]["reliability"] > rows[2]["metrics_before"]["reliability"]
    # applying the chosen one records what the comparison showed
    ev = wb.edit("grace", EDITS[1:3], rows[2]["params"], seed=rows[2]["seed"])
    assert ev.metrics_after == rows[2]["metrics_after"] and ev.hparams == rows[2]["hparams"]


def test_compare_refuses_a_bad_candidate_before_any_runs(wb):
    h = weights_hash(wb.model)
    with pytest.raises(InputError, match="n_iter"):
        wb.compare(EDITS[:1], [("test-bump", None), ("grace", {"n_iter": "-3"})])
    assert weights_hash(wb.model) == h and wb.log() == []


def test_progress_reaches_a_listening_front_end_and_only_its_own_thread(wb):
    import threading
    from workbench.core.progress import Progress, progress_bar, reporting
    sink = Progress()

    def elsewhere():
        with progress_bar("another session's work", 9, enabled=False) as advance:
            advance(9)
    with reporting(sink):
        with progress_bar("counting", 4, enabled=False) as advance:
            advance(3)
            assert (sink.step, sink.done, sink.total, sink.fraction()) == ("counting", 3, 4, 0.75)
            assert "counting 3/4" in sink.describe()
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()  # work on another thread reports nothing here
        assert (sink.step, sink.done) == ("counting", 3)
        wb.edit("test-bump", EDITS[1:2])
    assert sink.step == "measuring after the edit" and sink.done == sink.total > 0  # every answer counted


def test_an_open_session_marks_its_workspace_in_use(tmp_path):
    # a refused command removes an empty workspace it created only when no session has it open
    from workbench.editing.session import unused
    a = Workbench(None, tmp_path / "ws")
    assert not unused(tmp_path / "ws")
    Workbench.close_all()
    assert unused(tmp_path / "ws")
    a.close()  # closing twice is harmless


def test_closing_a_commands_sessions_leaves_other_threads_sessions_open(tmp_path):
    # a UI opens its sessions on threads of their own; a command ending on this thread must not
    # close them (SQLite refuses a connection used from another thread)
    import threading
    from workbench.editing.session import unused
    other = []
    t = threading.Thread(target=lambda: other.append(Workbench(None, tmp_path / "ui-ws")))
    t.start()
    t.join()
    mine = Workbench(None, tmp_path / "cli-ws")
    Workbench.close_all()
    assert unused(tmp_path / "cli-ws") and not unused(tmp_path / "ui-ws")
    mine.close()
