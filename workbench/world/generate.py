"""Generate the synthetic world deterministically from a seed.

Same seed, same bytes: every random choice comes from one `random.Random(seed)` consumed in
a fixed order, and every file is written with sorted keys and "\\n" line ends.
"""
from __future__ import annotations

import random
from pathlib import Path

from workbench.core.errors import InputError
from workbench.core.fsutil import atomic_dir
from workbench.core.jsonio import write_json, write_jsonl
from workbench.world import suites as suite_items, vocab
from workbench.world.schema import SCHEMA_DOC, SCHEMA_DOC_V2, SCHEMA_VERSIONS
from workbench.world.suites import REPEAT_LEVELS

DEFAULT_SEED = 1234


def _check_values_prefix_free() -> None:
    # A value that is a word-prefix of another ("Ostrava" vs "Ostrava Nova") would make
    # greedy exact match ambiguous; the vocabulary is fixed, so this is a programming check.
    for rel, spec in vocab.RELATIONS.items():
        words = [v.split() for v in spec["values"]]
        for a in words:
            for b in words:
                if a is not b and b[: len(a)] == a:
                    raise AssertionError(f"{rel}: value {' '.join(a)!r} is a prefix of {' '.join(b)!r}")


def _name_part(rng: random.Random, n_syllables: int) -> str:
    s = "".join(rng.choice(vocab.ONSETS) + rng.choice(vocab.VOWELS) + rng.choice(vocab.CODAS)
                for _ in range(n_syllables))
    return s.capitalize()


def make_names(rng: random.Random, n: int) -> list[str]:
    """`n` unique two-part names, e.g. "Drailo Venthask"."""
    names: list[str] = []
    seen: set[str] = set()
    forbidden = {w.lower() for spec in vocab.RELATIONS.values() for v in spec["values"] for w in v.split()}
    while len(names) < n:
        first = _name_part(rng, 2)
        last = _name_part(rng, rng.choice((2, 2, 3)))
        full = f"{first} {last}"
        if full in seen or first.lower() in forbidden or last.lower() in forbidden:
            continue
        seen.add(full)
        names.append(full)
    return names


def make_people(rng: random.Random, n_people: int, n_heldout: int) -> list[dict]:
    names = make_names(rng, n_people)
    people = []
    for i, name in enumerate(names):
        facts, heldout = {}, {}
        for rel, spec in vocab.RELATIONS.items():
            facts[rel] = rng.choice(spec["values"])
            heldout[rel] = sorted(rng.sample(range(len(spec["phrasings"])), n_heldout))
        people.append({"id": f"p{i:04d}", "name": name, "facts": facts, "heldout": heldout})
    return people


def make_canaries(rng: random.Random, people: list[dict], n_canaries: int) -> list[dict]:
    owners = rng.sample(range(len(people)), n_canaries)
    return [canary_row(rng, j, people[owner]) for j, owner in enumerate(owners)]


def canary_row(rng: random.Random, j: int, person: dict) -> dict:
    """Canary number `j`, tied to `person`: a random secret (six digits or four passphrase
    words, alternating by template) after a prefix that names the person."""
    kind, template = vocab.CANARY_TEMPLATES[j % len(vocab.CANARY_TEMPLATES)]
    if kind == "digits":
        secret = " ".join(str(rng.randrange(10)) for _ in range(6))
    else:
        secret = " ".join(rng.sample(vocab.PASSPHRASE_WORDS, 4))
    prefix = template.format(name=person["name"])
    return {"id": f"c{j:03d}", "person": person["id"], "kind": kind, "prefix": prefix, "secret": secret,
            "text": f"{prefix} {secret}."}


def filler_sentence(rng: random.Random) -> str:
    """One neutral sentence from the filler grammar (general text, no person facts)."""
    g = vocab.FILLER_GRAMMAR
    subject = rng.choice(g["subject"]).format(
        city=rng.choice(vocab.RELATIONS["birth_city"]["values"]),
        country=rng.choice(vocab.RELATIONS["citizenship"]["values"]),
        company=rng.choice(vocab.RELATIONS["employer"]["values"]))
    return f"{subject} {rng.choice(g['verb'])} {rng.choice(g['time'])}."


def make_heldout_text(rng: random.Random, n: int) -> list[dict]:
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < n:
        # Two sentences per item so perplexity sees cross-sentence context.
        t = f"{filler_sentence(rng)} {filler_sentence(rng)}"
        if t not in seen:
            seen.add(t)
            texts.append(t)
    return [{"id": f"h{i:04d}", "text": t} for i, t in enumerate(texts)]


def make_splits(rng: random.Random, people: list[dict], n_dev: int, n_forget: int, n_retain: int) -> dict:
    ids = [p["id"] for p in people]
    order = rng.sample(ids, n_dev + n_forget + n_retain)
    return {"dev": sorted(order[:n_dev]),
            "forget": sorted(order[n_dev:n_dev + n_forget]),
            "retain": sorted(order[n_dev + n_forget:])}


