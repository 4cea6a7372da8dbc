"""The unlearning benchmark: forget editors measured before and after on the world's sets."""
import json

import pytest

from workbench.cli.main import main
from workbench.core.errors import InputError
from workbench.editing.registry import UnknownEditor
from workbench.eval.requests import load_probes
from workbench.bench.unlearn import (COLUMNS, ORACLE_MODEL, ORACLE_ROW, RETAIN, WORLD, run, split_retain, table,
                                     utility_shares)
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
               oracle_dir="world-llama", progress=False)
    ga, ft, oracle = rows
    assert oracle["editor"] == ORACLE_ROW and oracle["oracle"] == "world-llama" and oracle["seconds"] is None
    flat = lambda m: {k: v for k, v in m.items()  # noqa: E731
                      if k not in ("utility", "utility_by_group", "by_repeats", "intervals")}
    assert flat(oracle["after"]) == pytest.approx(flat(oracle["before"]), abs=1e-6) and oracle["before"] == ga["before"]
    assert oracle["after"]["intervals"] == oracle["before"]["intervals"]
    # every rate the table shows carries its interval, and the interval holds the rate
    for k in ("strict_recitation", "extraction_strength", "forget_recall", "retain_recall"):
        iv = ga["after"]["intervals"][k]
        assert iv["lo"] <= ga["after"][k] <= iv["hi"] and iv["n"] > 0, k
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
    assert f"| ga | canaries | {before['strict_recitation']:.3f} → " in text and len(text.splitlines()) == 5
    shares = utility_shares(ga)
    worst = min(shares, key=shares.get)
    assert f"| {shares[worst]:.2f} ({worst}) |" in text.splitlines()[2]
    assert text.splitlines()[-1].startswith(f"| {ORACLE_ROW} | canaries |") and text.endswith("| — |")
    assert all(title in text for _, title in COLUMNS)


def test_people_set_scores_paraphrased_recall_through_the_cli(tmp_path, capsys):
    out = tmp_path / "ul.json"
    assert main(["bench", "unlearn", "--editors", "npo", "--sets", "people", "--limit", "3", "--heldout", "20",
                 "--param", "npo:steps=5", "--json", str(out)]) == 0
    row, oracle = json.loads(out.read_text())
    assert row["hparams"]["steps"] == 5 and row["before"]["forget_recall_paraphrased"] > 0.5
    assert row["after"]["exposure"] is None
    # the shipped oracle is found by name and never learned these people's facts
    assert oracle["editor"] == ORACLE_ROW and oracle["oracle"] == ORACLE_MODEL.name
    assert oracle["after"]["forget_recall"] < 0.34 < row["before"]["forget_recall"]
    out_text = capsys.readouterr().out
    assert "| npo | people |" in out_text and f"| {ORACLE_ROW} | people |" in out_text


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


def test_bad_arguments_fail_before_any_work():
    with pytest.raises(UnknownEditor):
        run(["nope"], ["canaries"], progress=False)
    with pytest.raises(InputError, match="forget set"):
        run(["ga"], ["canaries", "everyone"], progress=False)
    with pytest.raises(InputError, match="--limit"):
        run(["ga"], ["canaries"], limit=0, progress=False)
    with pytest.raises(InputError, match="--heldout"):
        run(["ga"], ["canaries"], heldout_limit=-1, progress=False)
