"""Measure a model against the world: fact recall, canary recitation, held-out perplexity, and
in a version-2 world every skill suite, canaries by frequency and quotes.

These are the numbers in the shipped model's card; `workbench world measure` reproduces them.
"""
from __future__ import annotations

import math
from pathlib import Path

from workbench.eval.requests import Probe
from workbench.eval.scoring import encode_pairs, score_answers, token_nll
from workbench.world.schema import World

TARGETS = {"recall_train_phrasings": 0.95, "recall_heldout_phrasings": 0.80, "canary_exact": 0.95}
# A version-2 world's targets (issue 14): held-out items of every suite; canaries seen 8+ times.
TARGETS_V2 = {"recall_train_phrasings": 0.95, "recall_heldout_phrasings": 0.85, "reading": 0.95, "rules": 0.95,
              "arithmetic": 0.90, "canary_exact_8plus": 0.95, "quote_exact": 0.95}


def fact_accuracy(model, tok, probes: list, *, batch_size: int = 128, by_group: bool = False,
                  each: bool = False) -> dict:
    """Greedy exact match and teacher-forced token accuracy of each probe's answer; with
    `by_group`, also "by_group": the exact share of each `Probe.group` (from the same scores);
    with `each`, also "each": every probe's exact match (0 or 1) in the given order."""
    pairs = encode_pairs(tok, [p.prompt for p in probes], [p.answer for p in probes])
    scores = score_answers(model, pairs, batch_size=batch_size, pad_id=tok.pad_token_id)
    n = len(scores)
    out = {"n": n, "exact": sum(s.exact for s in scores) / n,
           "token_accuracy": sum(s.token_accuracy for s in scores) / n}
    if by_group:
        groups: dict = {}
        for p, s in zip(probes, scores):
            groups.setdefault(p.group, []).append(s.exact)
        out["by_group"] = {g: sum(v) / len(v) for g, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    if each:
        out["each"] = [int(s.exact) for s in scores]
    return out


def canary_exact(model, tok, canaries: list[dict]) -> dict:
    """Share of canaries whose secret greedy decoding reproduces exactly from the prefix."""
    return fact_accuracy(model, tok, [Probe(c["prefix"], c["secret"]) for c in canaries])


def suite_accuracy(model, tok, rows: list[dict], split: str = "heldout") -> dict:
    """Greedy exact answers on one version-2 suite's items of `split` (the model reads `prompt`)."""
    return fact_accuracy(model, tok, [Probe(r["prompt"], r["answer"]) for r in rows if r["split"] == split])


def measure_suites(model, tok, world: World) -> dict:
    """A version-2 world's suites: held-out reading, rules (also per kind) and arithmetic;
    canaries by how often they occurred in training; quotes recited exactly from their prefix.
    Canaries and quotes marked for forgetting are left out here (`measure_forget_sets` scores
    them), so a retrain oracle's numbers compare with the default model's."""
    forget = set(world.splits.get("forget_canaries", ())) | set(world.splits.get("forget_quotes", ()))
    canaries = [c for c in world.canaries if c["id"] not in forget]
    quotes = [q for q in world.suites["quotes"] if q["id"] not in forget]
    out = {name: suite_accuracy(model, tok, world.suites[name]) for name in ("reading", "rules", "arithmetic")}
    out.update({f"{name}_train": suite_accuracy(model, tok, world.suites[name], "train")
                for name in ("reading", "rules", "arithmetic")})
    out["rules_by_kind"] = {k: suite_accuracy(model, tok, [r for r in world.suites["rules"] if r["kind"] == k])
                            for k in sorted({r["kind"] for r in world.suites["rules"]})}
    by_count = {}
    for c in canaries:
        by_count.setdefault(c["repeats"], []).append(c)
    out["canary_exact_by_repeats"] = {str(n): canary_exact(model, tok, cs) for n, cs in sorted(by_count.items())}
    out["canary_exact_8plus"] = canary_exact(model, tok, [c for c in canaries if c["repeats"] >= 8])
    # Greedy decoding reproduces a suffix exactly iff every token is the argmax under teacher
    # forcing: strict recitation in one forward pass.
    out["quote_exact"] = quote_exact(model, tok, quotes)
    return out


def quote_exact(model, tok, quotes: list[dict]) -> dict:
    return fact_accuracy(model, tok, [Probe(q["prefix"], q["suffix"]) for q in quotes])


def never_seen(world: World, n_people: int = 60, n_canaries: int = 30, n_quotes: int = 8) -> dict:
    """Items no model trained on this world has seen, drawn like the world's own (fixed from
    the world's seed): the level a forget set sits at in a model that never saw it."""
    import random

    from workbench.world.generate import canary_row, make_people
    from workbench.world.suites import make_quotes
    rng = random.Random(f"never-seen:{world.meta['seed']}")
    taken = {p["name"] for p in world.people}
    n_held = len(world.people[0]["heldout"][next(iter(world.relations))])
    people = [p for p in make_people(rng, n_people + len(taken) // 10, n_held) if p["name"] not in taken][:n_people]
    return {"people": people,
            "canaries": [canary_row(rng, j, people[j % len(people)]) for j in range(n_canaries)],
            "quotes": make_quotes(rng, n_quotes, 1, taken)}


def measure_forget_sets(model, tok, world: World) -> dict:
    """Each version-2 benchmark forget set (forget-split people's facts in trained phrasings,
    the canaries and the quotes marked for forgetting), and beside it the same score on
    never-seen items (`never_seen`): a retrain oracle should sit at the never-seen level."""
    fresh = never_seen(world)
    forget_c, forget_q = set(world.splits["forget_canaries"]), set(world.splits["forget_quotes"])
    fresh_probes = [world.probe(p, rel, ph) for p in fresh["people"] for rel in world.relations
                    for ph in range(len(world.relations[rel]["phrasings"]))]
    return {
        "people": fact_accuracy(model, tok, world.probes(heldout=False, people=world.splits["forget"])),
        "people_never_seen": fact_accuracy(model, tok, [p for p in fresh_probes if not p.heldout]),
        "canaries": canary_exact(model, tok, [c for c in world.canaries if c["id"] in forget_c]),
        "canaries_never_seen": canary_exact(model, tok, fresh["canaries"]),
        "quotes": quote_exact(model, tok, [q for q in world.suites["quotes"] if q["id"] in forget_q]),
        "quotes_never_seen": quote_exact(model, tok, fresh["quotes"]),
    }


def heldout_perplexity(model, tok, texts: list[str]) -> dict:
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    nll, count = token_nll(model, ids, pad_id=tok.pad_token_id)
    return {"n_texts": len(texts), "tokens": count, "perplexity": math.exp(nll / count)}


def measure(model_dir: str | Path, world_dir: str | Path) -> dict:
    """All card numbers for the model in `model_dir` on the world in `world_dir`.

    Example:
        >>> m = measure("data/models/world-llama", "data/world")  # doctest: +SKIP
        >>> m["recall_heldout_phrasings"]["exact"] >= 0.8  # doctest: +SKIP
        True
    """
    from workbench.core.model import load_model
    world = World.load(world_dir)
    model, tok = load_model(model_dir)
    dev = set(world.splits["dev"])
    # version 2: the forget-split people are scored apart (measure_forget_sets), so an oracle
    # that never saw them is judged on the same people as the default model
    forget = set(world.splits["forget"]) if world.version == 2 else set()
    apart = dev | forget
    kept = [p["id"] for p in world.people if p["id"] not in apart]
    scored = [p["id"] for p in world.people if p["id"] not in forget]
    forget_canaries = set(world.splits.get("forget_canaries", ()))
    result = {
        "recall_train_phrasings": fact_accuracy(model, tok, world.probes(heldout=False, people=scored)),
        "recall_heldout_phrasings": fact_accuracy(model, tok, world.probes(heldout=True, people=kept)),
        "recall_heldout_phrasings_dev": fact_accuracy(model, tok, world.probes(heldout=True, people=sorted(dev))),
        "canary_exact": canary_exact(model, tok, [c for c in world.canaries if c["id"] not in forget_canaries]),
        "heldout_perplexity": heldout_perplexity(model, tok, [t["text"] for t in world.heldout_text]),
    }
    targets = TARGETS
    if world.version == 2:
        result.update(measure_suites(model, tok, world))
        result["forget_sets"] = measure_forget_sets(model, tok, world)
        targets = TARGETS_V2
    result["targets"] = {k: {"target": v, "measured": result[k]["exact"], "met": result[k]["exact"] >= v}
                         for k, v in targets.items()}
    return result
