"""The unlearning benchmark: forget editors measured before and after on the world's sets."""
import json

import pytest

from workbench.cli.main import main
from workbench.core.errors import InputError
from workbench.editing.registry import UnknownEditor
from workbench.eval.requests import load_probes
from workbench.bench.unlearn import COLUMNS, RETAIN, WORLD, run, split_retain, table
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
    rows = run(["ga", "ft"], ["canaries"], limit=6, heldout_limit=40, exposure_samples=20, progress=False)
    ga, ft = rows
    assert ft == {"editor": "ft", "set": "canaries", "skipped": "not a forget editor"}
    before, after = ga["before"], ga["after"]
    # v2's first six forget canaries have repeats 1-2 (seen 8-16 times); of those seen 8 times
    # the shipped model recites 0.67, so one of the six may start unrecited
    assert before["strict_recitation"] >= 0.8 and before["forget_recall"] >= 0.8
    assert after["forget_recall"] < before["forget_recall"]
    assert after["exposure"] < before["exposure"]
    assert after["perplexity"] < 1.2 * before["perplexity"] and after["retain_recall"] > 0.8
    assert 0.9 < after["ndcg10"] <= 1.0 and ga["seconds"] > 0 and ga["n"] == 6
    assert before["forget_recall_paraphrased"] is None  # canaries have no paraphrases
    text = table(rows)
    assert f"| ga | canaries | {before['strict_recitation']:.3f} → " in text and len(text.splitlines()) == 4
    assert all(title in text for _, title in COLUMNS)


def test_people_set_scores_paraphrased_recall_through_the_cli(tmp_path, capsys):
    out = tmp_path / "ul.json"
    assert main(["bench", "unlearn", "--editors", "npo", "--sets", "people", "--limit", "3", "--heldout", "20",
                 "--param", "npo:steps=5", "--json", str(out)]) == 0
    row, = json.loads(out.read_text())
    assert row["hparams"]["steps"] == 5 and row["before"]["forget_recall_paraphrased"] > 0.5
    assert row["after"]["exposure"] is None
    assert "| npo | people |" in capsys.readouterr().out


def test_bad_arguments_fail_before_any_work():
    with pytest.raises(UnknownEditor):
        run(["nope"], ["canaries"], progress=False)
    with pytest.raises(InputError, match="forget set"):
        run(["ga"], ["canaries", "everyone"], progress=False)
    with pytest.raises(InputError, match="--limit"):
        run(["ga"], ["canaries"], limit=0, progress=False)
    with pytest.raises(InputError, match="--heldout"):
        run(["ga"], ["canaries"], heldout_limit=-1, progress=False)
