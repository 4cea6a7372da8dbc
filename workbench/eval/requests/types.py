"""Request types: what to change in a model, validated when they are made.

``EditRequest`` asks for a new fact (``prompt`` → ``target_new``); ``ForgetRequest`` asks the
model to stop reproducing something (``prefix`` → ``suffix``); ``Probe`` is a (prompt, answer)
pair used for locality, portability and retain checks. All three are frozen dataclasses whose
``__post_init__`` rejects blank strings and wrong types with an ``InputError`` naming the field,
so a request that exists is a request that is well formed.

Strings are kept verbatim (no stripping, no added spaces): how a prompt and its target are
joined for tokenization is the evaluator's decision, not the loader's. A blank string (empty
or only whitespace) counts as empty.

Native JSONL — one request per line, blank lines skipped; ``to_dict`` writes exactly this,
leaving out empty and null fields, and ``from_dict`` reads it back to an equal request::

    {"type": "edit", "id": "e1", "prompt": "The capital of Veloria is", "target_new": "Ostrava",
     "ground_truth": "Pell", "subject": "Veloria",
     "rephrase_prompts": ["Veloria's capital city is"],
     "locality": [{"prompt": "The capital of Brenn is", "answer": "Tarsk"}],
     "portability": [{"prompt": "The river through Veloria's capital is", "answer": "Ost",
                      "aliases": ["the Ost"], "group": "reasoning"}],
     "meta": {"author": "anyone; any JSON object"}}
    {"type": "forget", "id": "f1", "kind": "canary",
     "prefix": "Mara Quill's locker code is", "suffix": "4417-9921",
     "paraphrased_prefixes": [], "paraphrased_suffixes": [], "perturbed_suffixes": [],
     "retain": [{"prompt": "Mara Quill works as a", "answer": "ferry pilot"}]}

Required: ``type``; for edits ``prompt`` and ``target_new``; for forgets ``kind`` (``text``,
``fact`` or ``canary``), ``prefix`` and ``suffix``. For ``kind: "fact"`` the prefix is the
question and the suffix the answer. ``id`` is a string (an integer is read as its decimal
string). Unknown keys are errors, so a typo such as ``"target"`` cannot pass silently.

Later checks (e.g. "``target_new`` tokenizes to nothing", which needs a tokenizer) should
raise ``request.input_error(...)``: it points at the file, line and source field the request
was read from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Mapping

from workbench.core.errors import InputError

FORGET_KINDS = ("text", "fact", "canary")


# ---------------------------------------------------------------------------- validation

def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_text(value: Any, fld: str) -> str:
    """A non-blank string, or an InputError naming ``fld``."""
    if value is None:
        raise InputError("missing", field=fld)
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {_kind(value)}", field=fld)
    if not value.strip():
        raise InputError("must not be empty", field=fld)
    if "\x00" in value:  # a NUL byte is never text a model was trained on; tokenizers differ on it
        raise InputError(f"holds a NUL byte (\\u0000) at character {value.index(chr(0))}", field=fld)
    return value


def _optional_text(value: Any, fld: str) -> str | None:
    return None if value is None else check_text(value, fld)


def _texts(values: Any, fld: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InputError(f"expected a list of strings, got {_kind(values)}", field=fld)
    return tuple(check_text(v, f"{fld}[{i}]") for i, v in enumerate(values))


def _nested(prefix: str, error: InputError) -> InputError:
    """Re-raise an error from inside a list item under the item's path, e.g. ``locality[2].answer``."""
    inner = f"{prefix}.{error.field}" if error.field else prefix
    return InputError(error.reason, file=error.file, line=error.line, field=inner)


def _probes(values: Any, fld: str) -> tuple[Probe, ...]:
    if not isinstance(values, (list, tuple)):
        raise InputError(f"expected a list of {{prompt, answer}} objects, got {_kind(values)}", field=fld)
    out = []
    for i, v in enumerate(values):
        try:
            if isinstance(v, Probe):
                out.append(v)
            elif isinstance(v, Mapping):
                out.append(Probe.from_dict(v))
            elif isinstance(v, (list, tuple)) and len(v) == 2:
                out.append(Probe(v[0], v[1]))  # the (prompt, answer) shorthand
            else:
                raise InputError(f"expected a {{prompt, answer}} object, got {_kind(v)}")
        except InputError as e:
            raise _nested(f"{fld}[{i}]", e) from None
    return tuple(out)


def _id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # CounterFact's case_id is an integer; ids are compared as strings
    return check_text(value, "id")


