"""The generated world: determinism, shape, and refusal of bad input."""
import filecmp
import json
import subprocess
import sys

import pytest

from workbench.core.errors import InputError
from workbench.world import World
from workbench.world import generate as gen_mod
from workbench.world.corpus import heldout_sentences, tokenizer_texts
from workbench.world.generate import DEFAULT_SEED, generate

from .conftest import WORLD

SMALL = dict(n_people=40, n_canaries=5, n_heldout_text=10, n_dev=5, n_forget=5, n_retain=5, version=1)


def _same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors


def test_default_seed_reproduces_committed_world_byte_for_byte(tmp_path):
    generate(tmp_path / "w", DEFAULT_SEED)
    assert _same_tree(tmp_path / "w", WORLD)


def test_cli_generate_reproduces_committed_world(tmp_path):
    out = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "world", "generate", "--seed", str(DEFAULT_SEED),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _same_tree(out, WORLD)


def test_other_seed_gives_other_world(tmp_path):
    generate(tmp_path / "a", 1, **SMALL)
    generate(tmp_path / "b", 2, **SMALL)
    assert (tmp_path / "a" / "people.jsonl").read_bytes() != (tmp_path / "b" / "people.jsonl").read_bytes()


def test_shipped_world_has_the_promised_shape(shipped_world):
    w = shipped_world
    names = [p["name"] for p in w.people]
    assert len(names) >= 1000 and len(set(names)) == len(names)
    assert len(w.relations) >= 6
    for rel, spec in w.relations.items():
        kinds = [ph["kind"] for ph in spec["phrasings"]]
        assert len(kinds) >= 8 and "statement" in kinds and "question" in kinds, rel
        # Every phrasing is trained for most people, so held-out phrasings are only new in combination.
        for ph in range(len(kinds)):
            held = sum(ph in p["heldout"][rel] for p in w.people)
            assert 0 < held < 0.5 * len(w.people), (rel, ph, held)
    assert len(w.canaries) >= 100 and len({c["person"] for c in w.canaries}) == len(w.canaries)
    for c in w.canaries:
        assert c["text"] == f"{c['prefix']} {c['secret']}." and w.by_id[c["person"]]["name"] in c["prefix"]
    dev, forget, retain = (set(w.splits[k]) for k in ("dev", "forget", "retain"))
    assert forget and retain and dev and not (dev & forget) and not (dev & retain) and not (forget & retain)


def test_heldout_text_never_appears_in_training_text(shipped_world):
    train_texts = set(tokenizer_texts(shipped_world))
    banned = heldout_sentences(shipped_world)
    assert banned and not (banned & train_texts)
    heldout_probes = {(p.person, p.relation, p.phrasing) for p in shipped_world.probes(heldout=True)}
    assert len(heldout_probes) == len(shipped_world.people) * sum(
        len(p) for p in [shipped_world.people[0]["heldout"][r] for r in shipped_world.relations])


def test_existing_output_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        generate(out, 1, **SMALL)
    assert [f.name for f in out.iterdir()] == ["keep.txt"]


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = gen_mod.write_jsonl

    def failing(path, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(path, rows)

    monkeypatch.setattr(gen_mod, "write_jsonl", failing)
    with pytest.raises(OSError):
        generate(tmp_path / "w", 1, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, field", [
    (dict(seed=-1), "seed"),
    (dict(n_people=3), "n_people"),
    (dict(n_heldout=0), "n_heldout"),
    (dict(n_canaries=500), "n_canaries"),
    (dict(n_dev=30, n_forget=30, n_retain=30), "splits"),
])
def test_bad_counts_name_the_field(tmp_path, kwargs, field):
    args = {**SMALL, "seed": 1, **kwargs}
    seed = args.pop("seed")
    with pytest.raises(InputError) as e:
        generate(tmp_path / "w", seed, **args)
    assert e.value.field == field
    assert not (tmp_path / "w").exists()


def test_cli_bad_arguments_exit_nonzero_and_write_nothing(tmp_path):
    out = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "world", "generate", "--seed", "abc", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "non-negative integer" in r.stderr
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "world", "generate", "--out", str(WORLD)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert not out.exists()


def _copy_world(tmp_path):
    import shutil
    dst = tmp_path / "w"
    shutil.copytree(WORLD, dst)
    return dst


def test_load_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="world folder not found"):
        World.load(tmp_path / "nope")
    w = _copy_world(tmp_path)
    (w / "canaries.jsonl").unlink()
    with pytest.raises(InputError, match="canaries.jsonl is missing"):
        World.load(w)


def test_load_corrupt_line_names_file_and_line(tmp_path):
    w = _copy_world(tmp_path)
    lines = (w / "people.jsonl").read_text().splitlines()
    lines[6] = lines[6][:-5]  # truncate line 7
    (w / "people.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        World.load(w)
    assert e.value.line == 7 and "people.jsonl" in str(e.value)


def test_load_bad_field_names_field(tmp_path):
    w = _copy_world(tmp_path)
    lines = (w / "people.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["facts"]["pet"] = "dragon"
    lines[2] = json.dumps(row)
    (w / "people.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        World.load(w)
    assert (e.value.line, e.value.field) == (3, "facts.pet")


def test_benchmark_request_sets_reproduce_committed_ones(tmp_path):
    from workbench.eval.requests import EditRequest, load_probes, load_requests
    from workbench.world.benchmarks import DEFAULT_BENCH_SEED, write_benchmarks
    out = write_benchmarks(WORLD, tmp_path / "b", DEFAULT_BENCH_SEED)
    assert _same_tree(out, WORLD.parent / "benchmarks")
    edits = load_requests(out / "edits_counterfactual.jsonl")
    world = World.load(WORLD)
    assert len(edits) == 1000 and all(isinstance(e, EditRequest) for e in edits)
    for e in edits[:50]:
        person = world.by_id[e.meta["person"]]
        rel = e.meta["relation"]
        # Counterfactual: a valid value of the relation, not the true one; rephrases are held out.
        assert e.ground_truth == person["facts"][rel] != e.target_new
        assert e.target_new in world.relations[rel]["values"]
        assert e.rephrase_prompts == tuple(world.probe(person, rel, ph).prompt for ph in person["heldout"][rel])
        assert all(person["name"] not in p.prompt for p in e.locality)
    # Locality probes are about people no edit in the whole set touches (the lifelong protocol
    # scores them after all edits), and each names exactly one person.
    edited = {world.by_id[e.meta["person"]]["name"] for e in edits}
    for e in edits:
        for p in e.locality:
            named = [q for q in world.people if q["name"] in p.prompt]
            assert len(named) == 1 and named[0]["name"] not in edited, (e.id, p.prompt)
            assert p.answer == named[0]["facts"][p.group]
    forget = load_requests(out / "forget_people.jsonl")
    assert {f.meta["person"] for f in forget} == set(world.splits["forget"])
    retain = load_probes(out / "retain.jsonl")
    forget_names = {world.by_id[i]["name"] for i in world.splits["forget"]}
    assert retain and not any(n in p.prompt for p in retain for n in forget_names)
