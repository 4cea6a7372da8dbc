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
    """The version-2 suites' stored training items, each as the text the model reads then its
    answer (the tokenizer's sample of the training distribution)."""
    return [f"{r['prompt']} {r['answer']}" for name in ("reading", "rules", "arithmetic")
            for r in world.suites.get(name, ()) if r["split"] == "train"]


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
    rows += suites.make_rules(rng, per_kind, **none) if per_kind else []
    rows += suites.make_arithmetic(rng, scale * len(stored["arithmetic"]), **none) if stored["arithmetic"] else []
    return [f"{r['prompt']} {r['answer']}" for r in rows if r["prompt"] not in kept]


def memorized_items(world: World) -> list[dict]:
    """Version 2's memorized texts: every canary and quote, each with its `repeats`."""
    return list(world.canaries) + list(world.suites.get("quotes", ()))


def epoch_documents(world: World, rng: random.Random, *, canary_repeats: int, filler_docs: int,
                    banned_filler: set[str], suite_scale: int = 1) -> list[str]:
    """One epoch's documents, shuffled. Version 1: every canary `canary_repeats` times. Version 2:
    fresh suite items (`fresh_suite_documents`) and every canary and quote `repeats` times (copies
    per pass over the mix, as the issue's prototype counted them)."""
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
        docs += fresh_suite_documents(world, rng, suite_scale)
        docs += [item["text"] for item in memorized_items(world) for _ in range(item["repeats"])]
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
