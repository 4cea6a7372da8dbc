"""Reading back the rows a bench wrote with `--json`: the checks every bench's `load_rows` starts
with, refusals naming the file, the row and the field."""
from __future__ import annotations

from pathlib import Path

from workbench.core.errors import InputError


def read_rows(path, bench: str, keys: tuple[str, ...]) -> list[dict]:
    """The rows in `path`: a non-empty JSON list of objects, each with a string under every one of
    `keys` (the row's name, e.g. its editor); the bench's own fields are the caller's to check.

    Example:
        >>> read_rows("bench/results/merge_v2.json", "merge", ("method",))[0]["method"]
        'sources (all on)'
    """
    from workbench.core.jsonio import read_json
    p = Path(path)
    rows = read_json(p)  # a missing file or bad JSON: named with its line
    if not isinstance(rows, list) or not rows:
        raise InputError(f"expected a non-empty list of rows from `workbench bench {bench} --json`", file=p)
    for i, r in enumerate(rows):
        for key in keys:
            if not isinstance(r, dict) or not isinstance(r.get(key), str):
                raise InputError(f"row {i}: expected a string", file=p, field=key)
    return rows
