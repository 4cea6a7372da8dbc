"""Errors meant for people: each names what was wrong and where."""
from __future__ import annotations


class WorkbenchError(Exception):
    """Base class for errors the CLI reports as a one-line message and a non-zero exit."""


class InputError(WorkbenchError):
    """Bad input: names the file, the line (1-based, when there is one) and the field.

    Example:
        >>> str(InputError("bad value", file="a.jsonl", line=3, field="prompt"))
        'a.jsonl:3: field "prompt": bad value'
    """

    def __init__(self, message: str, *, file=None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        if field is not None:
            where += f'field "{field}": '
        super().__init__(where + message)
