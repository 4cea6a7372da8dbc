"""The lifelong benchmark: sequential edits scored on the final model."""
import json
import subprocess
import sys

import pytest

from workbench.core.errors import InputError
from workbench.bench.lifelong import METRICS, run, run_one, table
from workbench.editing.registry import UnknownEditor
from workbench.eval.requests import load_requests

from .conftest import REPO

REQS = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:5]


def test_sequential_edits_are_all_scored_on_the_final_model():
    row = run_one("ft", 5, REQS)
    assert row["T"] == 5 and set(METRICS) <= set(row)
    assert row["reliability"] >= 0.9  # the first edits survive the later ones at this scale
    assert row["median_edit_s"] > 0 and "inference_overhead" in row
    assert "| ft | 5 |" in table([row])


def test_checkpoints_of_one_run_equal_fresh_runs():
    from workbench.bench.lifelong import run_series
    series = run_series("ft", [3, 1], REQS, params={"steps": "10"})
    assert [r["T"] for r in series] == [1, 3]
    for row in series:  # each checkpoint scores what a run of exactly T edits would
        fresh = run_one("ft", row["T"], REQS, params={"steps": "10"})
        assert {m: row[m] for m in METRICS} == pytest.approx({m: fresh[m] for m in METRICS}, abs=1e-9)
    assert series[1]["total_edit_s"] > series[0]["total_edit_s"]
    # the chart: per metric, the teacher-forced and the exact line, points at each T
    from workbench.bench.plots import figures
    fig = figures(series + [{"editor": "x", "T": 2, "skipped": "not a sequential editor"}])["lifelong_vs_T"]
    assert len(fig.data) == 6 and all(list(t.x) == [1, 3] for t in fig.data)
    gen_exact = next(t for t in fig.data if t.name == "ft exact" and t.xaxis == "x2")
    assert list(gen_exact.y) == [r["generality_exact"] for r in series]
    assert "lifelong_vs_T" not in figures([{"editor": "ga", "set": "canaries", "skipped": "x"}])


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(UnknownEditor):
        run(["nope"], [1], progress=False)
    with pytest.raises(InputError, match="T="):
        run(["ft"], [10**6], progress=False)
    with pytest.raises(InputError):
        run(["ft"], [0], progress=False)


@pytest.mark.slow  # 17 s of CLI start-up and edits; the bench's logic is tested in-process above
def test_cli_writes_json(tmp_path):
    out = tmp_path / "ll.json"
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", "lifelong", "--editors", "ft", "--T", "1,2",
                        "--param", "ft:steps=10", "--json", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [x["T"] for x in rows] == [1, 2] and rows[0]["hparams"]["steps"] == 10
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", "lifelong", "--T", "a"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--T" in r.stderr


def test_rows_of_several_runs_keep_their_runs_apart(tmp_path):
    from workbench.bench.lifelong import load_rows
    from workbench.bench.plots import lifelong_vs_T
    row = {"editor": "memoir", "T": 10, **{m: 0.5 for m in METRICS}, "median_edit_s": 0.1, "inference_overhead": 0.0}
    for name in ("paper", "no_routing"):
        (tmp_path / f"{name}.json").write_text(json.dumps([row, {**row, "T": 100}]))
    rows = load_rows([tmp_path / "paper.json", tmp_path / "no_routing.json"])
    assert [r["label"] for r in rows] == ["memoir (paper)"] * 2 + ["memoir (no_routing)"] * 2
    assert "| memoir (no_routing) | 100 |" in table(rows)
    names = {t.name for t in lifelong_vs_T(rows).data}
    assert names == {"memoir (paper)", "memoir (paper) exact", "memoir (no_routing)", "memoir (no_routing) exact"}
    assert load_rows(tmp_path / "paper.json")[0]["label"] == "memoir"  # one file: the editor's name
    (tmp_path / "bad.json").write_text(json.dumps([{**row, "T": "ten"}]))
    with pytest.raises(InputError, match="row 0") as e:
        load_rows(tmp_path / "bad.json")
    assert "bad.json" in str(e.value) and "T" in str(e.value)


