"""Training pipeline on a tiny world: a loadable HF folder, reproducible from the seed."""
import json

import pytest
import torch
from safetensors.torch import load_file

from workbench.core.errors import InputError
from workbench.world.generate import generate
from workbench.world.train import TrainConfig, train

TINY = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, block_size=64,
            batch_size=4, max_steps=6, eval_every=3, warmup_steps=2, min_steps=0, filler_docs=10,
            bios_per_epoch=1, memorized_passes=1, compile=0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return generate(root / "world", 3, n_people=30, n_canaries=3, n_heldout_text=5, n_dev=5, n_forget=3, n_retain=3, version=1)


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


def test_gptj_training_writes_a_gptj_folder_the_editors_read(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM
    from workbench.core.arch import get_adapter
    train(tiny_world, tmp_path / "j", TrainConfig(seed=5, arch="gptj", **TINY), progress=False, log=lambda *a, **k: None)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "j", local_files_only=True)
    assert model.config.model_type == "gptj" and not model.config.tie_word_embeddings
    assert get_adapter(model).parallel_blocks
    cfg = json.loads((tmp_path / "j" / "training.json").read_text())["config"]
    assert cfg["arch"] == "gptj"


def test_compiled_training_is_reproducible_bit_for_bit(tiny_world, tmp_path):
    """torch.compile's CPU kernels vary from run to run unless deterministic algorithms are on;
    training turns them on for the run and restores the caller's setting."""
    cfg = TrainConfig(seed=5, **{**TINY, "compile": 1, "hidden_size": 128, "intermediate_size": 384,
                                 "num_heads": 4, "batch_size": 8, "max_steps": 8, "eval_every": 8})
    runs = [train(tiny_world, tmp_path / f"c{i}", cfg, progress=False, log=lambda *a, **k: None) for i in (1, 2)]
    w1, w2 = (load_file(tmp_path / f"c{i}" / "model.safetensors") for i in (1, 2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert runs[0]["deterministic"] and not torch.are_deterministic_algorithms_enabled()


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
    (dict(lr=5.0), "lr"), (dict(max_steps=0), "max_steps"), (dict(arch="mistral"), "arch"),
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
    assert summary["epochs"] >= 1 and summary["planned_epochs"] >= 1
    memorized = list(world.canaries) + world.suites["quotes"]
    assert set(summary["occurrences"]) == {m["id"] for m in memorized}
    assert all(0 <= summary["occurrences"][m["id"]] <= m["repeats"] for m in memorized)
    assert sum(summary["occurrences"].values()) > 0 and summary["occurrences_by_level"]
    assert {"dev_reading", "dev_rules", "dev_arithmetic"} <= set(summary["history"][0])
    tok = AutoTokenizer.from_pretrained(tmp_path / "m", local_files_only=True)
    assert tok.convert_ids_to_tokens(tok("37", add_special_tokens=False)["input_ids"]) == ["3", "7"]
    card = write_card(tmp_path / "m", tiny_world_v2)
    measured = card["measured"]
    assert set(card["measured"]["targets"]) == {"recall_train_phrasings", "recall_heldout_phrasings", "reading",
                                                "rules", "arithmetic", "canary_exact_8plus", "quote_exact"}
    assert set(measured["canary_exact_by_repeats"]) == {"1", "2", "4", "8", "16", "32"}
    assert measured["reading"]["n"] == sum(r["split"] == "heldout" for r in world.suites["reading"])
    # no absolute path in a card: folders outside the repository by their name
    assert card["measure_command"] == "workbench world measure --model m --world world"
    readme = (tmp_path / "m" / "README.md").read_text()
    assert "a model trained on the workbench's world" in readme.splitlines()[0]  # not the default model
    assert "--max-steps 40 " in readme and "--version 1" not in readme  # its non-default settings


def test_version_2_epochs_draw_fresh_suite_items_never_a_heldout_prompt(tiny_world_v2):
    import random
    from workbench.world.corpus import fresh_suite_documents
    from workbench.world.schema import World
    world = World.load(tiny_world_v2)
    held = {f"{r['prompt']} {r['answer']}" for n in ("reading", "rules", "arithmetic") for r in world.suites[n]
            if r["split"] != "train"}
    a = fresh_suite_documents(world, random.Random(1), 2)
    b = fresh_suite_documents(world, random.Random(2), 2)
    from workbench.world.corpus import TRAIN_RULE_WEIGHTS
    from workbench.world.suites import RULE_KINDS
    train = {n: sum(r["split"] == "train" for r in world.suites[n]) for n in ("reading", "rules", "arithmetic")}
    per_kind = 2 * train["rules"] // len(RULE_KINDS)
    expected = 2 * (train["reading"] + train["arithmetic"]) + per_kind * sum(TRAIN_RULE_WEIGHTS.get(k, 1)
                                                                              for k in RULE_KINDS)
    assert 0.75 * expected < len(a) <= expected  # twice the stored count, minus collisions with kept prompts
    boolean, compare = (sum(d.startswith(lead) for d in a) for lead in ("evaluate :", "larger of"))
    assert boolean > 3 * compare  # the slowest rule to learn is drawn four times as often
    assert not held & set(a) and set(a) != set(b)  # no held-out item, and another epoch draws other items


def test_version_2_memorized_items_occur_their_repeats_over_the_planned_run(tiny_world_v2):
    # The frequency axis: over the epochs max_steps plans, each canary and quote is trained on
    # exactly `repeats` x `memorized_passes` times.
    from workbench.world.corpus import occurrence_epochs
    from workbench.world.schema import World
    from workbench.world.train import _Batches, _build_world_tokenizer
    world = World.load(tiny_world_v2)
    cfg = TrainConfig(seed=3, **{**TINY, "batch_size": 3, "max_steps": 1500, "memorized_passes": 2})
    batches = _Batches(world, _build_world_tokenizer(world, cfg), cfg)
    for _ in range(cfg.max_steps):  # the whole run's batches: the plan must fit in them
        batches.next()
    memorized = list(world.canaries) + world.suites["quotes"]
    assert batches.planned_epochs > 1 and batches.epoch > batches.planned_epochs
    assert {m["id"]: batches.seen[m["id"]] for m in memorized} == {m["id"]: 2 * m["repeats"] for m in memorized}
    assert occurrence_epochs(4, 8) == [1, 3, 5, 7] and occurrence_epochs(1, 8) == [4]


def _forget_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_oracle_never_sees_its_forget_set(tiny_world_v2, tmp_path):
    import random
    from workbench.world.corpus import epoch_documents, fact_sentence, read_without
    from workbench.world.schema import World
    world = World.load(tiny_world_v2)
    person, canary, quote = world.people[3], world.canaries[0], world.suites["quotes"][0]
    rows = [{"type": "forget", "kind": "fact", "id": f"{person['id']}-{rel}", "prefix": "x", "suffix": "y",
             "meta": {"person": person["id"], "relation": rel}} for rel in list(world.relations)[:2]]
    rows += [{"type": "forget", "kind": "canary", "id": canary["id"], "prefix": canary["prefix"], "suffix": canary["secret"]},
             {"type": "forget", "kind": "text", "id": quote["id"], "prefix": quote["prefix"], "suffix": quote["suffix"]}]
    path = _forget_file(tmp_path / "forget.jsonl", rows)
    without = read_without(path, world)
    rng = random.Random(1)
    docs = " ".join(" ".join(epoch_documents(world, rng, canary_repeats=1, filler_docs=0, banned_filler=set(),
                                             without=without)) for _ in range(3))
    n = len(world.relations[list(world.relations)[0]]["phrasings"])
    for rel in list(world.relations)[:2]:
        assert not any(fact_sentence(world, person, rel, ph) in docs for ph in range(n))
    kept = list(world.relations)[2]
    assert any(fact_sentence(world, person, kept, ph) in docs for ph in range(n))
    cfg = TrainConfig(seed=5, **{**TINY, "max_steps": 12, "eval_every": 6})
    summary = train(tiny_world_v2, tmp_path / "oracle", cfg, progress=False, log=lambda *a, **k: None, without=path)
    assert summary["without"] == {"files": ["forget.jsonl"], "facts": 2, "items": sorted([canary["id"], quote["id"]])}
    assert summary["occurrences"][canary["id"]] == 0 and summary["occurrences"][quote["id"]] == 0


@pytest.mark.parametrize("row, field", [
    ({"meta": {"person": "p9999", "relation": "pet"}}, "meta.person"),
    ({"meta": {"person": "p0001", "relation": "shoe_size"}}, "meta.relation"),
    ({"kind": "canary", "id": "c999"}, "id"),
])
def test_oracle_forget_set_errors_name_line_and_field_and_write_nothing(tiny_world_v2, tmp_path, row, field):
    good = {"type": "forget", "kind": "fact", "id": "f", "prefix": "x", "suffix": "y",
            "meta": {"person": "p0001", "relation": "pet"}}
    path = _forget_file(tmp_path / "forget.jsonl", [good, {**good, **row}])
    path.write_text(path.read_text().replace("\n", "\n\n", 1))  # a blank line: the error names the file's line
    with pytest.raises(InputError) as e:
        train(tiny_world_v2, tmp_path / "oracle", TrainConfig(**TINY), progress=False, without=path)
    assert e.value.line == 3 and e.value.field == field and "forget.jsonl" in str(e.value.file)
    assert not (tmp_path / "oracle").exists()


def test_rows_hold_whole_documents_padded_without_loss(tiny_world):
    # A document never straddles two rows (a reading question stays with its passage); padding
    # is -100 (no loss) and reads as the pad token; a document longer than a row is split and
    # its tag counted once.
    from workbench.world.schema import World
    from workbench.world.train import _blocks, _build_world_tokenizer
    world = World.load(tiny_world)
    tok = _build_world_tokenizer(world, TrainConfig(**TINY))
    docs = ["Ada was born in Paris.", "copy : b c d => b c d", "x " * 100]
    ids = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
    block = max(len(ids[0]) + len(ids[1]) - 1, len(ids[0]), len(ids[1]))  # the two short ones cannot share a row
    rows, tags = _blocks(tok, docs, block, tags=["a", None, "long"])
    flat = [[t for t in row if t != -100] for row in rows.tolist()]
    assert flat[0] == ids[0] and flat[1] == ids[1]  # each whole, in its own row, padded
    assert len(ids[2]) > block and len(flat) > 3
    assert sum(t.count("long") for t in tags) == 1 and sum(t.count("a") for t in tags) == 1
    assert (rows == -100).any() and tok.pad_token_id == 0
    assert [t for row in flat for t in row] == [t for d in ids for t in d]  # nothing lost, order kept
