"""The skill suites of a version-2 world: what a model should learn as *rules* and keep when
memorized text is removed (open-book reading, boolean and list rules, arithmetic), and
memorized text by frequency (canaries repeated 1–32 times, longer quotes).

Each generator takes its own `random.Random` (seeded from the world seed and the suite's name,
so one suite's count never shifts another's items) and returns JSONL rows. Items carry a
`split`: "train" items are in the training mix; "heldout" items (reported) and "dev" items
(early stopping) never are, and no item's prompt equals another's, so a held-out score
measures the rule, not recall.

Example:
    >>> import random
    >>> row = make_arithmetic(random.Random(0), 5, heldout_share=0.2)[0]
    >>> sorted(row)
    ['answer', 'id', 'kind', 'prompt', 'split']
"""
from __future__ import annotations

import random

from workbench.world import vocab

REPEAT_LEVELS = (1, 2, 4, 8, 16, 32)   # the canaries' frequency axis (Merullo et al.'s recitation vs count)
RULE_KINDS = ("boolean", "compare", "copy", "reverse")
LETTERS = "bcdfghjklmnpqrstvwxz"       # list items for copy/reverse: single tokens in a byte-level BPE


def _split_ids(rng: random.Random, n: int, heldout_share: float, dev_share: float = 0.05) -> list[str]:
    """"heldout" (reported), "dev" (early stopping while training; never reported) and "train"."""
    n_held = max(1, round(n * heldout_share)) if n > 2 and heldout_share > 0 else 0
    n_dev = max(1, round(n * dev_share)) if n > 2 and dev_share > 0 else 0
    order = rng.sample(range(n), n_held + n_dev)
    held, dev = set(order[:n_held]), set(order[n_held:])
    return ["heldout" if i in held else "dev" if i in dev else "train" for i in range(n)]


