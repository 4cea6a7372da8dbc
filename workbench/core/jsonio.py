"""Small JSON/JSONL helpers that report the file and line of anything malformed."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from workbench.core.errors import InputError


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # json keeps the last of two equal keys without a word; a record that says two things is refused
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


@contextlib.contextmanager
def _guard(path: Path, line: int | None = None):
    """Decoding faults that are not syntax errors, as an InputError naming the file and line: a
    key twice in one object, and nesting deeper than Python's recursion limit."""
    try:
        yield
    except _DuplicateKey as e:
        raise InputError(f"the key {e.key!r} appears twice in one object (which value is meant?)",
                         file=path, line=line, field=e.key) from None
    except RecursionError:
        raise InputError("JSON nested too deeply to read", file=path, line=line) from None


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise InputError("is a folder, not a file", file=path)
    if not path.is_file():
        raise InputError("file not found", file=path)


def loads(text: str, path: str | Path, line: int | None = None) -> Any:
    """One JSON document from `text` read out of `path` (e.g. a member of a zip): refused as in
    `read_json` — duplicate keys, too deep — naming the file; syntax errors raise JSONDecodeError."""
    with _guard(Path(path), line):
        return _DECODER.decode(text)


def read_json(path: str | Path) -> Any:
    """Read one JSON document; a syntax error names the file and line."""
    path = Path(path)
    _check_file(path)
    try:
        with _guard(path):
            return _DECODER.decode(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e.reason}", file=path) from None


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """Read a JSONL file as (line number, object) pairs; blank lines are skipped.

    Example:
        >>> rows = read_jsonl("data/world/people.jsonl")  # doctest: +SKIP
        >>> rows[0][0]
        1
    """
    path = Path(path)
    _check_file(path)
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e.reason}", file=path) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            with _guard(path, lineno):
                obj = _DECODER.decode(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=lineno)
        rows.append((lineno, obj))
    return rows


def dumps_line(obj: Any) -> str:
    """One canonical JSON line (sorted keys, no ASCII escaping) so output is byte-stable."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(dumps_line(row) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2) + "\n")


# JSON whitespace (RFC 8259): the only characters allowed between array items.
_JSON_WS = re.compile(r"[ \t\n\r]*")


def _read_text(path: Path) -> str:
    _check_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e.reason}", file=path) from None
    # Editors on Windows sometimes write a byte-order mark; JSON forbids it, people don't see it.
    return text[1:] if text.startswith("\ufeff") else text


def read_json_array(path: str | Path) -> list[tuple[int, Any]]:
    """Read a JSON array as (line where the item starts, item) pairs.

    Items are decoded one at a time with ``JSONDecoder.raw_decode`` so that each keeps the
    1-based line it starts on: an error about record 1234 of a pretty-printed file can then
    point at its line. CRLF and compact one-line files work the same way.

    Example:
        >>> items = read_json_array("tests/fixtures/requests/counterfact.json")
        >>> items[1][0]   # the second record starts on line 12
        12
    """
    path = Path(path)
    text = _read_text(path)
    decoder = _DECODER
    line, counted = 1, 0  # line number of offset `counted`; advanced incrementally (O(n) overall)

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    def fail(msg: str, offset: int):
        lineno = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        raise InputError(f"malformed JSON: {msg} (column {col})", file=path, line=lineno)

    i = _JSON_WS.match(text, 0).end()
    if i >= len(text) or text[i] != "[":
        fail("expected a JSON array ('[')", i)
    items: list[tuple[int, Any]] = []
    i = _JSON_WS.match(text, i + 1).end()
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            try:
                with _guard(path, line_at(i)):
                    value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                fail(e.msg, e.pos)
            items.append((line_at(i), value))
            i = _JSON_WS.match(text, end).end()
            if text.startswith(",", i):
                i = _JSON_WS.match(text, i + 1).end()
            elif text.startswith("]", i):
                i += 1
                break
            else:
                fail("expected ',' or ']' after an array item", i)
    i = _JSON_WS.match(text, i).end()
    if i < len(text):
        fail("extra data after the closing ']'", i)
    return items


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """Read a file of JSON objects, whatever the framing, as (line, object) pairs.

    Accepted: a JSON array of objects, JSONL (one object per line; also when the file is
    named ``.json``, as TOFU's files are), or a single JSON object. A ``.jsonl`` file is
    always read line by line.

    Example:
        >>> read_records("tests/fixtures/requests/tofu_retain.json")[0][0]  # JSONL named .json
        1
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl(path)
    text = _read_text(path)
    start = _JSON_WS.match(text, 0).end()
    if text.startswith("[", start):
        items = read_json_array(path)
        for lineno, item in items:
            if not isinstance(item, dict):
                raise InputError(f"expected a JSON object, got {type(item).__name__}", file=path, line=lineno)
        return items
    if text.startswith("{", start):
        try:
            with _guard(path, text.count("\n", 0, start) + 1):
                obj, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            obj, end = None, -1  # let the JSONL reader report the line
        if end >= 0 and not text[end:].strip():
            return [(text.count("\n", 0, start) + 1, obj)]  # a single (maybe pretty-printed) object
        return read_jsonl(path)
    if not text.strip():
        return []
    raise InputError("expected a JSON array of objects or JSON lines (the file starts with neither '[' nor '{')",
                     file=path, line=text.count("\n", 0, start) + 1)
