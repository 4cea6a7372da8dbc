"""The version-2 world: skill suites and memorized text by frequency, generated deterministically,
with held-out items that never equal a training item, and bad input refused with nothing written."""
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from workbench.core.errors import InputError
from workbench.world import World
from workbench.world.generate import generate
from workbench.world.suites import REPEAT_LEVELS, RULE_KINDS

SMALL = {"reading": 120, "rules_per_kind": 60, "arithmetic": 150, "canaries_per_level": 5, "quotes": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("v2") / "w"
    generate(out, 99, n_people=200, n_dev=20, n_forget=20, n_retain=20, version=2, suites=SMALL)
    return World.load(out)


def test_same_seed_same_bytes_and_other_seed_other_items(tmp_path):
    for name in ("a", "b"):
        generate(tmp_path / name, 5, n_people=200, n_dev=20, n_forget=20, n_retain=20, version=2, suites=SMALL)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"reading.jsonl", "rules.jsonl", "arithmetic.jsonl", "quotes.jsonl"} <= set(files)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    generate(tmp_path / "c", 6, n_people=200, n_dev=20, n_forget=20, n_retain=20, version=2, suites=SMALL)
    assert (tmp_path / "a" / "reading.jsonl").read_bytes() != (tmp_path / "c" / "reading.jsonl").read_bytes()


def test_one_suite_count_does_not_move_another_suite(tmp_path):
    kw = dict(n_people=200, n_dev=20, n_forget=20, n_retain=20, version=2)
    generate(tmp_path / "a", 5, suites=SMALL, **kw)
    generate(tmp_path / "b", 5, suites={**SMALL, "reading": 40}, **kw)
    assert (tmp_path / "a" / "arithmetic.jsonl").read_bytes() == (tmp_path / "b" / "arithmetic.jsonl").read_bytes()
    assert (tmp_path / "a" / "reading.jsonl").read_bytes() != (tmp_path / "b" / "reading.jsonl").read_bytes()


def test_counts_and_splits(world):
    s = world.suites
    assert world.version == 2
    assert len(s["reading"]) == 120 and len(s["arithmetic"]) == 150 and len(s["quotes"]) == 8
    assert Counter(r["kind"] for r in s["rules"]) == {k: 60 for k in RULE_KINDS}
    assert Counter(c["repeats"] for c in world.canaries) == {n: 5 for n in REPEAT_LEVELS}
    for name in ("reading", "rules", "arithmetic"):
        split = Counter(r["split"] for r in s[name])
        assert set(split) == {"train", "dev", "heldout"} and 0.1 < split["heldout"] / len(s[name]) < 0.3
    forget = set(world.splits["forget_canaries"])
    assert {c["repeats"] for c in world.canaries if c["id"] in forget} == set(REPEAT_LEVELS)  # every level
    assert set(world.splits["forget_quotes"]) < {q["id"] for q in s["quotes"]}


@pytest.mark.parametrize("suite", ["reading", "rules", "arithmetic"])
def test_no_heldout_prompt_is_a_training_prompt(world, suite):
    rows = world.suites[suite]
    train = {r["prompt"] for r in rows if r["split"] == "train"}
    assert not [r["prompt"] for r in rows if r["split"] != "train" and r["prompt"] in train]
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_answers_follow_the_rules(world):
    for r in world.suites["arithmetic"]:
        a, op, b, eq = r["prompt"].split()
        assert eq == "=" and int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    for r in world.suites["rules"]:
        p = r["prompt"]
        if r["kind"] == "boolean":
            assert p.startswith("evaluate : ")
            expr = p.removeprefix("evaluate : ").removesuffix(" =").replace("true", "True").replace("false", "False")
            assert 1 <= sum(w in ("and", "or", "not") for w in expr.split()) <= 5 and str(eval(expr)).lower() == r["answer"]  # noqa: S307 (our own grammar)
        elif r["kind"] == "compare":
            a, b = map(int, re.findall(r"\d+", p))
            assert r["answer"] == str(max(a, b))
        else:
            items = p.split(":", 1)[1].removesuffix(" =>").split()
            assert r["answer"].split() == (items if r["kind"] == "copy" else items[::-1])


