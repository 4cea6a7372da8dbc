"""The world's on-disk schema, its documentation, and a validating loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import InputError
from workbench.core.jsonio import read_json, read_jsonl

SCHEMA_VERSION = 1                       # what `workbench world generate` writes by default
SCHEMA_VERSIONS = (1, 2)                 # what loads; version 2 adds the skill suites
FILES = ("world.json", "people.jsonl", "canaries.jsonl", "heldout_text.jsonl")
SUITE_FILES = ("reading", "rules", "arithmetic", "quotes")   # version 2, each `<name>.jsonl`
SPLITS = ("train", "dev", "heldout")     # a suite item's split (dev: early stopping only)
SUITE_KEYS = {"reading": ("id", "split", "kind", "passage", "question", "prompt", "answer"),
              "rules": ("id", "split", "kind", "prompt", "answer"),
              "arithmetic": ("id", "split", "kind", "prompt", "answer"),
              "quotes": ("id", "author", "prefix", "suffix", "text", "repeats")}

SCHEMA_DOC = """\
# The generated world

Written by `workbench world generate --seed SEED`; the same seed gives byte-identical files.
Everything in it is fictional. JSON files use sorted keys; JSONL files hold one object a line.

## world.json
- `schema_version` (int), `seed` (int), `counts` (people, canaries, heldout_text,
  heldout_phrasings_per_fact).
- `relations`: relation name -> `values` (the values a person can take; none is a word-prefix
  of another) and `phrasings`: a list of `{id, kind, template}`. `kind` is `statement` or
  `question`; `template` is a prompt with `{name}`; the answer follows after one space.
- `splits`: lists of person ids. `dev`: people whose held-out phrasings are used for early
  stopping while training (reported separately); `forget` / `retain`: fixed people splits
  for unlearning benchmarks. The three are disjoint.

## people.jsonl
`{id, name, facts, heldout}`: `facts` maps relation -> value; `heldout` maps relation -> the
phrasing ids never used in training for this person (generality probes). Every phrasing is
trained for most people, so a held-out phrasing is new only in its combination with the person.

## canaries.jsonl
`{id, person, kind, prefix, secret, text}`: a random secret (`digits`: six digits; `words`:
four passphrase words) tied to a person by `prefix`. `text` = prefix + " " + secret + ".",
repeated in training so the model memorizes it verbatim.

## heldout_text.jsonl
`{id, text}`: neutral sentences from the world's filler grammar that never occur in training;
perplexity is measured on them.
"""

SCHEMA_DOC_V2 = SCHEMA_DOC.replace("# The generated world\n", "# The generated world (schema version 2)\n") + """
## Version 2: skill suites and memorized text by frequency
Written by `workbench world generate --version 2`. Each suite item has a `split`: `train`
items are in the training mix; `heldout` items (the reported scores) and `dev` items (early
stopping while training) never are, and no prompt occurs twice, so held-out scores measure a
rule, not recall. The answer follows the
prompt after one space, as for facts.

- `reading.jsonl` `{id, split, kind, relation, passage, question, prompt, answer}`: a passage
  about 2-4 people who are not in the world (fresh names every item; distinct values of the
  asked relation, so the other people are distractors), then a question about one of them;
  `prompt` = passage + " " + question (open-book reading). Passages and questions use one
  phrasing per relation that no closed-book fact uses ("X's place of birth: Y."): the skill is
  finding the person in the context, not paraphrase.
- `rules.jsonl` `{id, split, kind, prompt, answer}`: `boolean` ("evaluate : not ( true and
  false ) or false =" -> "true"; one to five operators), `compare` ("larger of 37 and 52 :" -> "52"), `copy` and `reverse`
  ("reverse : k r t =>" -> "t r k").
- `arithmetic.jsonl` `{id, split, kind, prompt, answer}`: "23 + 14 =" -> "37" and
  subtractions with non-negative results, operands below 100.
