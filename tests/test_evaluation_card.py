"""Gates on interval bounds, the evaluation card, and ledgers written before the context column."""
import json
import shlex
import sqlite3

import pytest

from workbench.core.errors import InputError
from workbench.core.gates import Gate
from workbench.core.patch import weights_hash
from workbench.editing.card import evaluation_card
from workbench.editing.session import Workbench
from workbench.eval.requests import load_requests

from .session_helpers import EDITS  # importing it registers the test editors


def test_gate_on_the_lower_bound_rejects_what_the_mean_admits(wb):
    h = weights_hash(wb.model)
    # An edit that changes no locality probe: mean locality 1.0 on 3 requests, Wilson lower bound 0.44.
    ev = wb.edit("test-bump", EDITS[:3], {"scale": "1e-6"}, gates="locality>=0.99,locality.lo>=0.9")
    assert ev.metrics_after["locality"] == 1.0
    lo = ev.context["intervals_after"]["locality"]["lo"]
    assert ev.context["intervals_after"]["locality"]["method"] == "wilson"
    assert lo == pytest.approx(3 / (3 + 1.96 ** 2), abs=1e-3)
    assert ev.kind == "rejected" and "locality.lo" in ev.note and weights_hash(wb.model) == h
    g = {o["gate"]: o for o in ev.context["gates"]}
    assert g["locality>=0.99"]["passed"] and g["locality>=0.99"]["margin"] == pytest.approx(0.01)
    assert not g["locality.lo>=0.9"]["passed"] and g["locality.lo>=0.9"]["margin"] == pytest.approx(lo - 0.9)
    ok = wb.edit("test-bump", EDITS[:3], {"scale": "1e-6"}, gates="locality.lo>=0.4")
    assert ok.kind == "edit" and ok.context["gates"][0]["passed"]


def test_unknown_bound_is_refused_before_editing(wb):
    with pytest.raises(InputError, match="locality.mid"):
        Gate.parse("locality.mid>=0.9")
    with pytest.raises(InputError, match="nonsense.lo"):
        wb.edit("test-bump", EDITS[:1], gates="nonsense.lo>=0.9")
    assert wb.log() == []


def test_card_says_what_ran_and_how_to_redo_it(wb, tmp_path):
    ev = wb.edit("test-bump", EDITS[:2], {"scale": "0.5", "layer": "1"}, seed=7, gates="locality>=0.0",
                 note="card test")
    card = evaluation_card(ev, wb.log(), wb.active(), workspace=str(wb.workspace))
    assert card.startswith(f"# Evaluation card: {ev.id} (test-bump)") and "status: in force" in card
    assert EDITS[0].prompt in card and EDITS[1].target_new in card and "seed: 7" in card
    assert "`layer=1`" in card and "`scale=0.5`" in card and "card test" in card
    rel = ev.context["intervals_after"]["reliability"]
    assert f"{ev.metrics_after['reliability']:.3f} [{rel['lo']:.2f}, {rel['hi']:.2f}]" in card
    assert "| `locality>=0` |" in card
    changed = ev.context["locality_changed_count"]
    assert (f"{changed} probe(s) changed" in card) if changed else ("every locality probe" in card)
    cmd = next(line for line in card.splitlines() if line.startswith("workbench edit"))
    argv = shlex.split(cmd)
    assert argv[argv.index("--seed") + 1] == "7" and argv[argv.index("--gate") + 1] == "locality>=0"
    assert {"layer=1", "scale=0.5"} <= {argv[i + 1] for i, a in enumerate(argv) if a == "--param"}
    # Redo it from the card on a fresh workspace: the same weights.
    reqs = tmp_path / "r.jsonl"
    reqs.write_text("".join(json.dumps(r) + "\n" for r in ev.requests))
    params = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--param")
    other = Workbench(None, tmp_path / "ws2")
    again = other.edit(argv[argv.index("--editor") + 1], load_requests(reqs), params,
                       seed=int(argv[argv.index("--seed") + 1]), gates=argv[argv.index("--gate") + 1])
    assert again.weights_after == ev.weights_after
    wb.undo()
    assert f"reverted by e0002 (undo)" in evaluation_card(ev, wb.log(), wb.active())


def test_card_of_a_rejected_edit_and_refusal_for_an_undo(wb):
    ev = wb.edit("test-bump", EDITS[:1], gates="reliability>=1.01")
    card = evaluation_card(ev, wb.log(), wb.active())
    assert "status: rejected" in card and "| **no** |" in card
    ok = wb.edit("test-bump", EDITS[:1])
    undo = wb.undo()
    assert ok.kind == "edit"
    with pytest.raises(ValueError, match="not an edit"):
        evaluation_card(undo, wb.log(), wb.active())


def test_a_schema_1_ledger_opens_verifies_and_gains_the_column(tmp_path):
    w = Workbench(None, tmp_path / "ws")
    w.edit("test-bump", EDITS[:1])
    w.close()
    # Make it what schema 1 wrote: no context column, no context in the row's hash.
    db = tmp_path / "ws" / "ledger.sqlite"
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT * FROM events").fetchone()
    cols = [c[1] for c in conn.execute("PRAGMA table_info(events)")]
    rec = dict(zip(cols, row))
    from workbench.core.ledger import _COLUMNS, record_hash
    body = {k: (json.loads(rec[k]) if k in ("hparams", "requests", "metrics_before", "metrics_after", "targets")
                and rec[k] is not None else rec[k]) for k in _COLUMNS if k != "context"}
    conn.execute("ALTER TABLE events DROP COLUMN context")
    conn.execute("UPDATE events SET record_hash = ?", (record_hash(body),))
    conn.commit()
    conn.close()
    w = Workbench(None, tmp_path / "ws")
    assert w.verify() == []
    old = w.show("e0001")
    assert old.context is None
    card = evaluation_card(old, w.log(), w.active())
    assert "written before schema 2" in card and "seed: not recorded" in card
    new = w.edit("test-bump", EDITS[1:2])
    assert new.context["seed"] == 0 and w.verify() == []
    w.close()
