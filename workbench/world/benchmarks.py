"""Benchmark request sets drawn from the world, deterministic from a seed.

- `edits_counterfactual.jsonl`: a person's relation value replaced by another valid value.
  The edit prompt is one of the person's trained statement phrasings; the rephrases
  (generality) are that person's held-out phrasings of the relation; the locality probes
  are facts of people whom no edit in the set touches, in phrasings the model was trained
  on. Why not any other person: the lifelong protocol scores every probe on the model
  after all T edits, so a probe about a person edited elsewhere in the set is not
  unrelated to the edits (the field's locality/neighbourhood probes are other subjects),
  and one about an edited (person, relation) expects the answer the set itself replaces
  (284 of the 2,000 probes of a 1,000-edit set drawn from any other person did).
- `forget_canaries.jsonl`: every canary, prefix -> secret (kind "canary").
- `forget_people.jsonl`: every fact of the forget-split people (kind "fact"), the prompt in
  a trained phrasing and the other trained phrasings as paraphrased prefixes.
- `retain.jsonl`: probes (native `{prompt, answer}`) of the retain-split people's facts,
  the retain set for both forget sets (`workbench.eval.requests.with_retain`).

A version-2 world also gets:
- `forget_canaries.jsonl` holds only the canaries of `splits.forget_canaries` (a share of
  each repeat count; `meta.repeats`), and `forget_quotes.jsonl` the quotes of
  `splits.forget_quotes` (kind "text", prefix -> suffix). The three forget sets are disjoint,
  so one retrain oracle (`workbench world train --without` all three) serves each.
- `retain_memorized.jsonl`: probes of the canaries and quotes *not* marked for forgetting
  (`group` = "canary-<repeats>" or "quote"): memorized text an unlearning method should leave.
- `skills_reading.jsonl`, `skills_rules.jsonl`, `skills_arithmetic.jsonl`: every held-out
  item of the suite as a probe (`group` = the relation or rule kind): the general skills.
- `forget_arithmetic.jsonl`: a capability to remove rather than strings (the selective-pruning
  paper's setting): the first `N_CAPABILITY` trained arithmetic items as forget requests (kind
  "text", prompt -> answer); success is measured on the held-out items (`skills_arithmetic`).
  `retain_skills.jsonl`: `N_CAPABILITY // 2` trained items of reading, rules and arithmetic,
  each suite's kinds in turn, as probes (`group` = the suite): with `retain.jsonl`'s facts, what an unlearning
  run must keep of every skill (a capability removal leaves its own suite out).
- `holdout_people.jsonl`, `holdout_canaries.jsonl`, `holdout_quotes.jsonl`: requests shaped
  exactly like each forget set about items no model trained on the world has seen (the card's
  never-seen items, `workbench.world.measure.never_seen`): the non-members of membership
  inference (MUSE's holdout split).

Every version-2 forget and holdout request carries `perturbed_suffixes`: wrong answers of the
same shape (other values of the relation; secrets of the same digits-or-words shape; suffixes
of never-seen quotes), drawn from a stream of their own, for TOFU's truth ratio.
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path

from workbench.core.fsutil import atomic_dir
from workbench.core.jsonio import write_jsonl
from workbench.eval.requests import EditRequest, ForgetRequest, Probe, dump_requests
from workbench.world.schema import World

DEFAULT_BENCH_SEED = 4321
N_PERTURBED = 5  # wrong answers per request (TOFU has five perturbed answers per question)
N_CAPABILITY = 200  # trained items standing for a capability to forget


def _trained(world: World, person: dict, relation: str, kind: str | None = None) -> list[int]:
    held = set(person["heldout"][relation])
    return [i for i, ph in enumerate(world.relations[relation]["phrasings"])
            if i not in held and (kind is None or ph["kind"] == kind)]


def counterfactual_edits(world: World, rng: random.Random, n: int, n_locality: int = 2) -> list[EditRequest]:
    rels = list(world.relations)
    pairs = [(p, r) for p in world.people for r in rels]
    chosen = rng.sample(pairs, n)
    edited = {person["id"] for person, _ in chosen}
    unedited = [p for p in world.people if p["id"] not in edited]
    # A probe first drawn onto an edited person is redrawn from the unedited ones with a rng
    # of its own, so the main stream (edits, and the forget/retain sets drawn after them)
    # stays what it was before this rule.
    redraw = random.Random(f"locality-{n}")
    edits = []
    for k, (person, rel) in enumerate(chosen):
        truth = person["facts"][rel]
        target = rng.choice([v for v in world.relations[rel]["values"] if v != truth])
        prompt = world.probe(person, rel, rng.choice(_trained(world, person, rel, "statement"))).prompt
        rephrases = [world.probe(person, rel, ph).prompt for ph in person["heldout"][rel]]
        locality = []
        for other in rng.sample([p for p in world.people if p["id"] != person["id"]], n_locality):
            lrel = rng.choice(rels)
            phrasing = rng.choice(_trained(world, other, lrel))
            if other["id"] in edited:
                if len(unedited) < n_locality:
                    raise ValueError(f"{n} edits leave {len(unedited)} unedited people for locality probes")
                taken = {p.prompt for p in locality}
                other = redraw.choice([p for p in unedited if not any(p["name"] in t for t in taken)])
                lrel = redraw.choice(rels)
                phrasing = redraw.choice(_trained(world, other, lrel))
            pr = world.probe(other, lrel, phrasing)
            locality.append(Probe(pr.prompt, pr.answer, group=lrel))
        edits.append(EditRequest(prompt=prompt, target_new=target, ground_truth=truth, subject=person["name"],
                                 rephrase_prompts=tuple(rephrases), locality=tuple(locality), id=f"cf{k:04d}",
                                 meta={"person": person["id"], "relation": rel}))
    return edits


def forget_canaries(world: World, wrong: random.Random | None = None, canaries: list[dict] | None = None,
                    id_prefix: str = "") -> list[ForgetRequest]:
    """The marked canaries (or the given `canaries`); with `wrong`, each gets same-shaped wrong secrets."""
    from workbench.eval.metrics import secret_alternatives
    from workbench.world.vocab import PASSPHRASE_WORDS
    if canaries is None:
        marked = set(world.splits.get("forget_canaries", [c["id"] for c in world.canaries]))
        canaries = [c for c in world.canaries if c["id"] in marked]
    return [ForgetRequest(kind="canary", prefix=c["prefix"], suffix=c["secret"], id=id_prefix + c["id"],
                          perturbed_suffixes=tuple(secret_alternatives(c["secret"], PASSPHRASE_WORDS, N_PERTURBED, wrong))
                          if wrong else (),
                          meta={"person": c["person"], "secret_kind": c["kind"],
                                **({"repeats": c["repeats"]} if "repeats" in c else {})})
            for c in canaries]


def forget_quotes(world: World, wrong: random.Random, quotes: list[dict] | None = None,
                  id_prefix: str = "") -> list[ForgetRequest]:
    """The marked quotes (or the given `quotes`), each with the suffixes of never-seen quotes
    as wrong answers (same template, other words)."""
    from workbench.world.suites import make_quotes
    if quotes is None:
        marked = set(world.splits["forget_quotes"])
        quotes = [q for q in world.suites["quotes"] if q["id"] in marked]
    taken = {p["name"] for p in world.people}
    return [ForgetRequest(kind="text", prefix=q["prefix"], suffix=q["suffix"], id=id_prefix + q["id"],
                          perturbed_suffixes=tuple(w["suffix"] for w in make_quotes(wrong, N_PERTURBED, 1, taken)),
                          meta={"author": q["author"], "repeats": q["repeats"]})
            for q in quotes]


def retain_memorized(world: World) -> list[dict]:
    canaries = set(world.splits["forget_canaries"])
    quotes = set(world.splits["forget_quotes"])
    rows = [Probe(c["prefix"], c["secret"], group=f"canary-{c['repeats']}") for c in world.canaries
            if c["id"] not in canaries]
    rows += [Probe(q["prefix"], q["suffix"], group="quote") for q in world.suites["quotes"] if q["id"] not in quotes]
    return [r.to_dict() for r in rows]


def capability_forget(world: World, suite: str = "arithmetic", n: int = N_CAPABILITY) -> list[ForgetRequest]:
    """The first `n` trained items of `suite` as forget requests: the skill, not strings."""
    rows = [r for r in world.suites[suite] if r["split"] == "train"][:n]
    return [ForgetRequest(kind="text", prefix=r["prompt"], suffix=r["answer"], id=r["id"], meta={"suite": suite})
            for r in rows]


def retain_skills(world: World, suites=("reading", "rules", "arithmetic"), n: int = N_CAPABILITY // 2) -> list[dict]:
    """`n` trained items of each of `suites` as probes, taken in turn from each of the suite's
    kinds (the first of each, then the second, ...): the skills an unlearning run keeps. In
    turn because a suite stores its items kind by kind: the first 100 rules were all boolean,
    and a retain set without copy, reverse or compare let pruning take the neurons those need."""
    return [Probe(r["prompt"], r["answer"], group=suite).to_dict() for suite in suites
            for r in in_turn([r for r in world.suites[suite] if r["split"] == "train"], lambda r: r["kind"])[:n]]


def in_turn(items: list, key) -> list:
    """`items` reordered to take each `key` group in turn (first of each, then second, ...), so
    that any prefix covers every group evenly.

    Example:
        >>> in_turn(["a1", "a2", "a3", "b1"], key=lambda s: s[0])
        ['a1', 'b1', 'a2', 'a3']
    """
    groups: dict = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return [it for turn in itertools.zip_longest(*groups.values()) for it in turn if it is not None]


def skill_probes(world: World, suite: str) -> list[dict]:
    return [Probe(r["prompt"], r["answer"], group=r.get("relation", r["kind"])).to_dict()
            for r in world.suites[suite] if r["split"] == "heldout"]


def forget_people(world: World, rng: random.Random, wrong: random.Random | None = None,
                  people: list[dict] | None = None) -> list[ForgetRequest]:
    """Every fact of the forget-split people (or of `people`); with `wrong`, each gets other
    values of its relation as wrong answers."""
    out = []
    for person in people if people is not None else [world.by_id[pid] for pid in world.splits["forget"]]:
        for rel in world.relations:
            trained = _trained(world, person, rel)
            main = rng.choice(trained)
            truth = person["facts"][rel]
            others = [v for v in world.relations[rel]["values"] if v != truth]
            out.append(ForgetRequest(
                kind="fact", prefix=world.probe(person, rel, main).prompt, suffix=truth,
                paraphrased_prefixes=tuple(world.probe(person, rel, ph).prompt for ph in trained if ph != main),
                perturbed_suffixes=tuple(wrong.sample(others, N_PERTURBED)) if wrong else (),
                id=f"{person['id']}-{rel}", meta={"person": person["id"], "relation": rel}))
    return out


def retain_probes(world: World, rng: random.Random) -> list[dict]:
    rows = []
    for pid in world.splits["retain"]:
        person = world.by_id[pid]
        for rel in world.relations:
            pr = world.probe(person, rel, rng.choice(_trained(world, person, rel)))
            rows.append(Probe(pr.prompt, pr.answer, group=rel).to_dict())
    return rows


def write_benchmarks(world_dir: str | Path, out: str | Path, seed: int = DEFAULT_BENCH_SEED, *,
                     n_edits: int = 1000, overwrite: bool = False) -> Path:
    """Write the four request sets under `out` (atomically).

    Example:
        >>> write_benchmarks("data/world", "/tmp/bench-sets", overwrite=True)  # doctest: +SKIP
    """
    world = World.load(world_dir)
    rng = random.Random(seed)
    v2 = world.version == 2
    # wrong answers come from a stream of their own, so the sets drawn from `rng` stay as before
    wrong = random.Random(f"perturbed:{seed}") if v2 else None
    edits = counterfactual_edits(world, rng, n_edits)
    people = forget_people(world, rng, wrong)
    retain = retain_probes(world, rng)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        dump_requests(tmp / "edits_counterfactual.jsonl", edits)
        dump_requests(tmp / "forget_canaries.jsonl", forget_canaries(world, wrong))
        dump_requests(tmp / "forget_people.jsonl", people)
        write_jsonl(tmp / "retain.jsonl", retain)
        if v2:
            dump_requests(tmp / "forget_quotes.jsonl", forget_quotes(world, wrong))
            write_jsonl(tmp / "retain_memorized.jsonl", retain_memorized(world))
            for suite in ("reading", "rules", "arithmetic"):
                write_jsonl(tmp / f"skills_{suite}.jsonl", skill_probes(world, suite))
            dump_requests(tmp / "forget_arithmetic.jsonl", capability_forget(world))
            write_jsonl(tmp / "retain_skills.jsonl", retain_skills(world))
            _write_holdouts(world, tmp, random.Random(f"holdout:{seed}"), wrong)
    return Path(out)


def _write_holdouts(world: World, out: Path, rng: random.Random, wrong: random.Random) -> None:
    """The never-seen twin of each forget set, as many items and the same request shape."""
    from workbench.world.measure import never_seen
    fresh = never_seen(world, n_people=len(world.splits["forget"]), n_canaries=len(world.splits["forget_canaries"]),
                       n_quotes=len(world.splits["forget_quotes"]))
    # "new-" ids, and 0 repeats: never-seen items must not pass for the world's own
    people = [{**p, "id": "new-" + p["id"]} for p in fresh["people"]]
    canaries = [{**c, "person": "new-" + c["person"], "repeats": 0} for c in fresh["canaries"]]
    quotes = [{**q, "repeats": 0} for q in fresh["quotes"]]
    dump_requests(out / "holdout_people.jsonl", forget_people(world, rng, wrong, people))
    dump_requests(out / "holdout_canaries.jsonl", forget_canaries(world, wrong, canaries, "new-"))
    dump_requests(out / "holdout_quotes.jsonl", forget_quotes(world, wrong, quotes, "new-"))
