"""The unlearning benchmark: forget editors measured before and after on the world's sets."""
import json

import pytest

from workbench.cli.main import main
from workbench.core.errors import InputError
from workbench.editing.registry import UnknownEditor
from workbench.eval.requests import load_probes
from workbench.bench.unlearn import (COLUMNS, ORACLE_MODEL, ORACLE_ROW, RETAIN, WORLD, load_runs, paired_table, run,
                                     split_retain, table, utility_shares)
from workbench.world import World


def test_retain_probes_are_split_by_person_and_the_scored_half_is_unseen():
    world = World.load(WORLD)
    probes = load_probes(RETAIN)
    given, scored = split_retain(probes, world)
    assert len(given) + len(scored) == len(probes) and given and scored
    names = [world.by_id[pid]["name"] for pid in world.splits["retain"]]
    given_names = {n for n in names if any(n in p.prompt for p in given)}
    assert not any(n in p.prompt for n in given_names for p in scored)  # no person on both sides


def test_gradient_ascent_on_canaries_lowers_recitation_and_keeps_the_rest(tmp_path):
    # the model itself named as the oracle: its row must repeat "before" exactly
    rows = run(["ga", "ft"], ["canaries"], limit=6, heldout_limit=40, exposure_samples=20,
               oracle_dir="world-llama", progress=False, repeats=2)
    ga, ft, oracle = rows
    assert oracle["editor"] == ORACLE_ROW and oracle["oracle"] == "world-llama" and oracle["seconds"] is None
    flat = lambda m: {k: v for k, v in m.items()  # noqa: E731
                      if k not in ("utility", "utility_by_group", "by_repeats", "intervals", "per_request", "per_item")}
    assert flat(oracle["after"]) == pytest.approx(flat(oracle["before"]), abs=1e-6) and oracle["before"] == ga["before"]
    assert oracle["after"]["intervals"] == oracle["before"]["intervals"]
    assert oracle["after"]["per_item"] == oracle["before"]["per_item"]
    # the units a paired comparison needs: six requests, and every scored retain / utility item
    per, items = ga["after"]["per_request"], ga["after"]["per_item"]
    assert len(per["id"]) == 6 and sum(per["forget_recall"]) / 6 == ga["after"]["forget_recall"]
    assert items["retain_recall"].count("1") / len(items["retain_recall"]) == ga["after"]["retain_recall"]
    assert items["utility.rules"].count("1") / 40 == ga["after"]["utility"]["rules"]
    # the timing repeat: two applications of the same edit, the first the row's seconds
    assert ga["edit_s"]["n"] == 2 and ga["edit_s"]["min"] <= ga["seconds"] <= ga["edit_s"]["max"]
    # every rate the table shows carries its interval, and the interval holds the rate
    for k in ("strict_recitation", "extraction_strength", "forget_recall", "retain_recall", "perplexity"):
        iv = ga["after"]["intervals"][k]
        assert iv["lo"] <= ga["after"][k] <= iv["hi"] and iv["n"] > 0, k
    assert ga["after"]["intervals"]["perplexity"]["n"] == 40  # resampled over the held-out texts
    iv = ga["after"]["intervals"]["utility.arithmetic"]
    assert iv["method"] == "wilson" and iv["value"] == ga["after"]["utility"]["arithmetic"]
    assert oracle["after"]["utility"] == oracle["before"]["utility"]
    assert oracle["after"]["by_repeats"] == oracle["before"]["by_repeats"]
    # judged against itself, the unedited model is the oracle: forget quality 1; gradient ascent
    # makes the true secrets less likely next to wrong ones of the same shape
    assert ga["before"]["forget_quality"] == 1.0 and ga["after"]["truth_ratio"] > ga["before"]["truth_ratio"]
    assert ga["before"]["mia_auc_loss"] > 0.8  # memorized secrets vs never-seen ones
    # utility: every general suite (40 items each here) and the kept memorized items
    assert set(ga["before"]["utility"]) == {"reading", "rules", "arithmetic", "memorized_kept"}
    assert ga["before"]["utility"]["arithmetic"] >= 0.9 and ga["before"]["utility"]["memorized_kept"] >= 0.8
    # each kind of a suite of several: the rules' four, whose mean weighted by size is the suite's
    kinds = ga["before"]["utility_by_group"]["rules"]
    assert set(kinds) == {"boolean", "compare", "copy", "reverse"}
    assert sum(kinds.values()) / 4 == pytest.approx(ga["before"]["utility"]["rules"])  # 10 of each kind
    assert ft == {"editor": "ft", "set": "canaries", "skipped": "not a forget editor"}
    before, after = ga["before"], ga["after"]
    # v2's first six forget canaries have repeats 1-2 (seen 8-16 times); of those seen 8 times
    # the shipped model recites 0.60, so two of the six start unrecited
    assert before["strict_recitation"] >= 0.6 and before["forget_recall"] >= 0.6
    assert after["forget_recall"] < before["forget_recall"]
    assert after["exposure"] < before["exposure"]
    assert after["perplexity"] < 1.2 * before["perplexity"] and after["retain_recall"] > 0.8
    assert 0.9 < after["ndcg10"] <= 1.0 and ga["seconds"] > 0 and ga["n"] == 6
    assert before["forget_recall_paraphrased"] is None  # canaries have no paraphrases
    # recitation per repetition count, the frequency axis: the mean of those keys is the whole mean
    from workbench.eval.requests import load_requests
    from workbench.core.paths import FORGET_SETS
    reps = [r.meta["repeats"] for r in load_requests(FORGET_SETS["canaries"])[:6]]
    assert sorted(before["by_repeats"], key=int) == [str(k) for k in sorted(set(reps))]
    assert sum(before["by_repeats"][str(k)] for k in reps) / 6 == pytest.approx(before["strict_recitation"])
    assert "utility_vs_oracle" in ga and "utility_vs_oracle" not in oracle
    text = table(rows)
    biv = before["intervals"]["strict_recitation"]
    assert f"| ga | canaries | {before['strict_recitation']:.3f} [{biv['lo']:.2f}, {biv['hi']:.2f}] → " in text
    assert len(text.splitlines()) == 5
    shares = utility_shares(ga)
    worst = min(shares, key=shares.get)
    assert f"| {shares[worst]:.2f} [" in text.splitlines()[2] and f"] ({worst}) |" in text.splitlines()[2]
    s = ga["edit_s"]
    assert f"| {s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}] |" in text.splitlines()[2]
    # against its own unedited model the oracle differs on nothing
    vs_before = paired_table(rows, "before")
    oracle_line = next(x for x in vs_before.splitlines() if x.startswith(f"| {ORACLE_ROW} |"))
    assert "*" not in oracle_line and "+0.000 [+0.00, +0.00] p=1" in oracle_line
    assert text.splitlines()[-1].startswith(f"| {ORACLE_ROW} | canaries |") and text.endswith("| — |")
    assert all(title in text for _, title in COLUMNS)