- `canaries.jsonl` rows also carry `repeats` (1, 2, 4, 8, 16 or 32): how many times the
  canary occurs in a whole training run (spread evenly over its epochs),
  `counts.canaries_per_level` of them at each count; `training.json` records `occurrences`,
  the copies each item was trained on before the kept checkpoint.
- `quotes.jsonl` `{id, author, prefix, suffix, text, repeats}`: longer passages (four
  sentences), `repeats` occurrences per run likewise; recitation is scored from `prefix` to
  `suffix`.
- The stored `train` items are a sample of the training distribution; training draws fresh
  items from the same generators every epoch (never a `dev` or `heldout` prompt).
- `world.json` `splits` also holds `forget_canaries` and `forget_quotes`: the items the
  benchmark forget sets remove (a share of each repeat count), and `counts` the suite sizes.
"""


@dataclass(frozen=True)
class FactQuery:
    """One query of a world fact, with where it comes from (person, relation, phrasing); scored like
    a request probe: `prompt` then " " + `answer` (`workbench.eval.requests.Probe` has the same two)."""
    person: str
    relation: str
    phrasing: int
    kind: str
    prompt: str
    answer: str
    heldout: bool


class World:
    """A loaded, validated world folder.

    Example:
        >>> w = World.load("data/world")  # doctest: +SKIP
        >>> len(w.people) >= 1000
        True
    """

    def __init__(self, root: Path, meta: dict, people: list[dict], canaries: list[dict], heldout_text: list[dict],
                 suites: dict[str, list[dict]] | None = None):
        self.root, self.meta, self.people = root, meta, people
        self.canaries, self.heldout_text = canaries, heldout_text
        self.version: int = meta["schema_version"]
        self.suites: dict[str, list[dict]] = suites or {}  # version 2: reading, rules, arithmetic, quotes
        self.relations: dict = meta["relations"]
        self.splits: dict = meta["splits"]
        self.by_id = {p["id"]: p for p in people}

    @classmethod
    def load(cls, root: str | Path) -> "World":
        root = Path(root)
        if not root.is_dir():
            raise InputError("world folder not found; run `workbench world generate` first", file=root)
        for name in FILES:
            if not (root / name).is_file():
                raise InputError(f"world folder is incomplete: {name} is missing", file=root)
        meta = read_json(root / "world.json")
        _check_meta(root / "world.json", meta)
        people = _check_people(root / "people.jsonl", meta)
        v2 = meta["schema_version"] == 2
        canaries = _check_rows(root / "canaries.jsonl",
                               ("id", "person", "kind", "prefix", "secret", "text") + (("repeats",) if v2 else ()))
        heldout = _check_rows(root / "heldout_text.jsonl", ("id", "text"))
        suites = {}
        for name in SUITE_FILES if v2 else ():
            path = root / f"{name}.jsonl"
            if not path.is_file():
                raise InputError(f"world folder is incomplete: {name}.jsonl is missing (schema version 2)", file=root)
            suites[name] = _check_rows(path, SUITE_KEYS[name])
            for lineno, row in enumerate(suites[name], 1):
                if "split" in SUITE_KEYS[name] and row["split"] not in SPLITS:
                    raise InputError(f"must be one of {', '.join(SPLITS)}; got {row['split']!r}", file=path,
                                     line=lineno, field="split")
        return cls(root, meta, people, canaries, heldout, suites)

    def template(self, relation: str, phrasing: int) -> tuple[str, str]:
        ph = self.relations[relation]["phrasings"][phrasing]
        return ph["kind"], ph["template"]

    def probe(self, person: dict, relation: str, phrasing: int) -> FactQuery:
        kind, template = self.template(relation, phrasing)
        return FactQuery(person["id"], relation, phrasing, kind, template.format(name=person["name"]),
                     person["facts"][relation], phrasing in person["heldout"][relation])

    def probes(self, *, heldout: bool | None = None, people: list[str] | None = None) -> list[FactQuery]:
        """All (person, relation, phrasing) probes, optionally only held-out or only trained ones."""
        chosen = self.people if people is None else [self.by_id[i] for i in people]
        out = []
        for p in chosen:
            for rel, spec in self.relations.items():
                for ph in range(len(spec["phrasings"])):
                    pr = self.probe(p, rel, ph)
                    if heldout is None or pr.heldout == heldout:
                        out.append(pr)
        return out

    def suite_names(self) -> list[str]:
        """What `suite_items` can list: closed-book facts, memorized canaries, and in a
        version-2 world its skill suites and quotes."""
        return ["facts", "canaries"] + [n for n in ("reading", "rules", "arithmetic", "quotes") if n in self.suites]

    def suite_items(self, suite: str, *, split: str | None = None) -> list[dict]:
        """Every item of one suite as `{id, split, prompt, answer}`, each scored as the card scores
        it (`answer` after `prompt` and a space; the card's sets leave out the dev and forget-split
        people and the canaries and quotes marked for forgetting). Facts: one item per trained
        ("train") or held-out ("heldout") phrasing; canaries and quotes: prefix and secret ("memorized").

        Example:
            >>> World.load("data/world").suite_items("rules", split="heldout")[0]["answer"]  # doctest: +SKIP
            'true'
        """
        if suite not in self.suite_names():
            raise InputError(f"unknown suite {suite!r}; this world has {', '.join(self.suite_names())}",
                             field="suite")
        if suite == "facts":
            items = [{"id": f"{q.person}/{q.relation}/{q.phrasing}", "split": "heldout" if q.heldout else "train",
                      "prompt": q.prompt, "answer": q.answer} for q in self.probes()]
        elif suite == "canaries":
            items = [{"id": c["id"], "split": "memorized", "prompt": c["prefix"], "answer": c["secret"]}
                     for c in self.canaries]
        elif suite == "quotes":
            items = [{"id": q["id"], "split": "memorized", "prompt": q["prefix"], "answer": q["suffix"]}
                     for q in self.suites["quotes"]]
        else:
            items = [{k: r[k] for k in ("id", "split", "prompt", "answer")} for r in self.suites[suite]]
        return items if split is None else [i for i in items if i["split"] == split]


def _check_meta(path: Path, meta) -> None:
    if not isinstance(meta, dict):
        raise InputError("expected a JSON object", file=path)
    for key in ("schema_version", "seed", "relations", "splits"):
        if key not in meta:
            raise InputError("missing", file=path, field=key)
    if meta["schema_version"] not in SCHEMA_VERSIONS:
        raise InputError(f"schema version {meta['schema_version']!r} is not one of "
                         f"{', '.join(map(str, SCHEMA_VERSIONS))}", file=path, field="schema_version")
    for rel, spec in meta["relations"].items():
        if not spec.get("values") or len(spec.get("phrasings", [])) < 2:
            raise InputError("needs values and at least two phrasings", file=path, field=f"relations.{rel}")
        for ph in spec["phrasings"]:
            if "{name}" not in ph.get("template", ""):
                raise InputError("template lacks {name}", file=path, field=f"relations.{rel}.phrasings")


def _check_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    for lineno, row in read_jsonl(path):
        for key in required:
            if key not in row:
                raise InputError("missing", file=path, line=lineno, field=key)
        rows.append(row)
    return rows


def _check_people(path: Path, meta: dict) -> list[dict]:
    rels = meta["relations"]
    people = []
    for lineno, row in read_jsonl(path):
        for key in ("id", "name", "facts", "heldout"):
            if key not in row:
                raise InputError("missing", file=path, line=lineno, field=key)
        for rel, spec in rels.items():
            if row["facts"].get(rel) not in spec["values"]:
                raise InputError(f"value {row['facts'].get(rel)!r} is not one of the relation's values",
                                 file=path, line=lineno, field=f"facts.{rel}")
            held = row["heldout"].get(rel)
            if not isinstance(held, list) or any(not isinstance(i, int) or not 0 <= i < len(spec["phrasings"]) for i in held):
                raise InputError("expected a list of phrasing ids", file=path, line=lineno, field=f"heldout.{rel}")
        people.append(row)
    if not people:
        raise InputError("no people", file=path)
    return people
