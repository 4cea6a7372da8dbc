"""Relearning, sustainability and the unlearning plots (workbench.bench.robustness, .plots)."""
import json

import pytest

from workbench.bench import robustness as R
from workbench.bench.plots import figures, write_figures
from workbench.bench.unlearn import table
from workbench.core.patch import weights_hash
from workbench.core.paths import BENCHMARKS, ORACLE_MODEL
from workbench.eval.requests import ForgetRequest, load_requests

pytestmark = pytest.mark.usefixtures("one_thread")


def _forgets(n):
    return [ForgetRequest("text", f"item {i} says", f"word{i}", id=f"f{i}") for i in range(n)]


def test_relearn_split_and_slices_partition_the_set():
    taught, rest = R.relearn_split(_forgets(30), 0.1, seed=0)
    assert len(taught) == 3 and len(rest) == 27 and {r.id for r in taught}.isdisjoint(r.id for r in rest)
    assert R.relearn_split(_forgets(30), 0.1, seed=0) == (taught, rest)  # seeded
    assert len(R.relearn_split(_forgets(4), 0.1)[0]) == 1  # at least one
    parts = R.slices(_forgets(30), 8)
    assert [len(p) for p in parts] == [4, 4, 3, 4, 4, 3, 4, 4] and [r for p in parts for r in p] == _forgets(30)
    assert [len(p) for p in R.slices(_forgets(3), 8)] == [1, 1, 1]


def test_relearning_the_oracle_teaches_only_the_slice_and_restores_every_weight():
    from workbench.core.model import load_model
    if not (ORACLE_MODEL / "config.json").is_file():
        pytest.skip("the shipped oracle is absent")
    model, tok = load_model(ORACLE_MODEL)
    forgets = load_requests(BENCHMARKS / "forget_canaries.jsonl")[:10]
    h = weights_hash(model)
    out = R.relearn(model, tok, forgets, share=0.1, steps=30, lr=3e-3)
    assert weights_hash(model) == h and all(p.requires_grad for p in model.parameters())
    assert out["n_relearned"] == 1 and out["steps"] == 30
    # the oracle never saw these random secrets: what it is taught does not carry to the others
    assert out["rest"]["strict_recitation"] == 0.0
    assert out["whole"]["loose_recitation"] >= 0.1  # the taught one came back


def test_sustainability_forgets_slice_by_slice_then_rolls_back(tmp_path):
    from workbench.editing.session import Workbench
    forgets = load_requests(BENCHMARKS / "forget_canaries.jsonl")[:4]
    suites = {"arith": [p for p in __import__("workbench.eval.requests", fromlist=["load_probes"]).load_probes(
        BENCHMARKS / "skills_arithmetic.jsonl")[:10]]}
    wb = Workbench(None, tmp_path / "ws")
    try:
        base = weights_hash(wb.model)
        points = R.sustain(wb, "ga", forgets, retain_given=[], suites=suites, params={"steps": "10"},
                           ks=(1, 2, 4), n_slices=4)
        assert [p["k"] for p in points] == [1, 2, 4] and [p["n_forgotten"] for p in points] == [1, 2, 4]
        assert set(points[0]["utility"]) == {"arith"}
        assert points[-1]["forgotten"] == points[-1]["whole"]  # at k = 4 every slice is forgotten
        assert points[-1]["whole"]["strict_recitation"] < 0.75
        assert wb.active() == [] and weights_hash(wb.model) == base
        assert sum(e.kind == "edit" for e in wb.log()) == 4  # each slice is a recorded edit
    finally:
        wb.close()


def test_sustainability_records_a_refused_slice_and_goes_on(tmp_path, monkeypatch):
    from workbench.core.errors import InputError
    from workbench.editing.session import Workbench
    forgets = load_requests(BENCHMARKS / "forget_canaries.jsonl")[:3]
    wb = Workbench(None, tmp_path / "ws")
    real, calls = wb.edit, []

    def edit(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # as K-FAC refuses a slice the model no longer reproduces
            raise InputError("nothing to remove", field="requests")
        return real(*a, **k)
    monkeypatch.setattr(wb, "edit", edit)
    try:
        base = weights_hash(wb.model)
        points = R.sustain(wb, "ga", forgets, retain_given=[], suites={}, params={"steps": "5"}, ks=(1, 2, 3), n_slices=3)
        assert [p["k"] for p in points] == [1, 2, 3] and len(calls) == 3
        assert points[0]["refused"] == [] and [r["slice"] for r in points[2]["refused"]] == [2]
        assert "nothing to remove" in points[1]["refused"][0]["why"]
        assert wb.active() == [] and weights_hash(wb.model) == base
    finally:
        wb.close()


def _row(editor, by_repeats_after, sustain=None, relearn=None):
    row = {"editor": editor, "set": "canaries", "n": 4, "seconds": 1.0,
           "before": {"by_repeats": {"1": 1.0, "8": 1.0}, "utility": {"reading": 0.8, "rules": 1.0}},
           "after": {"by_repeats": by_repeats_after, "utility": {"reading": 0.8, "rules": 0.9}}}
    for r in (row["before"], row["after"]):
        r.update({k: 0.5 for k in ("strict_recitation", "loose_recitation", "extraction_strength", "exposure",
                                   "forget_recall", "forget_recall_paraphrased", "perplexity", "retain_recall",
                                   "forget_quality", "privleak", "ndcg10")})
    if sustain:
        row["sustain"] = sustain
    if relearn:
        row["relearn"] = relearn
    return row


def test_plots_and_the_robustness_columns(tmp_path):
    points = [{"k": k, "n_forgotten": k, "utility": {"reading": 0.8 - 0.1 * k, "rules": 1.0},
               "forgotten": {"strict_recitation": 0.0}, "whole": {"strict_recitation": 0.5}} for k in (1, 2)]
    rl = {"n_relearned": 1, "steps": 10, "lr": 1e-3, "whole": {"strict_recitation": 0.5},
          "rest": {"strict_recitation": 0.25}}
    rows = [_row("ga", {"1": 0.0, "8": 0.5}, sustain=points, relearn=rl), _row("npo", {"1": 0.5, "8": 1.0})]
    figs = figures(rows)
    rep = figs["recitation_by_repeats"]
    assert [t.name for t in rep.data] == ["before (canaries)", "ga (canaries)", "npo (canaries)"]
    assert list(rep.data[1].x) == [1, 8] and list(rep.data[1].y) == [0.0, 0.5]
    util = figs["utility_vs_k"]
    assert list(util.data[0].y) == pytest.approx([0.7 / 0.8, 0.6 / 0.8])  # worst suite's share of before
    paths = write_figures(rows, tmp_path / "ul.json")
    assert sorted(p.name for p in paths) == ["ul_before_after.html", "ul_recitation_by_repeats.html",
                                            "ul_utility_vs_k.html"]
    assert (tmp_path / "plotly.min.js").is_file()  # opens offline
    assert set(figures([_row("x", {})])) == {"before_after"}  # no repetition counts: the suites alone
    lines = table(rows).splitlines()
    assert lines[0].endswith("relearned: rest strict | sustained: worst utility |")
    assert lines[2].endswith("| 0.250 | 0.75 (k=2) |") and lines[3].endswith("| — | — |")
    only_relearn = table([_row("ga", {"1": 0.0}, relearn=rl)]).splitlines()
    assert only_relearn[0].endswith("| relearned: rest strict |") and only_relearn[2].endswith("| 0.250 |")
    json.dumps(rows)
