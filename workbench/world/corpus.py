"""The training corpus, drawn afresh each epoch from the world (deterministic per seed).

Why bios with random phrasings: a fact seen in only one phrasing is memorized as that
string, and a held-out phrasing then scores near zero. Each epoch, every person gets one
biography stating all six facts in a random order, each in a phrasing drawn from that
person's *trained* phrasings (statements and Q/A mixed). Seeing the same fact through many
phrasings pushes the model to store it once under the name and read it out per phrasing,
which is what lets a phrasing held out for this person (but trained for others) work.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from workbench.world.generate import filler_sentence
from workbench.world.schema import World


def fact_sentence(world: World, person: dict, relation: str, phrasing: int) -> str:
    kind, template = world.template(relation, phrasing)
    return f"{template.format(name=person['name'])} {person['facts'][relation]}."


def trained_phrasings(world: World, person: dict, relation: str) -> list[int]:
    n = len(world.relations[relation]["phrasings"])
    held = set(person["heldout"][relation])
    return [i for i in range(n) if i not in held]


def heldout_sentences(world: World) -> set[str]:
    """Single filler sentences that appear in the held-out text (never trained on)."""
    out = set()
    for row in world.heldout_text:
        for part in row["text"].split(". "):
            out.add(part if part.endswith(".") else part + ".")
    return out


def suite_documents(world: World) -> list[str]:
    """The version-2 suites' stored training items, each as the text the model reads then its
    answer (the tokenizer's sample of the training distribution)."""
    return [f"{r['prompt']} {r['answer']}" for name in ("reading", "rules", "arithmetic")
            for r in world.suites.get(name, ()) if r["split"] == "train"]


# Boolean expressions are the rule a 4-layer model learns slowest: world-5's model evaluated
# 0.77 of them after 7000 steps with one share, while copying, reversing and comparing reached
# 0.94-0.98; training draws four times as many of them.
TRAIN_RULE_WEIGHTS = {"boolean": 4}


def fresh_suite_documents(world: World, rng: random.Random, scale: int) -> list[str]:
    """This epoch's suite items, drawn afresh from the suites' generators: `scale` times as many
    as the world stores for training, never a dev or held-out prompt. Fresh items every epoch
    make reading and arithmetic learnable only as rules: a fixed training set of 1,500 passages
    seen 43 times was recalled at .99 while held-out passages stayed near chance."""
    from workbench.world import suites
    stored = {name: [r for r in world.suites.get(name, ()) if r["split"] == "train"]
              for name in ("reading", "rules", "arithmetic")}
    kept = {r["prompt"] for name in stored for r in world.suites.get(name, ()) if r["split"] != "train"}
    taken = {p["name"] for p in world.people}
    none = {"heldout_share": 0.0, "dev_share": 0.0}
    rows = suites.make_reading(rng, scale * len(stored["reading"]), taken, **none) if stored["reading"] else []
    per_kind = scale * len(stored["rules"]) // max(1, len({r["kind"] for r in stored["rules"]}))
    rows += suites.make_rules(rng, per_kind, weights=TRAIN_RULE_WEIGHTS, **none) if per_kind else []
    rows += suites.make_arithmetic(rng, scale * len(stored["arithmetic"]), **none) if stored["arithmetic"] else []
    return [f"{r['prompt']} {r['answer']}" for r in rows if r["prompt"] not in kept]


def memorized_items(world: World) -> list[dict]:
    """Version 2's memorized texts: every canary and quote, each with its `repeats`."""
    return list(world.canaries) + list(world.suites.get("quotes", ()))


def occurrence_epochs(repeats: int, epochs: int) -> list[int]:
    """The (0-based) epochs in which an item that occurs `repeats` times in a run of `epochs`
    epochs is trained on: spread evenly (the k-th copy in epoch floor((k + 1/2) * epochs /
    repeats)), so an item's count, not its position in the run, is what varies.

    Example:
        >>> occurrence_epochs(2, 10), occurrence_epochs(3, 2)
        ([2, 7], [0, 1, 1])
    """
    return [min(epochs - 1, (2 * k + 1) * epochs // (2 * repeats)) for k in range(repeats)]


@dataclass(frozen=True)
class Without:
    """What a retrain oracle never sees: (person id, relation) facts, canary ids, quote ids."""
    facts: frozenset = frozenset()
    items: frozenset = frozenset()

    def drops_item(self, item_id: str) -> bool:
        return item_id in self.items


def read_without(paths, world: World) -> Without:
    """A forget set for a retrain oracle, from forget-request JSONL files (the format of
    `data/benchmarks/forget_*.jsonl`): `fact` rows name `meta.person` and `meta.relation`,
    `canary` rows a canary id, `text` rows a quote id (as `id`). Every row must name something
    in this world; an error names the file, the line and the field, and nothing is trained."""
    from workbench.eval.requests import ForgetRequest, load_requests
    people = {p["id"]: p for p in world.people}
    canaries = {c["id"] for c in world.canaries}
    quotes = {q["id"] for q in world.suites.get("quotes", ())}
    facts, items = set(), set()
    files = [paths] if isinstance(paths, (str, Path)) else paths
    for req in (req for f in files for req in load_requests(f, format="native")):
        if not isinstance(req, ForgetRequest):  # errors carry the record's own file and line
            raise req.input_error("not a forget request (an oracle leaves out what a forget set names)", "type")
        meta = req.meta or {}
        if req.kind == "fact":
            person, relation = meta.get("person"), meta.get("relation")
            if person not in people:
                raise req.input_error(f"no person {person!r} in this world", "meta.person")
            if relation not in world.relations:
                raise req.input_error(f"no relation {relation!r}; known: {', '.join(world.relations)}", "meta.relation")
            facts.add((person, relation))
        else:
            known = canaries if req.kind == "canary" else quotes
            if req.id not in known:
                raise req.input_error(f"no {'canary' if req.kind == 'canary' else 'quote'} {req.id!r} in this world", "id")
            items.add(req.id)
    return Without(frozenset(facts), frozenset(items))


def epoch_documents(world: World, rng: random.Random, *, canary_repeats: int, filler_docs: int,
                    banned_filler: set[str], suite_scale: int = 1, without: Without | None = None,
                    bios: int = 1, keep_gaps: bool = False) -> list:
    """One epoch's documents, shuffled. Version 1: every canary `canary_repeats` times. Version 2:
    fresh suite items (`fresh_suite_documents`); `bios` biographies of each person (each in
    its own order and phrasings); its memorized items are not here but placed by occurrence
    over the run (the trainer's schedule).

    `without`: facts left out of the biographies and canaries left out. They are drawn and
    then removed, so an oracle's random stream (and with it every other document) is the
    default run's; `keep_gaps` leaves None where a removed document was, for a caller that
    shuffles further and must consume the same randomness."""
    docs: list = []
    rels = list(world.relations)
    dropped = without.facts if without else frozenset()
    for person in [p for _ in range(bios) for p in world.people]:
        order = rels[:]
        rng.shuffle(order)
        sentences = [fact_sentence(world, person, r, rng.choice(trained_phrasings(world, person, r)))
                     for r in order]
        kept = [text for r, text in zip(order, sentences) if (person["id"], r) not in dropped]
        docs.append(" ".join(kept) if kept else None)
    if world.version == 1:
        for c in world.canaries:
            gone = without is not None and without.drops_item(c["id"])
            docs.extend([None if gone else c["text"]] * canary_repeats)
    else:
        docs += fresh_suite_documents(world, rng, suite_scale)
    while filler_docs > 0:
        a, b = filler_sentence(rng), filler_sentence(rng)
        if a in banned_filler or b in banned_filler:
            continue
        docs.append(f"{a} {b}")
        filler_docs -= 1
    rng.shuffle(docs)
    return docs if keep_gaps else [d for d in docs if d is not None]


def tokenizer_texts(world: World) -> list[str]:
    """Texts the tokenizer is trained on: every trained fact sentence, canaries, filler."""
    rng = random.Random(world.meta["seed"])
    texts = [fact_sentence(world, p, r, ph) for p in world.people for r in world.relations
             for ph in trained_phrasings(world, p, r)]
    texts += [c["text"] for c in world.canaries]
    texts += suite_documents(world) + [q["text"] for q in world.suites.get("quotes", ())]
    banned = heldout_sentences(world)
    texts += [s for s in (filler_sentence(rng) for _ in range(3000)) if s not in banned]
    return texts
