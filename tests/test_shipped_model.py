"""The committed default model: loads with the plain Auto classes and knows its world."""
import json
import random

import pytest
import torch

from workbench.eval.scoring import encode_pairs, score_answers
from workbench.world.measure import TARGETS, fact_accuracy

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


def test_card_records_targets_met():
    card = json.loads((MODEL / "card.json").read_text())
    for key, target in TARGETS.items():
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
