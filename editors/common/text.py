"""Text helpers several editors share."""
from __future__ import annotations

import random


def scramble(subject: str, rng: random.Random) -> str:
    """The subject with each word's letters shuffled (a fake name of the same shape).

    Example:
        >>> len(scramble("Ada Lovelace", random.Random(0)))
        12
    """
    words = []
    for w in subject.split(" "):
        chars = list(w.lower())
        for _ in range(5):
            rng.shuffle(chars)
            if "".join(chars) != w.lower() or len(set(chars)) < 2:
                break
        s = "".join(chars)
        words.append(s[:1].upper() + s[1:] if w[:1].isupper() else s)
    return " ".join(words)