def test_people_set_scores_paraphrased_recall_through_the_cli(tmp_path, capsys):
    out = tmp_path / "ul.json"
    assert main(["bench", "unlearn", "--editors", "npo", "--sets", "people", "--limit", "3", "--heldout", "20",
                 "--param", "npo:steps=5", "--json", str(out), "--baseline", "before"]) == 0
    row, oracle = json.loads(out.read_text())
    assert row["hparams"]["steps"] == 5 and row["before"]["forget_recall_paraphrased"] > 0.5
    assert row["after"]["exposure"] is None
    # the shipped oracle is found by name and never learned these people's facts
    assert oracle["editor"] == ORACLE_ROW and oracle["oracle"] == ORACLE_MODEL.name
    assert oracle["after"]["forget_recall"] < 0.34 < row["before"]["forget_recall"]
    out_text = capsys.readouterr().out
    assert "| npo | people |" in out_text and f"| {ORACLE_ROW} | people |" in out_text
    # the paired table after the main one: every metric measured, each row against its "before"
    assert "| people: vs before | strict_recitation |" in out_text and "forget_recall_paraphrased" in out_text
    assert "utility.arithmetic" in out_text and "retain_recall" in out_text
    # a saved run compared later: npo against the oracle on the same requests and items
    assert main(["bench", "compare", str(out), "--baseline", "oracle"]) == 0
    cmp = capsys.readouterr().out
    assert cmp.startswith(f"| people: vs {ORACLE_ROW} |") and "\n| npo | " in cmp