def test_reading_asks_about_fresh_people_named_in_the_passage(world):
    people = {p["name"] for p in world.people}
    for r in world.suites["reading"]:
        assert r["prompt"] == f"{r['passage']} {r['question']}" and f" {r['answer']}." in r["passage"]
        asked = next(n for n in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", r["question"]))
        assert asked not in people and asked in r["passage"]
        values = world.relations[r["relation"]]["values"]
        stated = [v for v in values if f" {v}." in r["passage"]]
        assert len(stated) >= 2 and r["answer"] in stated  # the others are distractors with other values


def test_passages_use_no_closed_book_phrasing(world):
    # A passage in a fact phrasing teaches that phrasing's value is read, not recalled (world 4:
    # facts at 0.30 in the passages' phrasing, 0.99 in the others).
    templates = [t["template"].split("{name}") for spec in world.relations.values() for t in spec["phrasings"]]
    for r in world.suites["reading"]:
        for sentence in re.split(r"(?<=\.) ", r["passage"]):
            assert not any(sentence.startswith(a) and b.strip() in sentence for a, b in templates if b.strip()), sentence


def test_suite_items_list_each_suite_as_prompt_and_answer(world):
    assert world.suite_names() == ["facts", "canaries", "reading", "rules", "arithmetic", "quotes"]
    rules = world.suite_items("rules", split="heldout")
    assert rules and all(i["split"] == "heldout" for i in rules)
    assert {i["id"] for i in rules} == {r["id"] for r in world.suites["rules"] if r["split"] == "heldout"}
    facts = world.suite_items("facts", split="heldout")
    assert len(facts) == len(world.probes(heldout=True))
    q = world.suite_items("quotes")[0]
    assert f"{q['prompt']} {q['answer']}" == world.suites["quotes"][0]["text"]
    with pytest.raises(InputError) as e:
        world.suite_items("poems")
    assert e.value.field == "suite" and "reading" in str(e.value)


def test_quotes_and_canaries_are_memorization_items(world):
    for q in world.suites["quotes"]:
        assert q["text"] == f"{q['prefix']} {q['suffix']}" and len(q["suffix"].split()) >= 30
    assert len({c["person"] for c in world.canaries}) == len(world.canaries)


@pytest.mark.parametrize("suites, field", [
    ({"readng": 3}, "readng"), ({"reading": 0}, "reading"), ({"heldout_share": 1.5}, "heldout_share"),
    ({"quotes": 2.5}, "quotes"), ({"canaries_per_level": 100}, "canaries_per_level"),
])
def test_bad_counts_are_refused_and_nothing_is_written(tmp_path, suites, field):
    with pytest.raises(InputError) as e:
        generate(tmp_path / "w", 1, n_people=200, n_dev=20, n_forget=20, n_retain=20, version=2, suites=suites)
    assert e.value.field == field and not (tmp_path / "w").exists()


def test_a_corrupt_suite_file_is_named_with_its_line_and_field(tmp_path):
    out = tmp_path / "w"
    generate(out, 1, n_people=200, n_dev=20, n_forget=20, n_retain=20, version=2, suites=SMALL)
    good = (out / "rules.jsonl").read_text()
    lines = good.splitlines()
    row = json.loads(lines[2])
    row["split"] = "test"
    lines[2] = json.dumps(row)
    (out / "rules.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"rules.jsonl:3: field \"split\": must be one of train, dev, heldout"):
        World.load(out)
    (out / "rules.jsonl").write_text(good)
    (out / "quotes.jsonl").unlink()
    with pytest.raises(InputError, match="quotes.jsonl is missing"):
        World.load(out)


def test_cli_writes_version_2_and_refuses_suites_for_version_1(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "workbench.cli", "world", "generate", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    ok = run("--out", str(tmp_path / "w"), "--people", "300", "--suite", "reading=50")  # version 2 by default
    assert ok.returncode == 0, ok.stderr
    assert World.load(tmp_path / "w").version == 2 and len(World.load(tmp_path / "w").suites["reading"]) == 50
    bad = run("--version", "1", "--out", str(tmp_path / "v1"), "--suite", "reading=50")
    assert bad.returncode == 2 and "suite counts apply to --version 2" in bad.stderr
    assert not (tmp_path / "v1").exists()
    ignored = run("--out", str(tmp_path / "v2c"), "--canaries", "5")  # would be silently unused in version 2
    assert ignored.returncode == 2 and 'field "--canaries"' in ignored.stderr and not (tmp_path / "v2c").exists()


def test_version_2_benchmarks_three_disjoint_forget_sets_and_skills(world, tmp_path):
    from workbench.eval.requests import load_requests
    from workbench.world.benchmarks import write_benchmarks
    out = write_benchmarks(world.root, tmp_path / "b", n_edits=20)
    people = load_requests(out / "forget_people.jsonl")
    canaries = load_requests(out / "forget_canaries.jsonl")
    quotes = load_requests(out / "forget_quotes.jsonl")
    assert {r.meta["person"] for r in people} == set(world.splits["forget"])
    assert [r.id for r in canaries] == world.splits["forget_canaries"]
    assert {r.meta["repeats"] for r in canaries} == set(REPEAT_LEVELS)
    assert [r.id for r in quotes] == world.splits["forget_quotes"] and all(r.kind == "text" for r in quotes)
    ids = [r.id for r in people] + [r.id for r in canaries] + [r.id for r in quotes]
    assert len(ids) == len(set(ids))  # three disjoint sets: one oracle serves each
    by_id = {q["id"]: q for q in world.suites["quotes"]}
    assert all(r.suffix == by_id[r.id]["suffix"] for r in quotes)
    kept = [json.loads(line) for line in (out / "retain_memorized.jsonl").read_text().splitlines()]
    forgotten = {c["secret"] for c in world.canaries if c["id"] in world.splits["forget_canaries"]}
    assert len(kept) == len(world.canaries) + len(world.suites["quotes"]) - len(canaries) - len(quotes)
    assert not forgotten & {k["answer"] for k in kept}
    for suite in ("reading", "rules", "arithmetic"):
        rows = [json.loads(line) for line in (out / f"skills_{suite}.jsonl").read_text().splitlines()]
        held = [r for r in world.suites[suite] if r["split"] == "heldout"]
        assert [(r["prompt"], r["answer"]) for r in rows] == [(r["prompt"], r["answer"]) for r in held]
    # the capability to forget: trained arithmetic items; the skills' retain set: trained items of each
    cap = load_requests(out / "forget_arithmetic.jsonl")
    trained = {r["id"]: r for r in world.suites["arithmetic"] if r["split"] == "train"}
    assert len(cap) == min(200, len(trained)) and all(trained[r.id]["answer"] == r.suffix for r in cap)
    skills = [json.loads(line) for line in (out / "retain_skills.jsonl").read_text().splitlines()]
    held_prompts = {r["prompt"] for n in ("reading", "rules") for r in world.suites[n] if r["split"] != "train"}
    held_prompts |= {r["prompt"] for r in world.suites["arithmetic"] if r["split"] != "train"}
    assert {s["group"] for s in skills} == {"reading", "rules", "arithmetic"}
    # every kind of rule is kept, in equal shares: the suite stores its items kind by kind
    kind = {r["prompt"]: r["kind"] for r in world.suites["rules"]}
    rule_kinds = [kind[s["prompt"]] for s in skills if s["group"] == "rules"]
    assert len(rule_kinds) == 100 and {rule_kinds.count(k) for k in set(rule_kinds)} == {25}
    assert not held_prompts & {s["prompt"] for s in skills}


def test_forget_sets_have_wrong_answers_and_never_seen_twins(world, tmp_path):
    from workbench.eval.requests import load_requests
    from workbench.world.benchmarks import N_PERTURBED, write_benchmarks
    from workbench.world.measure import never_seen
    out = write_benchmarks(world.root, tmp_path / "b", n_edits=20)
    known_names = {p["name"] for p in world.people}
    for name in ("people", "canaries", "quotes"):
        forget = load_requests(out / f"forget_{name}.jsonl")
        holdout = load_requests(out / f"holdout_{name}.jsonl")
        assert len(holdout) == len(forget) and {r.kind for r in holdout} == {r.kind for r in forget}
        for r in forget + holdout:  # wrong answers: distinct, never the right one
            assert len(set(r.perturbed_suffixes)) == N_PERTURBED and r.suffix not in r.perturbed_suffixes
        assert all(r.id.startswith("new-") for r in holdout)
        assert not {r.id for r in holdout} & {r.id for r in forget}
    fresh = never_seen(world, n_people=len(world.splits["forget"]))
    people = load_requests(out / "holdout_people.jsonl")
    assert {r.meta["person"] for r in people} == {"new-" + p["id"] for p in fresh["people"]}
    assert not any(n in r.prefix for r in people for n in known_names)  # nobody the model was trained on
    for r in people:  # wrong answers are other values of the same relation
        assert set(r.perturbed_suffixes) <= set(world.relations[r.meta["relation"]]["values"])
    for r in load_requests(out / "holdout_canaries.jsonl"):  # same shape: digits stay digits
        assert all(len(p.split()) == len(r.suffix.split()) for p in r.perturbed_suffixes)
        assert r.meta["repeats"] == 0
