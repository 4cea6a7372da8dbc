"""Loading request files: read, detect (or force) the format, convert, validate.

Every error is an ``InputError`` naming the file, the line (where the record starts, for a
JSON array) and the field; a record's 1-based index and the format are in the message, since
compact files put every record on line 1.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from workbench.core.errors import InputError
from workbench.core.jsonio import read_records, write_jsonl
from workbench.eval.requests.detect import check_format_name, detect_format, detect_record
from workbench.eval.requests.formats import FORMATS, Rec
from workbench.eval.requests.types import EditRequest, ForgetRequest, Origin, Probe

PROBE_FORMATS = ("native", "tofu")


@dataclass
class LoadResult:
    """What ``read_requests`` found: the requests that are valid and the errors of those that are not."""
    path: Path
    format: str
    requests: list = field(default_factory=list)
    invalid: list[InputError] = field(default_factory=list)


def read_requests(path: str | Path, format: str | None = None) -> LoadResult:
    """Read every record, keeping valid requests and collecting invalid ones' errors.

    Errors about the file as a whole (missing, malformed JSON, unknown or undetectable format)
    are raised; an error in one record is collected in ``invalid``. Use it where a caller
    wants to report or skip bad records; ``load_requests`` is the strict form.

    Example:
        >>> res = read_requests("tests/fixtures/requests/bad/empty_target.jsonl")
        >>> res.format, len(res.requests), res.invalid[0].field, res.invalid[0].line
        ('native', 1, 'target_new', 2)
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise InputError("no requests in the file", file=path)
    fmt = check_format_name(format) if format is not None else detect_format(path, records)
    spec = FORMATS[fmt]
    result = LoadResult(path, fmt)
    for index, (line, obj) in enumerate(records, start=1):
        origin = Origin(str(path), line, index, fmt, spec.fields)
        try:
            result.requests.append(spec.convert(Rec(obj), origin))
        except InputError as e:
            result.invalid.append(origin.error(e.reason, e.field))
    if format is not None and not result.requests:
        # Nothing fit the forced format: say what the file looks like, if we can tell.
        looks = detect_record(records[0][1])
        if looks and looks != fmt:
            first = result.invalid[0]
            result.invalid[0] = InputError(f'{first.reason}; the file looks like format "{looks}"',
                                           file=first.file, line=first.line, field=first.field)
    return result


def load_requests(path: str | Path, format: str | None = None, *, skip_invalid: bool = False,
                  skipped: list | None = None) -> list[EditRequest | ForgetRequest]:
    """Load a request file in any known format (detected unless ``format`` forces one).

    An invalid record raises its InputError (with a count of any others), unless
    ``skip_invalid``: then it is left out, with a warning, or appended to ``skipped`` (the
    InputErrors, each naming its file, line and field) when a list is given. A file with no
    valid request always raises.

    Example:
        >>> reqs = load_requests("tests/fixtures/requests/zsre.json")
        >>> reqs[0].target_new
        'Lake Corvan'
        >>> load_requests("data.json", format="csv")  # doctest: +SKIP
        InputError: field "format": unknown format "csv"; known formats: native, zsre, ...
    """
    result = read_requests(path, format)
    if result.invalid and (not skip_invalid or not result.requests):
        first, more = result.invalid[0], len(result.invalid) - 1
        if more:
            raise InputError(f"{first.reason}; and {more} more invalid record(s)",
                             file=first.file, line=first.line, field=first.field)
        raise first
    if result.invalid and skipped is not None:
        skipped.extend(result.invalid)
    elif result.invalid:
        warnings.warn(f"{path}: skipped {len(result.invalid)} invalid record(s); first: {result.invalid[0]}",
                      stacklevel=2)
    return result.requests


def load_probes(path: str | Path, format: str | None = None) -> list[Probe]:
    """Load (prompt, answer) probes, e.g. a retain set: native ``{prompt, answer, aliases?, group?}``
    lines or TOFU's ``{question, answer}`` records.

    Example:
        >>> load_probes("tests/fixtures/requests/tofu_retain.json")[0].prompt
        'What instrument does Oskar Lindqvale play?'
    """
    path = Path(path)
    records = read_records(path)
    if format is not None:
        fmt = check_format_name(format, PROBE_FORMATS)
    elif records and {"question", "answer"} <= records[0][1].keys():
        fmt = "tofu"
    else:
        fmt = "native"
    probes = []
    for index, (line, obj) in enumerate(records, start=1):
        origin = Origin(str(path), line, index, fmt)
        try:
            if fmt == "tofu":
                rec = Rec(obj)
                probes.append(Probe(rec.text("question"), rec.text("answer")))
            else:
                probes.append(Probe.from_dict(obj))
        except InputError as e:
            raise origin.error(e.reason, e.field) from None
    return probes


def dump_requests(path: str | Path, requests: Iterable[EditRequest | ForgetRequest]) -> None:
    """Write requests as native JSONL (one canonical line each); ``load_requests`` reads it back.

    Example:
        >>> dump_requests("out.jsonl", load_requests("zsre_sample.json", skip_invalid=True))  # doctest: +SKIP
    """
    write_jsonl(path, (r.to_dict() for r in requests))