def _measurement(recall: list[int], utility: str) -> dict:
    n = len(recall)
    return {"per_request": {"id": [f"r{i}" for i in range(n)], "forget_recall": recall},
            "per_item": {"utility.reading": utility}}


def test_paired_table_tells_a_real_difference_from_noise():
    # 20 requests all recalled before, none after: significant; reading loses 2 of 40 items, gains 1
    before = _measurement([1] * 20, "1" * 36 + "11" + "10")
    after = _measurement([0] * 20, "1" * 36 + "00" + "11")
    rows = [{"editor": "ga", "set": "people", "n": 20, "before": before, "after": after, "seconds": 1.0}]
    text = paired_table(rows, "before")
    assert text.splitlines()[0] == "| people: vs before | forget_recall | utility.reading |"
    line = text.splitlines()[2]
    recall, reading = line.split(" | ")[1:3]
    # McNemar, 20 discordant pairs all one way: p = 2 * 0.5**20, times 2 for Holm over two metrics
    assert recall.startswith("-1.000 [-1.00, -1.00] p=") and recall.endswith(" *")
    assert float(recall.split("p=")[1].split()[0]) == pytest.approx(4 * 0.5 ** 20, rel=2e-3)  # printed to 3 digits
    assert reading.startswith("-0.025 [") and "*" not in reading
    with pytest.raises(InputError, match="no scored rows of 'npo'"):
        paired_table(rows, "npo")


def test_saved_runs_with_malformed_units_are_refused(tmp_path):
    good = {"editor": "ga", "set": "people", "n": 2, "before": _measurement([1, 1], "10"),
            "after": _measurement([0, 1], "11"), "seconds": 1.0}
    path = tmp_path / "run.json"
    for side, field, value, name in (("after", "per_item", {"utility.reading": "1x"}, "after.per_item.utility.reading"),
                                     ("before", "per_request", {"id": ["r0", "r1"], "forget_recall": [1]},
                                      "before.per_request.forget_recall")):
        bad = json.loads(json.dumps(good))
        bad[side][field] = value
        path.write_text(json.dumps([bad]))
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            load_runs([path])
    path.write_text(json.dumps([good]))
    assert load_runs([path])[0]["label"] == "ga"


def test_a_capability_set_has_no_oracle_row_and_is_judged_on_held_out_items():
    (row,) = run(["ga"], ["arithmetic"], limit=20, heldout_limit=30, params={"ga": {"steps": "15"}}, progress=False)
    assert row["set"] == "arithmetic" and row["n"] == 20 and row["after"]["forget_quality"] is None
    before, after = row["before"]["utility"], row["after"]["utility"]
    assert before["arithmetic"] >= 0.9 and after["arithmetic"] < before["arithmetic"]  # the skill, not 20 items


def test_an_oracle_with_another_tokenizer_or_no_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="no model folder"):
        run(["ga"], ["canaries"], oracle_dir=tmp_path / "missing", progress=False)
    with pytest.raises(InputError, match="different tokenizer"):
        run(["ga"], ["canaries"], oracle_dir="world-llama-v1", limit=1, heldout_limit=1, progress=False)


def test_bad_arguments_fail_before_any_work(capsys):
    with pytest.raises(UnknownEditor):
        run(["nope"], ["canaries"], progress=False)
    with pytest.raises(InputError, match="forget set"):
        run(["ga"], ["canaries", "everyone"], progress=False)
    with pytest.raises(InputError, match="--limit"):
        run(["ga"], ["canaries"], limit=0, progress=False)
    with pytest.raises(InputError, match="--heldout"):
        run(["ga"], ["canaries"], heldout_limit=-1, progress=False)
    with pytest.raises(InputError, match="--repeats"):
        run(["ga"], ["canaries"], repeats=0, progress=False)
    assert main(["bench", "unlearn", "--editors", "ga", "--baseline", "npo"]) == 2
    assert "'npo' is not one of --editors" in capsys.readouterr().err
    assert main(["bench", "unlearn", "--editors", "ga", "--baseline", "oracle", "--oracle", "none"]) == 2
    assert "no oracle row" in capsys.readouterr().err