def _unique(rng: random.Random, n: int, make, what: str, tries: int = 50) -> list[tuple[str, str]]:
    """`n` distinct (prompt, answer) pairs from `make(rng)`; distinct prompts keep train and
    held-out items apart."""
    out, seen = [], set()
    budget = n * tries
    while len(out) < n:
        budget -= 1
        if budget < 0:
            raise ValueError(f"cannot draw {n} distinct {what} items; lower the count")
        prompt, answer = make(rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


# ---------------------------------------------------------------------------- open-book reading

def make_reading(rng: random.Random, n: int, taken_names: set[str], *, heldout_share: float = 0.2, dev_share: float = 0.05) -> list[dict]:
    """Passages about 2–4 people who are *not* in the world (fresh names every item), one or two
    facts each, then a question about one of them: in-context retrieval. The other people in
    the passage are distractors with other values of the same relation where possible."""
    from workbench.world.generate import make_names
    names = iter(n_ for n_ in make_names(rng, n * 4 + len(taken_names)) if n_ not in taken_names)
    rels = list(vocab.RELATIONS)
    rows = []
    for i, split in enumerate(_split_ids(rng, n, heldout_share, dev_share)):
        people = [next(names) for _ in range(rng.randint(2, 4))]
        asked_rel = rng.choice(rels)
        values = rng.sample(vocab.RELATIONS[asked_rel]["values"], len(people))  # distinct: no ambiguous answer
        sentences = []
        for person, value in zip(people, values):
            sentences.append(_statement(rng, asked_rel, person, value))
            if rng.random() < 0.5:  # a second, unrelated fact about the same person
                other = rng.choice([r for r in rels if r != asked_rel])
                sentences.append(_statement(rng, other, person, rng.choice(vocab.RELATIONS[other]["values"])))
        rng.shuffle(sentences)
        target = rng.randrange(len(people))
        # Marked as open-book: a bare question is a closed-book fact query, whose learned habit
        # (answer from memory) competes with reading the passage.
        question = READING_QUESTIONS[asked_rel].format(name=people[target])
        passage = " ".join(sentences)
        rows.append({"id": f"r{i:04d}", "split": split, "kind": "reading", "relation": asked_rel,
                     "passage": passage, "question": question, "prompt": f"{passage} {question}",
                     "answer": values[target]})
    return rows


# Passages have their own phrasing, used by no closed-book fact: when they used a fact phrasing,
# thousands of passage sentences pairing fresh names with random values taught the model that
# this phrasing's value is not recalled; world-4's model recalled facts at 0.30 in that phrasing
# and 0.99 in the other train phrasings.
READING_STATEMENTS = {
    "birth_city": "{name}'s place of birth: {value}.",
    "employer": "{name}'s workplace: {value}.",
    "profession": "{name}'s line of work: {value}.",
    "citizenship": "{name}'s passport: {value}.",
    "instrument": "{name}'s instrument: the {value}.",
    "pet": "{name}'s pet: {value}.",
}
READING_QUESTIONS = {
    "birth_city": "Q: In the passage, what is {name}'s place of birth? A:",
    "employer": "Q: In the passage, what is {name}'s workplace? A:",
    "profession": "Q: In the passage, what is {name}'s line of work? A:",
    "citizenship": "Q: In the passage, what is {name}'s passport? A:",
    "instrument": "Q: In the passage, what is {name}'s instrument? A: the",
    "pet": "Q: In the passage, what is {name}'s pet? A:",
}


def _statement(rng: random.Random, relation: str, person: str, value: str) -> str:
    return READING_STATEMENTS[relation].format(name=person, value=value)


# ---------------------------------------------------------------------------- rules

def _boolean(rng: random.Random, depth: int = 2) -> tuple[str, bool]:
    if depth == 0 or rng.random() < 0.3:
        v = rng.random() < 0.5
        return ("true" if v else "false"), v
    op = rng.choice(("and", "or", "not"))
    if op == "not":
        s, v = _boolean(rng, depth - 1)
        return (f"not ( {s} )" if " " in s else f"not {s}"), not v  # `not` binds tighter than and/or
    (a, va), (b, vb) = _boolean(rng, depth - 1), _boolean(rng, depth - 1)
    a = f"( {a} )" if " " in a else a
    b = f"( {b} )" if " " in b else b
    return f"{a} {op} {b}", (va and vb) if op == "and" else (va or vb)


def _operators(expr: str) -> int:
    return sum(w in ("and", "or", "not") for w in expr.split())


def _rule_item(kind: str):
    def make(rng: random.Random) -> tuple[str, str]:
        if kind == "boolean":
            # A lead word, so every "true"/"false"/"not" is the same space-led token (a document's
            # first word is split without its space: "not" as "no" "t"). The operator count (1-5)
            # is drawn uniformly: the depth-3 generator alone gives mostly four or five, and
            # world-5's model, trained on those, answered "not true =" with "true" (0.77 overall).
            # Short expressions are few (ten with one operator), so after de-duplication they
            # stay rarer than long ones.
            ops = rng.randint(1, 5)
            expr, value = _boolean(rng, 3)
            while _operators(expr) != ops:
                expr, value = _boolean(rng, 3)
            return f"evaluate : {expr} =", "true" if value else "false"
        if kind == "compare":
            a, b = rng.sample(range(100), 2)
            return f"larger of {a} and {b} :", str(max(a, b))
        items = [rng.choice(LETTERS) for _ in range(rng.randint(3, 6))]
        answer = items if kind == "copy" else items[::-1]
        return f"{kind} : {' '.join(items)} =>", " ".join(answer)
    return make


def make_rules(rng: random.Random, n_per_kind: int, *, heldout_share: float = 0.2, dev_share: float = 0.05,
               weights: dict[str, int] | None = None) -> list[dict]:
    """Boolean expressions ("evaluate : not ( true and false ) or false =" -> "true"), comparisons
    ("larger of 37 and 52 :" -> "52"), copying and reversing short letter lists; `weights`
    multiplies one kind's count (training draws more of the kind that is slowest to learn)."""
    rows = []
    for kind in RULE_KINDS:
        n = n_per_kind * (weights or {}).get(kind, 1)
        pairs = _unique(rng, n, _rule_item(kind), f"rules/{kind}")
        for (prompt, answer), split in zip(pairs, _split_ids(rng, n, heldout_share, dev_share)):
            rows.append({"id": f"u{len(rows):04d}", "split": split, "kind": kind, "prompt": prompt, "answer": answer})
    return rows


# ---------------------------------------------------------------------------- arithmetic

def _sum_item(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(100), rng.randrange(100)
    if rng.random() < 0.5:
        return f"{a} + {b} =", str(a + b)
    a, b = max(a, b), min(a, b)  # no negative results: the rule, not a sign convention
    return f"{a} - {b} =", str(a - b)


def make_arithmetic(rng: random.Random, n: int, *, heldout_share: float = 0.2, dev_share: float = 0.05) -> list[dict]:
    """Additions and subtractions of operands below 100; held-out operand pairs never trained."""
    pairs = _unique(rng, n, _sum_item, "arithmetic")
    return [{"id": f"a{i:04d}", "split": split, "kind": "arithmetic", "prompt": p, "answer": a}
            for i, ((p, a), split) in enumerate(zip(pairs, _split_ids(rng, n, heldout_share, dev_share)))]


# ---------------------------------------------------------------------------- memorized text

def make_canaries_by_frequency(rng: random.Random, people: list[dict], per_level: int) -> list[dict]:
    """`per_level` canaries at each repeat count of REPEAT_LEVELS, each tied to its own person:
    a random secret (six digits or four passphrase words) after a prefix naming the person."""
    from workbench.world.generate import canary_row
    owners = rng.sample(range(len(people)), per_level * len(REPEAT_LEVELS))
    return [{**canary_row(rng, j, people[owner]), "repeats": REPEAT_LEVELS[j // per_level]}
            for j, owner in enumerate(owners)]


def make_quotes(rng: random.Random, n: int, repeats: int, taken_names: set[str]) -> list[dict]:
    """Longer memorized passages: a title naming an invented author, then four sentences of the
    filler grammar each attributed to invented words, so no rule predicts them; `prefix` is the
    title and first sentence, `suffix` the rest (what recitation must not reproduce)."""
    from workbench.world.generate import filler_sentence, make_names
    authors = [a for a in make_names(rng, n + len(taken_names)) if a not in taken_names][:n]
    words = sorted({w.lower() for a in make_names(rng, 60) for w in a.split()})

    def sentence() -> str:
        s = filler_sentence(rng)
        return f"{rng.choice(words).capitalize()} {rng.choice(words)} wrote that {s[0].lower()}{s[1:]}"

    rows = []
    for i, author in enumerate(authors):
        sentences = [sentence() for _ in range(4)]
        prefix = f"From the notebook of {author}: {sentences[0]}"
        suffix = " ".join(sentences[1:])
        rows.append({"id": f"q{i:03d}", "author": author, "prefix": prefix, "suffix": suffix,
                     "text": f"{prefix} {suffix}", "repeats": repeats})
    return rows


def forget_subset(rng: random.Random, rows: list[dict], share: float, by: str | None = None) -> list[str]:
    """Ids of a `share` of `rows` marked for forgetting (within each value of `by`, so every
    repeat level of the canaries has forget items)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get(by) if by else None, []).append(r["id"])
    out = []
    for key in sorted(groups, key=str):
        ids = groups[key]
        out += rng.sample(ids, max(1, round(len(ids) * share))) if ids else []
    return sorted(out)