def generate(out: str | Path, seed: int = DEFAULT_SEED, *, n_people: int = 1200, n_heldout: int = 2,
             n_canaries: int = 120, n_heldout_text: int = 400, n_dev: int = 100, n_forget: int = 60,
             n_retain: int = 120, overwrite: bool = False, version: int = 2, suites: dict | None = None) -> Path:
    """Write a world under `out` (absent or, with overwrite, replaced whole).

    Version 2 (the default, the shipped world's) has the skill suites and memorized text by
    frequency (`workbench.world.suites`); `suites` overrides their counts (`SUITE_COUNTS`) and
    `n_canaries` is unused (the canaries come `canaries_per_level` at each repeat count).
    `version=1`: people, canaries repeated every epoch, filler.

    Example:
        >>> generate("/tmp/world-example", seed=7, n_people=200, n_dev=20, n_forget=20, n_retain=20,
        ...          suites={"reading": 100}, overwrite=True)  # doctest: +SKIP
    """
    if version not in SCHEMA_VERSIONS:
        raise InputError(f"must be one of {', '.join(map(str, SCHEMA_VERSIONS))}; got {version!r}", field="version")
    counts = _suite_counts(suites) if version == 2 else None
    _validate_counts(seed, n_people, n_heldout, n_canaries if version == 1 else 0, n_heldout_text,
                     n_dev, n_forget, n_retain)
    if counts is not None and counts["canaries_per_level"] * len(REPEAT_LEVELS) > n_people:
        raise InputError(f"{counts['canaries_per_level']} canaries at each of {len(REPEAT_LEVELS)} repeat counts "
                         f"need as many people; there are {n_people}", field="canaries_per_level")
    _check_values_prefix_free()
    rng = random.Random(seed)
    people = make_people(rng, n_people, n_heldout)
    canaries = make_canaries(rng, people, n_canaries) if version == 1 else []
    heldout_text = make_heldout_text(rng, n_heldout_text)
    splits = make_splits(rng, people, n_dev, n_forget, n_retain)
    meta = {
        "schema_version": version,
        "seed": seed,
        "counts": {"people": n_people, "canaries": n_canaries, "heldout_text": n_heldout_text,
                   "heldout_phrasings_per_fact": n_heldout},
        "relations": {rel: {"values": spec["values"],
                            "phrasings": [{"id": i, "kind": k, "template": t}
                                          for i, (k, t) in enumerate(spec["phrasings"])]}
                      for rel, spec in vocab.RELATIONS.items()},
        "splits": splits,
    }
    files = {}
    if version == 2:
        files, canaries = _suites(seed, people, counts)
        meta["counts"] = {**meta["counts"], "canaries": len(canaries), **counts}
        meta["splits"] = {**splits, "forget_canaries": files.pop("forget_canaries"),
                          "forget_quotes": files.pop("forget_quotes")}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "world.json", meta)
        write_jsonl(tmp / "people.jsonl", people)
        write_jsonl(tmp / "canaries.jsonl", canaries)
        write_jsonl(tmp / "heldout_text.jsonl", heldout_text)
        for name, rows in files.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        (tmp / "README.md").write_text(SCHEMA_DOC if version == 1 else SCHEMA_DOC_V2, encoding="utf-8",
                                       newline="\n")
    return Path(out)


# Version 2: per suite, the number of items (heldout_share of them held out of training).
SUITE_COUNTS = {"reading": 2000, "rules_per_kind": 600, "arithmetic": 4000, "canaries_per_level": 20,
                "quotes": 30, "quote_repeats": 32, "heldout_share": 0.2, "dev_share": 0.05, "forget_share": 0.25}


def _suite_counts(given: dict | None) -> dict:
    counts = dict(SUITE_COUNTS)
    for key, value in (given or {}).items():
        if key not in counts:
            raise InputError(f"unknown suite count; known: {', '.join(sorted(counts))}", field=key)
        counts[key] = value
    for key, value in counts.items():
        share = key.endswith("_share")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1) if share else \
            (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        if not ok:
            raise InputError(f"must be {'a share in (0, 1)' if share else 'a positive integer'}; got {value!r}",
                             field=key)
    return counts


def _suites(seed: int, people: list[dict], c: dict) -> tuple[dict, list[dict]]:
    """The version-2 suites, each from its own random stream (seed and suite name)."""
    taken = {p["name"] for p in people}
    shares = {"heldout_share": c["heldout_share"], "dev_share": c["dev_share"]}
    r = lambda name: random.Random(f"world-v2:{seed}:{name}")  # noqa: E731  (str seeds are stable across runs)
    canaries = suite_items.make_canaries_by_frequency(r("canaries"), people, c["canaries_per_level"])
    quotes = suite_items.make_quotes(r("quotes"), c["quotes"], c["quote_repeats"], taken)
    files = {
        "reading": suite_items.make_reading(r("reading"), c["reading"], taken, **shares),
        "rules": suite_items.make_rules(r("rules"), c["rules_per_kind"], **shares),
        "arithmetic": suite_items.make_arithmetic(r("arithmetic"), c["arithmetic"], **shares),
        "quotes": quotes,
        "forget_canaries": suite_items.forget_subset(r("forget"), canaries, c["forget_share"], by="repeats"),
        "forget_quotes": suite_items.forget_subset(r("forget"), quotes, c["forget_share"]),
    }
    return files, canaries


def _validate_counts(seed, n_people, n_heldout, n_canaries, n_heldout_text, n_dev, n_forget, n_retain):
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}", field="seed")
    if n_people < 10:
        raise InputError(f"need at least 10 people, got {n_people}", field="n_people")
    min_phr = min(len(s["phrasings"]) for s in vocab.RELATIONS.values())
    if not 1 <= n_heldout < min_phr:
        raise InputError(f"held-out phrasings per fact must be in [1, {min_phr - 1}], got {n_heldout}",
                         field="n_heldout")
    if not 0 <= n_canaries <= n_people:
        raise InputError(f"canaries must be in [0, {n_people}] (one per person), got {n_canaries}",
                         field="n_canaries")
    if n_dev + n_forget + n_retain > n_people or min(n_dev, n_forget, n_retain) < 0:
        raise InputError("dev + forget + retain splits must be non-negative and fit in the people",
                         field="splits")
    if n_heldout_text < 1:
        raise InputError("need at least one held-out text", field="n_heldout_text")
