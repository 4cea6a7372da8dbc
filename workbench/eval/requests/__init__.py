"""Requests: what to change in a model, read from the native JSONL or the public formats.

Example:
    >>> from workbench.eval.requests import load_requests, EditRequest
    >>> reqs = load_requests("tests/fixtures/requests/counterfact.json")  # format detected
    >>> isinstance(reqs[0], EditRequest), reqs[0].subject
    (True, 'Ilse Marrow')

The native schema is documented in ``workbench.eval.requests.types``; the public formats and how
their fields map in ``workbench.eval.requests.formats``.
"""
from workbench.eval.requests.detect import check_format_name, detect_format, detect_record
from workbench.eval.requests.formats import FORMATS, KNOWN_FORMATS
from workbench.eval.requests.load import PROBE_FORMATS, LoadResult, dump_requests, load_probes, load_requests, read_requests
from workbench.eval.requests.types import (FORGET_KINDS, EditRequest, ForgetRequest, Origin, Probe, Request, request_from_dict,
                    with_retain)

__all__ = [
    "EditRequest", "ForgetRequest", "Probe", "Origin", "Request", "FORGET_KINDS",
    "KNOWN_FORMATS", "PROBE_FORMATS", "FORMATS", "LoadResult",
    "load_requests", "read_requests", "load_probes", "dump_requests", "with_retain",
    "request_from_dict", "detect_format", "detect_record", "check_format_name",
]
