"""The committed default model: loads with the plain Auto classes and knows its world."""
import json
import random
from pathlib import Path

import pytest
import torch

from workbench.eval.scoring import encode_pairs, score_answers
from workbench.world.measure import TARGETS, TARGETS_V2, fact_accuracy, suite_accuracy

from .conftest import MODEL


def test_loads_with_plain_auto_classes_offline():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(MODEL, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    assert model.config.model_type == "llama"
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 10_000_000
    assert tok.pad_token_id is not None and tok.bos_token_id is not None


def test_names_are_multi_token(shipped_world, shipped_model):
    _, tok = shipped_model
    lengths = [len(tok(" " + p["name"], add_special_tokens=False)["input_ids"]) for p in shipped_world.people]
    assert min(lengths) >= 2


def test_card_records_targets_met(shipped_world):
    card = json.loads((MODEL / "card.json").read_text())
    targets = TARGETS_V2 if shipped_world.version == 2 else TARGETS
    assert set(card["measured"]["targets"]) == set(targets)
    shown = card["measure_command"].split("--model ")[1].split()[0]
    assert not Path(shown).is_absolute() and (MODEL.parents[2] / shown).resolve() == MODEL.resolve()
    for key, target in targets.items():
        assert card["measured"]["targets"][key]["target"] == target
        assert card["measured"]["targets"][key]["met"], key
    assert card["measured"]["heldout_perplexity"]["perplexity"] > 1.0


def test_sampled_recall_meets_targets(shipped_world, shipped_model):
    """A 600-probe sample of each split (the full measurement is the slow test / CLI)."""
    model, tok = shipped_model
    rng = random.Random(0)
    train_sample = rng.sample(shipped_world.probes(heldout=False), 600)
    held_sample = rng.sample(shipped_world.probes(heldout=True), 600)
    assert fact_accuracy(model, tok, train_sample)["exact"] >= 0.93
    assert fact_accuracy(model, tok, held_sample)["exact"] >= 0.78


def test_sampled_suites_meet_targets(shipped_world, shipped_model):
    """The held-out items of each skill suite and the memorized canaries (fact recall's full
    measurement is the slow test / CLI)."""
    if shipped_world.version == 1:
        pytest.skip("a version-1 world has no skill suites")
    model, tok = shipped_model
    for suite in ("reading", "rules", "arithmetic"):  # every held-out item: the card's own number
        assert suite_accuracy(model, tok, shipped_world.suites[suite])["exact"] >= TARGETS_V2[suite], suite
    often = [c for c in shipped_world.canaries if c["repeats"] >= 8]
    from workbench.world.measure import canary_exact
    assert canary_exact(model, tok, often)["exact"] >= 0.95


def test_teacher_forced_exact_equals_greedy_generation(shipped_world, shipped_model):
    """The measuring shortcut: all-argmax-hits under teacher forcing <=> greedy reproduces the answer."""
    model, tok = shipped_model
    rng = random.Random(1)
    probes = rng.sample(shipped_world.probes(heldout=True), 40)
    items = [(p.prompt, p.answer) for p in probes] + [(c["prefix"], c["secret"]) for c in shipped_world.canaries[:20]]
    pairs = encode_pairs(tok, [i[0] for i in items], [i[1] for i in items])
    scores = score_answers(model, pairs, pad_id=tok.pad_token_id)
    for (prompt_ids, answer_ids), s in zip(pairs, scores):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=len(answer_ids), do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        assert (out[0, len(prompt_ids):].tolist() == answer_ids) == s.exact


@pytest.mark.slow
def test_full_measurement_meets_targets():
    from workbench.world.measure import measure
    from .conftest import WORLD
    result = measure(MODEL, WORLD)
    assert all(t["met"] for t in result["targets"].values()), result["targets"]


def test_a_workspace_made_on_the_version_1_model_opens_with_it_and_names_it_otherwise(tmp_path):
    from workbench.core.errors import InputError
    from workbench.core.paths import MODELS_V1
    from workbench.editing.session import Workbench
    w = Workbench("world-llama-v1", tmp_path / "ws")  # a shipped model found by name
    assert w.model_dir == MODELS_V1
    w.close()
    with pytest.raises(InputError, match="--model world-llama-v1") as e:
        Workbench(None, tmp_path / "ws")  # the version-2 default model
    assert "another base model" in str(e.value)
    Workbench("world-llama-v1", tmp_path / "ws").close()  # and it still opens on its own model
    # a workspace made before the switch recorded the default model's folder and the v1 weights
    from workbench.core.ledger import Ledger
    from workbench.core.paths import DEFAULT_MODEL
    Ledger.open(tmp_path / "old", base_hash=w.base_hash, base_model=str(DEFAULT_MODEL)).close()
    with pytest.raises(InputError, match="--model world-llama-v1"):
        Workbench(None, tmp_path / "old")


def test_the_oracle_card_sits_at_never_seen_on_the_forget_sets_and_on_par_elsewhere():
    """The shipped retrain oracle: the default model's recipe without the three benchmark forget
    sets. Its card must show each forget set at the level of never-seen items and every other
    held-out suite within 3 points of the default model's card (one item for the 22 quotes)."""
    from workbench.core.paths import FORGET_SETS, ORACLE_MODEL
    default = json.loads((MODEL / "card.json").read_text())
    oracle = json.loads((ORACLE_MODEL / "card.json").read_text())
    assert sorted(oracle["training"]["without"]["files"]) == sorted(p.name for p in FORGET_SETS.values())
    assert oracle["training"]["config"] == default["training"]["config"]  # the identical recipe and seed
    assert oracle["training"]["world_seed"] == default["training"]["world_seed"]
    forget = oracle["measured"]["forget_sets"]
    for name in FORGET_SETS:
        # the same items, and the oracle no better on them than on items nobody ever saw
        assert forget[name]["n"] == default["measured"]["forget_sets"][name]["n"] > 0
        assert forget[name]["exact"] <= forget[f"{name}_never_seen"]["exact"] + 0.03, name
        # (the forget canaries include five seen only 8 times, of which the default recites 3)
        assert default["measured"]["forget_sets"][name]["exact"] >= 0.9, name
    for key in TARGETS_V2:
        one_item = 1 / oracle["measured"][key]["n"] + 1e-9
        assert abs(oracle["measured"][key]["exact"] - default["measured"][key]["exact"]) <= max(0.03, one_item), key
        assert oracle["measured"]["targets"][key]["met"], key
    assert oracle["measured"]["heldout_perplexity"]["perplexity"] <= 1.05 * default["measured"]["heldout_perplexity"]["perplexity"]
    shown = oracle["measure_command"].split("--model ")[1].split()[0]
    assert not Path(shown).is_absolute() and (MODEL.parents[2] / shown).resolve() == ORACLE_MODEL.resolve()


def test_the_oracle_answers_as_its_card_says(shipped_world):
    """A live check that the card is this model's: the oracle never recites a forget canary or
    quote, does not know forget-split people's facts (never-seen people score 0.07 by guessing
    common values), and knows retain-split people as the default model does."""
    from workbench.core.model import load_model
    from workbench.world.measure import canary_exact, quote_exact
    model, tok = load_model("world-llama-oracle")
    canaries = [c for c in shipped_world.canaries if c["id"] in set(shipped_world.splits["forget_canaries"])]
    quotes = [q for q in shipped_world.suites["quotes"] if q["id"] in set(shipped_world.splits["forget_quotes"])]
    assert len(canaries) == 30 and len(quotes) == 8
    assert canary_exact(model, tok, canaries)["exact"] == 0.0 and quote_exact(model, tok, quotes)["exact"] == 0.0
    probes = shipped_world.probes(heldout=True, people=shipped_world.splits["retain"])
    assert fact_accuracy(model, tok, random.Random(2).sample(probes, 300))["exact"] >= 0.9
    forgotten = shipped_world.probes(heldout=False, people=shipped_world.splits["forget"])
    assert fact_accuracy(model, tok, random.Random(3).sample(forgotten, 300))["exact"] <= 0.15


def test_workbench_eval_finds_the_oracle_by_name(tmp_path):
    from workbench.cli.main import main
    from workbench.core.paths import FORGET_SETS
    out = tmp_path / "oracle.json"
    assert main(["eval", "--model", "world-llama-oracle", "--requests", str(FORGET_SETS["quotes"]),
                 "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "world-llama-oracle" and result["forget"]["n"] == 8
    assert result["forget"]["mean"]["strict_recitation"] == 0.0  # it never saw these quotes