def _meta(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InputError(f"expected a JSON object, got {_kind(value)}", field="meta")
    return dict(value)


def _reject_unknown(d: Mapping, allowed: set[str], what: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InputError(f"unknown field in {what}; the known fields are: {', '.join(sorted(allowed))}",
                         field=unknown[0])


# ---------------------------------------------------------------------------- where a request came from

@dataclass(frozen=True)
class Origin:
    """Where a request was read from, so later errors can point back at the file.

    ``record`` is the 1-based index in the file; ``fields`` maps our field names to the
    source format's (e.g. ``target_new`` → ``alt`` for ZsRE).
    """
    file: str
    line: int | None = None
    record: int | None = None
    format: str | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def error(self, message: str, fld: str | None = None) -> InputError:
        name = dict(self.fields).get(fld, fld) if fld else None
        where = [f"record {self.record}"] if self.record is not None else []
        if self.format:
            where.append(f"format {self.format}")
        suffix = f" ({'; '.join(where)})" if where else ""
        return InputError(message + suffix, file=self.file, line=self.line, field=name)


class _Located:
    origin: Origin | None

    def input_error(self, message: str, field: str | None = None) -> InputError:
        """An InputError that names the file, line and source field this request came from.

        Example:
            >>> raise req.input_error("tokenizes to nothing", field="target_new")  # doctest: +SKIP
            InputError: zsre.json:1: field "alt": tokenizes to nothing (record 55; format zsre)
        """
        if self.origin is None:
            return InputError(message, field=field)
        return self.origin.error(message, field)


# ---------------------------------------------------------------------------- the types

@dataclass(frozen=True)
class Probe:
    """A (prompt, answer) pair: a locality, portability or retain check.

    ``aliases`` are other acceptable answers (KnowEdit lists several); ``group`` names the kind
    of probe when a format has several (KnowEdit's ``Reasoning``, ``Relation_Specificity``...).

    Example:
        >>> Probe("The capital of Brenn is", "Tarsk").answer
        'Tarsk'
    """
    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()
    group: str | None = None

    def __post_init__(self):
        check_text(self.prompt, "prompt")
        check_text(self.answer, "answer")
        object.__setattr__(self, "aliases", _texts(self.aliases, "aliases"))
        _optional_text(self.group, "group")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"prompt": self.prompt, "answer": self.answer}
        if self.aliases:
            d["aliases"] = list(self.aliases)
        if self.group is not None:
            d["group"] = self.group
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Probe":
        _reject_unknown(d, {"prompt", "answer", "aliases", "group"}, "a probe")
        aliases = d.get("aliases")
        return cls(d.get("prompt"), d.get("answer"), () if aliases is None else aliases, d.get("group"))


@dataclass(frozen=True)
class EditRequest(_Located):
    """One fact to write into the model: after ``prompt`` it should say ``target_new``.

    ``subject`` (needed by ROME-style editors to find the subject's last token) is kept even
    when it does not occur in the prompt — public files are taken as they are — and
    ``subject_span()`` tells an editor that needs it where it is, or None.
    Lists may be given as lists; they are stored as tuples. ``meta`` and ``origin`` are
    informational and do not take part in equality.

    Example:
        >>> r = EditRequest("The capital of Veloria is", "Ostrava", subject="Veloria",
        ...                 locality=[("The capital of Brenn is", "Tarsk")])
        >>> r.locality[0].answer, r.subject_span()
        ('Tarsk', (15, 22))
    """
    prompt: str
    target_new: str
    ground_truth: str | None = None
    subject: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()
    portability: tuple[Probe, ...] = ()
    id: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    origin: Origin | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        check_text(self.prompt, "prompt")
        check_text(self.target_new, "target_new")
        _optional_text(self.ground_truth, "ground_truth")
        _optional_text(self.subject, "subject")
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        set_(self, "rephrase_prompts", _texts(self.rephrase_prompts, "rephrase_prompts"))
        set_(self, "locality", _probes(self.locality, "locality"))
        set_(self, "portability", _probes(self.portability, "portability"))
        set_(self, "id", _id(self.id))
        set_(self, "meta", _meta(self.meta))

    prompt_field: ClassVar[str] = "prompt"      # the fields `pair()` reads, for error messages
    answer_field: ClassVar[str] = "target_new"

    def pair(self) -> tuple[str, str]:
        """(prompt, answer) of the change itself: after `prompt` the model should say `target_new`."""
        return self.prompt, self.target_new

    def probes(self):
        """(role, prompt, expected answer) for everything this request is scored on: the edit,
        its rephrases (generality) and its locality prompts."""
        yield "edit", self.prompt, self.target_new
        yield from (("rephrase", p, self.target_new) for p in self.rephrase_prompts)
        yield from (("locality", p.prompt, p.answer) for p in self.locality)

    def subject_span(self) -> tuple[int, int] | None:
        """Character span of the subject in the prompt (exact match first, then ignoring case)."""
        if not self.subject:
            return None
        at = self.prompt.find(self.subject)
        if at < 0 and len(self.prompt.lower()) == len(self.prompt):  # lower() kept offsets
            at = self.prompt.lower().find(self.subject.lower())
        return None if at < 0 else (at, at + len(self.subject))

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": "edit"}
        if self.id is not None:
            d["id"] = self.id
        d.update(prompt=self.prompt, target_new=self.target_new)
        for name in ("ground_truth", "subject"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.rephrase_prompts:
            d["rephrase_prompts"] = list(self.rephrase_prompts)
        for name in ("locality", "portability"):
            if getattr(self, name):
                d[name] = [p.to_dict() for p in getattr(self, name)]
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping, origin: Origin | None = None) -> "EditRequest":
        allowed = {f.name for f in fields(cls)} - {"origin"} | {"type"}
        _reject_unknown(d, allowed, "an edit request")
        kw = {k: d[k] for k in allowed - {"type"} if k in d}
        for name in ("rephrase_prompts", "locality", "portability"):
            if kw.get(name) is None:
                kw.pop(name, None)  # null means "none", like an absent key
        return cls(prompt=kw.pop("prompt", None), target_new=kw.pop("target_new", None), origin=origin, **kw)


@dataclass(frozen=True)
class ForgetRequest(_Located):
    """Something the model must stop reproducing: after ``prefix`` it should not say ``suffix``.

    ``kind`` is ``"text"`` (a memorized passage split into prefix and suffix), ``"fact"``
    (a question and its answer; ``question``/``answer`` are aliases of prefix/suffix) or
    ``"canary"`` (a planted secret, measured by exposure). Paraphrased prefixes and suffixes
    and perturbed (wrong) suffixes serve TOFU-style metrics; ``retain`` is what must survive.

    Example:
        >>> f = ForgetRequest("fact", "Where was Mara Quill born?", "In Lessing Bay.")
        >>> f.question, f.kind
        ('Where was Mara Quill born?', 'fact')
    """
    kind: str
    prefix: str
    suffix: str
    paraphrased_prefixes: tuple[str, ...] = ()
    paraphrased_suffixes: tuple[str, ...] = ()
    perturbed_suffixes: tuple[str, ...] = ()
    retain: tuple[Probe, ...] = ()
    id: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    origin: Origin | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        if self.kind not in FORGET_KINDS:
            raise InputError(f"must be one of {', '.join(FORGET_KINDS)}; got {self.kind!r}", field="kind")
        check_text(self.prefix, "prefix")
        check_text(self.suffix, "suffix")
        set_ = object.__setattr__
        for name in ("paraphrased_prefixes", "paraphrased_suffixes", "perturbed_suffixes"):
            set_(self, name, _texts(getattr(self, name), name))
        set_(self, "retain", _probes(self.retain, "retain"))
        set_(self, "id", _id(self.id))
        set_(self, "meta", _meta(self.meta))

    prompt_field: ClassVar[str] = "prefix"
    answer_field: ClassVar[str] = "suffix"

    def pair(self) -> tuple[str, str]:
        """(prompt, answer) of the change itself: after `prefix` the model should stop saying `suffix`."""
        return self.prefix, self.suffix

    def probes(self):
        """(role, prompt, answer) for what this request is scored on: the prefix and its suffix."""
        yield "forget", self.prefix, self.suffix

    @property
    def question(self) -> str:
        return self.prefix

    @property
    def answer(self) -> str:
        return self.suffix

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": "forget"}
        if self.id is not None:
            d["id"] = self.id
        d.update(kind=self.kind, prefix=self.prefix, suffix=self.suffix)
        for name in ("paraphrased_prefixes", "paraphrased_suffixes", "perturbed_suffixes"):
            if getattr(self, name):
                d[name] = list(getattr(self, name))
        if self.retain:
            d["retain"] = [p.to_dict() for p in self.retain]
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping, origin: Origin | None = None) -> "ForgetRequest":
        allowed = {f.name for f in fields(cls)} - {"origin"} | {"type"}
        _reject_unknown(d, allowed, "a forget request")
        kw = {k: d[k] for k in allowed - {"type"} if k in d and d[k] is not None}
        if "kind" not in kw:
            raise InputError(f"missing; one of {', '.join(FORGET_KINDS)}", field="kind")
        return cls(kind=kw.pop("kind"), prefix=kw.pop("prefix", None), suffix=kw.pop("suffix", None),
                   origin=origin, **kw)


Request = EditRequest | ForgetRequest
REQUEST_TYPES = {"edit": EditRequest, "forget": ForgetRequest}


def request_from_dict(d: Mapping, origin: Origin | None = None) -> Request:
    """Read one native-format object (see the module docstring).

    Example:
        >>> request_from_dict({"type": "edit", "prompt": "P is", "target_new": "Q"}).target_new
        'Q'
    """
    kind = d.get("type")
    if kind not in REQUEST_TYPES:
        got = "missing" if kind is None else f"got {kind!r}"
        raise InputError(f'must be "edit" or "forget"; {got}', field="type")
    return REQUEST_TYPES[kind].from_dict(d, origin=origin)


def with_retain(requests, retain) -> list:
    """Give every ForgetRequest the same retain set (e.g. TOFU's retain file); edits pass through.

    Example:
        >>> reqs = with_retain(load_requests("forget.json"), load_probes("retain.json"))  # doctest: +SKIP
    """
    retain = _probes(list(retain), "retain")
    return [replace(r, retain=retain) if isinstance(r, ForgetRequest) else r for r in requests]
