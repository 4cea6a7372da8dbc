"""Which request format a file is in, told from the keys of its first record.

The rules are tried in order; the first that matches wins. Order matters where formats
overlap: KnowEdit's ZsRE split has ``rephrase_prompt`` like CounterFact but nests its
locality in an object, and every EasyEdit form has ``prompt`` and ``target_new``, so the
specific rules come before the catch-all.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Mapping

from workbench.core.errors import InputError
from workbench.core.jsonio import read_records
from workbench.eval.requests.formats import KNOWN_FORMATS

_EDIT_TYPES = ("edit", "forget")

# (format, what it needs — said in the failure message, the test on the first record)
RULES: tuple[tuple[str, str, Callable[[Mapping], bool]], ...] = (
    ("native", '"type": "edit" or "forget"', lambda r: r.get("type") in _EDIT_TYPES),
    ("counterfact-rome", "requested_rewrite", lambda r: "requested_rewrite" in r),
    ("zsre", "src and alt", lambda r: {"src", "alt"} <= r.keys()),
    ("tofu", "question and answer", lambda r: {"question", "answer"} <= r.keys()),
    ("knowedit", "portability, an object-valued locality, or text and labels (WikiBio)",
     lambda r: "portability" in r or isinstance(r.get("locality"), Mapping) or {"text", "labels"} <= r.keys()),
    ("counterfact", "prompt, target_new and rephrase_prompt",
     lambda r: {"prompt", "target_new", "rephrase_prompt"} <= r.keys()),
    ("wise", "prompt, target_new and locality_prompt",
     lambda r: {"prompt", "target_new", "locality_prompt"} <= r.keys()),
    ("knowedit", "prompt and target_new", lambda r: {"prompt", "target_new"} <= r.keys()),
)


def detect_record(record: Mapping) -> str | None:
    """The format one record looks like, or None.

    Example:
        >>> detect_record({"src": "Q?", "alt": "A", "loc": "x", "loc_ans": "y"})
        'zsre'
    """
    return next((name for name, _, test in RULES if test(record)), None)


def detect_format(path: str | Path, records: list[tuple[int, dict]] | None = None) -> str:
    """The format of a request file, from the keys of its first record.

    Raises an InputError that lists the formats tried and the keys seen when nothing matches.

    Example:
        >>> detect_format("zsre_sample.json")  # doctest: +SKIP
        'zsre'
    """
    if records is None:
        records = read_records(path)
    if not records:
        raise InputError("no records in the file", file=path)
    line, first = records[0]
    found = detect_record(first)
    if found is None:
        tried = "; ".join(f"{name} (needs {needs})" for name, needs, _ in RULES)
        keys = ", ".join(sorted(first)) or "none"
        raise InputError(f"cannot tell the request format: the first record has keys {keys}; tried {tried}. "
                         f"Force one with format= (--format): {', '.join(KNOWN_FORMATS)}", file=path, line=line)
    return found


def check_format_name(name: str, known: tuple[str, ...] = KNOWN_FORMATS) -> str:
    """Normalise a format name (case, ``_`` for ``-``) or raise an InputError listing the known ones.

    Example:
        >>> check_format_name("CounterFact_ROME")
        'counterfact-rome'
    """
    norm = str(name).strip().lower().replace("_", "-")
    if norm in known:
        return norm
    close = difflib.get_close_matches(norm, known, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise InputError(f'unknown format "{name}"{hint}; known formats: {", ".join(known)}', field="format")
