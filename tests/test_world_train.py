"""Training pipeline on a tiny world: a loadable HF folder, reproducible from the seed."""
import json

import pytest
import torch
from safetensors.torch import load_file

from workbench.core.errors import InputError
from workbench.world.generate import generate
from workbench.world.train import TrainConfig, train

TINY = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, block_size=64,
            batch_size=4, max_steps=6, eval_every=3, warmup_steps=2, min_steps=0, filler_docs=10)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return generate(root / "world", 3, n_people=30, n_canaries=3, n_heldout_text=5, n_dev=5, n_forget=3, n_retain=3)


def test_tiny_training_writes_a_plain_hf_folder_and_is_reproducible(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    s1 = train(tiny_world, tmp_path / "m1", TrainConfig(seed=5, **TINY), progress=False, log=lambda *a, **k: None)
    s2 = train(tiny_world, tmp_path / "m2", TrainConfig(seed=5, **TINY), progress=False, log=lambda *a, **k: None)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
        assert (tmp_path / "m1" / name).is_file()
    w1, w2 = load_file(tmp_path / "m1" / "model.safetensors"), load_file(tmp_path / "m2" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert s1["history"] == [dict(h, seconds=s1["history"][i]["seconds"]) for i, h in enumerate(s2["history"])]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m1", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m1", local_files_only=True)
    assert model.config.model_type == "llama"
    ids = tok("Q: Where was", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    assert json.loads((tmp_path / "m1" / "training.json").read_text())["best"]["step"] in (3, 6)


def test_other_seed_gives_other_weights(tiny_world, tmp_path):
    train(tiny_world, tmp_path / "a", TrainConfig(seed=1, **TINY), progress=False, log=lambda *a, **k: None)
    train(tiny_world, tmp_path / "b", TrainConfig(seed=2, **TINY), progress=False, log=lambda *a, **k: None)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_existing_output_and_missing_world_are_refused(tiny_world, tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="already exists"):
        train(tiny_world, tmp_path / "m", TrainConfig(**TINY), progress=False)
    with pytest.raises(InputError, match="world folder not found"):
        train(tmp_path / "nowhere", tmp_path / "m2", TrainConfig(**TINY), progress=False)
    assert not (tmp_path / "m2").exists() and list((tmp_path / "m").iterdir()) == []


@pytest.mark.parametrize("bad, field", [
    (dict(vocab_size=10), "vocab_size"), (dict(hidden_size=30, num_heads=4), "num_heads"),
    (dict(lr=5.0), "lr"), (dict(max_steps=0), "max_steps"),
])
def test_bad_hyperparameters_name_the_field(bad, field):
    with pytest.raises(InputError) as e:
        TrainConfig(**{**TINY, **bad})
    assert e.value.field == field


def test_cli_train_bad_world_exits_2_and_writes_nothing(tmp_path):
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "world", "train", "--world", str(tmp_path / "none"),
                        "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 2 and "world folder not found" in r.stderr
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def tiny_world_v2(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny2")
    suites = {"reading": 20, "rules_per_kind": 20, "arithmetic": 20, "canaries_per_level": 2, "quotes": 3,
              "quote_repeats": 4}
    return generate(root / "world", 3, n_people=30, n_heldout_text=5, n_dev=5, n_forget=3, n_retain=3,
                    version=2, suites=suites)


def test_version_2_training_counts_memorized_text_and_measures_every_suite(tiny_world_v2, tmp_path):
    from transformers import AutoTokenizer
    from workbench.world.card import write_card
    from workbench.world.schema import World
    cfg = TrainConfig(seed=5, **{**TINY, "max_steps": 40, "min_steps": 40, "eval_every": 20})
    summary = train(tiny_world_v2, tmp_path / "m", cfg, progress=False, log=lambda *a, **k: None)
    world = World.load(tiny_world_v2)
    # Every canary and quote is in each epoch `repeats` times (the frequency axis); the run says how many epochs.
    import random
    from collections import Counter
    from workbench.world.corpus import epoch_documents
    docs = Counter(epoch_documents(world, random.Random(0), canary_repeats=99, filler_docs=0, banned_filler=set()))
    assert all(docs[i["text"]] == i["repeats"] for i in list(world.canaries) + world.suites["quotes"])
    assert summary["epochs"] >= 1
    assert {"dev_reading", "dev_rules", "dev_arithmetic"} <= set(summary["history"][0])
    tok = AutoTokenizer.from_pretrained(tmp_path / "m", local_files_only=True)
    assert tok.convert_ids_to_tokens(tok("37", add_special_tokens=False)["input_ids"]) == ["3", "7"]
    card = write_card(tmp_path / "m", tiny_world_v2)
    measured = card["measured"]
    assert set(card["measured"]["targets"]) == {"recall_train_phrasings", "recall_heldout_phrasings", "reading",
                                                "rules", "arithmetic", "canary_exact_8plus", "quote_exact"}
    assert set(measured["canary_exact_by_repeats"]) == {"1", "2", "4", "8", "16", "32"}
    assert measured["reading"]["n"] == sum(r["split"] == "heldout" for r in world.suites["reading"])
    assert card["measure_command"] == "workbench world measure --model m"  # no absolute path in a card


def test_version_2_epochs_draw_fresh_suite_items_never_a_heldout_prompt(tiny_world_v2):
    import random
    from workbench.world.corpus import fresh_suite_documents
    from workbench.world.schema import World
    world = World.load(tiny_world_v2)
    held = {f"{r['prompt']} {r['answer']}" for n in ("reading", "rules", "arithmetic") for r in world.suites[n]
            if r["split"] != "train"}
    a = fresh_suite_documents(world, random.Random(1), 2)
    b = fresh_suite_documents(world, random.Random(2), 2)
    stored = sum(r["split"] == "train" for n in ("reading", "rules", "arithmetic") for r in world.suites[n])
    assert 1.5 * stored < len(a) <= 2 * stored  # twice the stored count, minus collisions with kept prompts
    assert not held & set(a) and set(a) != set(b)  # no held-out item, and another epoch draws other items