def test_sequential_batches_are_checkpoints_too():
    from workbench.bench.lifelong import run_series
    series = run_series("ft", [2, 4], REQS, params={"steps": "10"}, batch=2)
    assert [(r["T"], r["batch"]) for r in series] == [(2, 2), (4, 2)]
    fresh = run_series("ft", [2], REQS, params={"steps": "10"}, batch=2)[0]
    assert {m: series[0][m] for m in METRICS} == pytest.approx({m: fresh[m] for m in METRICS}, abs=1e-9)
    one_by_one = run_series("ft", [2], REQS, params={"steps": "10"})[0]
    assert "batch" not in one_by_one
    assert run_series("rome", [2], REQS, batch=2) == [{"editor": "rome", "T": 2,
                                                       "skipped": "edits one request at a time"}]
    with pytest.raises(InputError, match="multiple of the batch size 2"):
        run(["ft"], [3], batch=2, progress=False)
    with pytest.raises(InputError, match="--batch"):
        run(["ft"], [2], batch=0, progress=False)


def test_rows_carry_intervals_per_request_scores_and_paired_comparisons(tmp_path):
    from workbench.bench.lifelong import load_rows, paired, paired_table, run_series
    from workbench.bench.plots import lifelong_vs_T
    weak, = run_series("ft", [5], REQS, params={"steps": "1", "lr": "1e-6"}, repeats=3)
    strong, = run_series("ft", [5], REQS, params={"steps": "10"}, repeats=3)
    per = strong["per_request"]
    assert per["id"] == [r.id for r in REQS] and all(len(per[m]) == 5 for m in METRICS)
    for m in METRICS:
        iv = strong["intervals"][m]
        assert iv["lo"] <= strong[m] <= iv["hi"] and iv["n"] == 5
        assert sum(per[m]) / 5 == pytest.approx(strong[m], abs=1e-5)
    assert strong["inference_overhead_spread"]["n"] == 3 and strong["edit_s"]["n"] == 5
    assert "[" in table([strong]).splitlines()[2]  # "1.000 [0.57, 1.00]"
    # error bars on the chart: the interval around each point
    rel = next(t for t in lifelong_vs_T([strong]).data if t.name == "ft" and t.xaxis == "x")
    assert rel.error_y.arrayminus[0] == pytest.approx(strong["reliability"] - strong["intervals"]["reliability"]["lo"])
    # paired: an edit that barely moves the weights against one that learns the targets
    cmp = {c["metric"]: c for c in paired({**weak, "label": "weak"}, {**strong, "label": "strong"})}
    assert cmp["reliability"]["diff"]["value"] == pytest.approx(strong["reliability"] - weak["reliability"])
    assert cmp["locality"]["n"] == 5 and "p_holm" in cmp["locality"]
    out = paired_table([{**weak, "label": "weak"}, {**strong, "label": "strong"}], "weak")
    assert out.splitlines()[0].startswith("| editor vs weak | T | reliability") and "| strong | 5 |" in out
    # saved and read back; a row from another request set is refused by id
    (tmp_path / "a.json").write_text(json.dumps([weak]))
    (tmp_path / "b.json").write_text(json.dumps([strong]))
    rows = load_rows([tmp_path / "a.json", tmp_path / "b.json"])
    assert "| ft (b) | 5 |" in paired_table(rows, "ft (a)")
    other = {**strong, "per_request": {**per, "id": ["x"] * 5}}
    with pytest.raises(InputError, match="same requests"):
        paired(weak, other)
    with pytest.raises(InputError, match="no per-request scores"):
        paired({k: v for k, v in weak.items() if k != "per_request"}, strong)
    (tmp_path / "bad.json").write_text(json.dumps([{**strong, "per_request": {**per, "reliability": [1.0]}}]))
    with pytest.raises(InputError, match="per_request.reliability"):
        load_rows(tmp_path / "bad.json")
