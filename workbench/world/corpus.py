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
    """The version-2 suites' training items, each as the text the model reads then its answer."""
    return [f"{r['prompt']} {r['answer']}" for name in ("reading", "rules", "arithmetic")
            for r in world.suites.get(name, ()) if r["split"] == "train"]


def memorized_items(world: World) -> list[dict]:
    """Version 2's memorized texts: every canary and quote, each with its `repeats`."""
    return list(world.canaries) + list(world.suites.get("quotes", ()))


def memorized_schedule(world: World, n_epochs: int, seed: int) -> list[list[str]]:
    """Per epoch, the memorized texts it holds: each item's `repeats` copies spread evenly over
    the first `n_epochs` epochs from a seeded offset, so `repeats` counts occurrences in the whole
    run (the frequency axis), not per epoch."""
    schedule: list[list[str]] = [[] for _ in range(n_epochs)]
    rng = random.Random(f"memorized:{seed}")
    for item in memorized_items(world):
        offset = rng.random()
        for k in range(item["repeats"]):
            schedule[int((k + offset) * n_epochs / item["repeats"]) % n_epochs].append(item["text"])
    return schedule


def epoch_documents(world: World, rng: random.Random, *, canary_repeats: int, filler_docs: int,
                    banned_filler: set[str], memorized: list[str] | None = None) -> list[str]:
    """One epoch's documents, shuffled. Version 1: every canary `canary_repeats` times. Version 2:
    the suites' training items and this epoch's share of the memorized texts (`memorized`)."""
    docs = []
    rels = list(world.relations)
    for person in world.people:
        order = rels[:]
        rng.shuffle(order)
        docs.append(" ".join(fact_sentence(world, person, r, rng.choice(trained_phrasings(world, person, r)))
                             for r in order))
    if world.version == 1:
        for c in world.canaries:
            docs.extend([c["text"]] * canary_repeats)
    else:
        docs += suite_documents(world) + list(memorized or ())
    while filler_docs > 0:
        a, b = filler_sentence(rng), filler_sentence(rng)
        if a in banned_filler or b in banned_filler:
            continue
        docs.append(f"{a} {b}")
        filler_docs -= 1
    rng.shuffle(docs)
    return docs


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
