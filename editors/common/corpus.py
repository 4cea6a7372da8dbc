"""The generic text that editors take statistics from: one definition for the whole workbench.

ROME/MEMIT's key second moments, K-FAC's curvature factors and WISE's irrelevant pool all
want "text like what the model was trained on, without the things an edit or an unlearning
run is about". By default that is the bundled world's clean training text: one epoch of its
documents (biographies, filler, and in a version-2 world fresh reading, rules and arithmetic
items) with no canaries or quotes — memorized strings are not knowledge to protect, and an
unlearning run should not find them folded into an editor's statistics — and no filler
sentence that also occurs in the held-out text. A corpus file replaces it.

Example:
    >>> texts = default_corpus(); len(texts) > 1000
    True
    >>> texts == default_corpus()   # the same every time: seeded, and cached per process
    True
"""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from workbench.core.errors import InputError

from workbench.core.paths import WORLD
FILLER_DOCS = 300  # two-sentence filler documents, as in one training epoch of the world model


def default_corpus() -> list[str]:
    """The bundled world's clean training text (see the module docstring); a fresh list."""
    return list(_default_corpus())


@lru_cache(maxsize=1)
def _default_corpus() -> tuple[str, ...]:
    from workbench.world import World
    from workbench.world.corpus import epoch_documents, heldout_sentences
    if not (WORLD / "world.json").is_file():
        raise InputError("the bundled world is missing; give a corpus file (JSONL of {\"text\": ...} "
                         "lines, or .txt with one text a line)", field="corpus", file=WORLD)
    world = World.load(WORLD)
    return tuple(epoch_documents(world, random.Random(0), canary_repeats=0, filler_docs=FILLER_DOCS,
                                 banned_filler=heldout_sentences(world)))


def read_corpus(path: str | Path) -> list[str]:
    """The texts of a corpus file: the non-blank lines of a .txt, else the "text" strings of a JSONL.

    Example:
        >>> read_corpus("notes.txt")   # doctest: +SKIP
        ['first text', 'second text']
    """
    from workbench.core.jsonio import read_jsonl
    p = Path(path)
    if p.suffix == ".txt":
        if not p.is_file():
            raise InputError("corpus file not found", file=p)
        return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for lineno, row in read_jsonl(p):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError("expected a string", file=p, line=lineno, field="text")
        texts.append(row["text"])
    if not texts:
        raise InputError("no {\"text\": ...} lines", file=p, field="corpus")
    return texts


def load_corpus(path: str | Path | None) -> list[str]:
    """`default_corpus()` for None, else `read_corpus(path)`."""
    return default_corpus() if path is None else read_corpus(path)


def default_dev_suites(names: tuple[str, ...] = ("reading", "rules")) -> dict[str, list]:
    """The bundled version-2 world's dev items of each named skill suite, as probes: what an
    editor may tune on without touching what the benches report (dev items are never trained
    on and never scored). Empty for a world without those suites."""
    from workbench.eval.requests import Probe
    from workbench.world import World
    if not (WORLD / "world.json").is_file():
        return {}
    world = World.load(WORLD)
    return {n: [Probe(r["prompt"], r["answer"]) for r in world.suite_items(n, split="dev")]
            for n in names if n in world.suite_names()}


DEV_PROSE_SEED = 20261202  # its own stream: the training epochs' and the held-out text's are not touched


def default_dev_prose(n: int = 400) -> list[str]:
    """`n` two-sentence texts from the bundled world's general-prose grammar, none using a
    held-out sentence: text of the held-out prose's kind that an editor may tune a perplexity
    guard on without seeing the texts the benches report. Empty without a bundled world."""
    from workbench.world import World
    from workbench.world.corpus import filler_sentence, heldout_sentences
    if not (WORLD / "world.json").is_file():
        return []
    banned = heldout_sentences(World.load(WORLD))
    rng = random.Random(DEV_PROSE_SEED)
    out: list[str] = []
    while len(out) < n:
        a, b = filler_sentence(rng), filler_sentence(rng)
        if a not in banned and b not in banned:
            out.append(f"{a} {b}")
    return out
