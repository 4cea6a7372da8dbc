"""Converters from the public request formats, read as they are, to our request types.

=================  ==========================================================================
format             one record (JSON array or JSONL) → request
=================  ==========================================================================
native             see ``types`` (``{"type": "edit"|"forget", ...}``)
zsre               MEND/ROME ZsRE ``{subject, src, pred, rephrase, alt, answers, loc, loc_ans,
                   cond}`` → prompt=src, target_new=alt, ground_truth=answers[0] (else pred),
                   rephrase_prompts=[rephrase], locality=[(loc, loc_ans)]
counterfact        EasyEdit/MEND CounterFact ``{case_id, prompt, target_new, subject,
                   ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth}``
counterfact-rome   ROME CounterFact ``{case_id, requested_rewrite{prompt with "{}", subject,
                   target_new{str}, target_true{str}}, paraphrase_prompts,
                   neighborhood_prompts, ...}``; a neighborhood prompt's answer is target_true
                   (the file has none; ROME's evaluation uses the unedited object)
knowedit           EasyEdit/KnowEdit ``{prompt, target_new, subject, ground_truth?,
                   rephrase_prompt|rephrase?, portability{name: [{prompt, ground_truth}]},
                   locality{name: [...]}}``; WikiBio's ``{text, labels, concept}`` too.
                   A ground truth may be a string, a list, or a list of alias lists.
wise               WISE ``{prompt, target_new, subject, locality_prompt,
                   locality_ground_truth, ood_rephrase?}`` (ood_rephrase → rephrase_prompts)
tofu               TOFU forget ``{question, answer, paraphrased_question?, paraphrased_answer?,
                   perturbed_answer?}`` → ForgetRequest(kind="fact")
=================  ==========================================================================

Public files are taken as they are, so two leniencies apply to them (never to native files):
an optional string that is blank counts as absent, and a locality/portability probe whose
prompt or answer is blank (WISE's hallucination split has empty locality answers) is dropped,
with the dropped source fields listed in ``meta["dropped_empty"]``. A blank *prompt* or
*target* is always an error: without it there is no edit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from workbench.core.errors import InputError
from workbench.eval.requests.types import EditRequest, ForgetRequest, Origin, Probe, request_from_dict


class Rec:
    """Typed access to one source record; every error names the source field (dotted path)."""

    def __init__(self, obj: Mapping, prefix: str = ""):
        self.obj, self.prefix = obj, prefix
        self.dropped: list[str] = []  # source fields left out because they were blank

    def name(self, key: str) -> str:
        return self.prefix + key

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def pick(self, *keys: str) -> str:
        """The first of several accepted spellings that the record has (else the first)."""
        return next((k for k in keys if self.has(k)), keys[0])

    def missing(self, key: str) -> InputError:
        keys = ", ".join(sorted(self.obj)) or "none"
        return InputError(f"missing; the record has keys {keys}", field=self.name(key))

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self.missing(key)
            return None
        if not isinstance(value, str):
            raise InputError(f"expected a string, got {type(value).__name__}", field=self.name(key))
        if not value.strip():
            if required:
                raise InputError("must not be empty", field=self.name(key))
            return None
        return value

    def texts(self, key: str) -> list[str]:
        """A string or a list of strings (absent → []); blank entries are dropped."""
        return self.flat(self.obj.get(key), self.name(key))

    def flat(self, value: Any, fld: str) -> list[str]:
        """Flatten a string / list / list of alias lists into its non-blank strings, in order."""
        if value is None:
            return []
        if isinstance(value, str):
            if value.strip():
                return [value]
            self.dropped.append(fld)
            return []
        if not isinstance(value, list):
            raise InputError(f"expected a string or a list of strings, got {type(value).__name__}", field=fld)
        out: list[str] = []
        for i, item in enumerate(value):
            out += self.flat(item, f"{fld}[{i}]")
        return out

    def sub(self, key: str) -> "Rec":
        value = self.obj.get(key)
        if value is None:
            raise self.missing(key)
        if not isinstance(value, Mapping):
            raise InputError(f"expected an object, got {type(value).__name__}", field=self.name(key))
        return Rec(value, self.name(key) + ".")

    def probe(self, prompt: Any, answer: Any, p_fld: str, a_fld: str, group: str | None) -> Probe | None:
        """One probe, or None (noted in ``dropped``) when its prompt or answers are blank."""
        if not isinstance(prompt, str):
            raise InputError(f"expected a string, got {type(prompt).__name__}", field=p_fld)
        noted = len(self.dropped)
        answers = self.flat(answer, a_fld)  # notes a blank answer string itself
        if not prompt.strip():
            self.dropped.append(p_fld)
        elif not answers and len(self.dropped) == noted:
            self.dropped.append(a_fld)  # e.g. an empty list
        if not prompt.strip() or not answers:
            return None
        return Probe(prompt, answers[0], tuple(answers[1:]), group)

    def flat_probes(self, p_key: str, a_key: str, group: str | None = None) -> list[Probe]:
        """Probes from a prompt field and an answer field: both strings, or parallel lists."""
        prompts = self.obj.get(p_key)
        if prompts is None and not self.has(a_key):
            return []
        if prompts is None:
            raise self.missing(p_key)
        if a_key not in self.obj:
            raise self.missing(a_key)
        answers = self.obj[a_key]
        if isinstance(prompts, str):
            pairs = [(prompts, answers, self.name(p_key), self.name(a_key))]
        elif isinstance(prompts, list) and isinstance(answers, list) and len(prompts) == len(answers):
            pairs = [(p, a, f"{self.name(p_key)}[{i}]", f"{self.name(a_key)}[{i}]")
                     for i, (p, a) in enumerate(zip(prompts, answers))]
        else:
            raise InputError(f"expected a string, or a list as long as {self.name(a_key)}", field=self.name(p_key))
        probes = [self.probe(p, a, pf, af, group) for p, a, pf, af in pairs]
        return [p for p in probes if p is not None]

    def grouped_probes(self, key: str) -> list[Probe]:
        """KnowEdit's ``{group: [{prompt, ground_truth}, ...]}`` (or ``{group: {prompt: [...],
        ground_truth: [...]}}``, EasyEdit's in-memory form); a plain list is one unnamed group."""
        value = self.obj.get(key)
        if value is None:
            return []
        groups = value.items() if isinstance(value, Mapping) else [(None, value)]
        out: list[Probe] = []
        for group, items in groups:
            fld = self.name(key) + (f".{group}" if group is not None else "")
            if isinstance(items, Mapping):  # parallel lists under one group
                sub = Rec(items, fld + ".")
                out += sub.flat_probes("prompt", "ground_truth", group)
                self.dropped += sub.dropped
                continue
            if not isinstance(items, list):
                raise InputError(f"expected a list of {{prompt, ground_truth}} objects, got {type(items).__name__}",
                                 field=fld)
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise InputError(f"expected an object, got {type(item).__name__}", field=f"{fld}[{i}]")
                sub = Rec(item, f"{fld}[{i}].")
                a_key = sub.pick("ground_truth", "answer", "target")
                out += sub.flat_probes("prompt", a_key, group)
                self.dropped += sub.dropped
        return out

    def meta(self, **extra: Any) -> dict:
        meta = {k: v for k, v in extra.items() if v}
        if self.dropped:
            meta["dropped_empty"] = list(self.dropped)
        return meta


def _case_id(rec: Rec) -> Any:
    return rec.obj.get("case_id", rec.obj.get("id"))


# ---------------------------------------------------------------------------- edit formats

def from_zsre(rec: Rec, origin: Origin) -> EditRequest:
    prompt, target = rec.text("src"), rec.text("alt")
    answers = rec.texts("answers")
    pred = rec.text("pred", required=False)
    return EditRequest(
        prompt, target,
        ground_truth=answers[0] if answers else pred,
        subject=rec.text("subject", required=False),
        rephrase_prompts=rec.texts("rephrase"),
        locality=rec.flat_probes("loc", "loc_ans"),
        id=_case_id(rec),
        meta=rec.meta(pred=pred, ground_truth_aliases=answers[1:]),
        origin=origin)


def _easyedit(rec: Rec, origin: Origin, required: tuple[str, ...] = ()) -> EditRequest:
    """The flat EasyEdit family (CounterFact, WISE) and the nested KnowEdit form share one reader."""
    p_key, t_key, s_key = rec.pick("prompt", "text"), rec.pick("target_new", "labels"), rec.pick("subject", "concept")
    prompt, target = rec.text(p_key), rec.text(t_key)
    for key in required:
        if not rec.has(key):
            raise rec.missing(key)
    truths = rec.texts("ground_truth")
    rephrases = [t for key in ("rephrase_prompt", "rephrase", "rephrase_prompts", "ood_rephrase")
                 for t in rec.texts(key)]
    if isinstance(rec.obj.get("locality"), (Mapping, list)):
        locality = rec.grouped_probes("locality")
    elif rec.obj.get("locality") is not None:  # silently dropping it would lose the locality test
        raise InputError(f"expected an object of probe groups or a list of probes, got "
                         f"{type(rec.obj['locality']).__name__}", field=rec.name("locality"))
    else:
        locality = rec.flat_probes("locality_prompt", "locality_ground_truth")
    fields = (("prompt", p_key), ("target_new", t_key), ("subject", s_key), ("ground_truth", "ground_truth"))
    return EditRequest(
        prompt, target,
        ground_truth=truths[0] if truths else None,
        subject=rec.text(s_key, required=False),
        rephrase_prompts=rephrases,
        locality=locality,
        portability=rec.grouped_probes("portability"),
        id=_case_id(rec),
        meta=rec.meta(ground_truth_aliases=truths[1:]),
        origin=replace(origin, fields=fields))


def from_counterfact(rec: Rec, origin: Origin) -> EditRequest:
    return _easyedit(rec, origin, required=("subject",))


def from_wise(rec: Rec, origin: Origin) -> EditRequest:
    return _easyedit(rec, origin, required=("locality_prompt", "locality_ground_truth"))


def from_knowedit(rec: Rec, origin: Origin) -> EditRequest:
    return _easyedit(rec, origin)


def _str_or_obj(rec: Rec, key: str, required: bool = True) -> str | None:
    """ROME writes targets as ``{"str": ..., "id": ...}``; a plain string is accepted too."""
    if isinstance(rec.obj.get(key), Mapping):
        return rec.sub(key).text("str", required)
    return rec.text(key, required)


def from_counterfact_rome(rec: Rec, origin: Origin) -> EditRequest:
    rw = rec.sub("requested_rewrite")
    template, subject = rw.text("prompt"), rw.text("subject")
    if "{}" in template:
        prompt = template.replace("{}", subject)  # ROME fills the template with str.format(subject)
    elif subject in template:
        prompt = template  # already filled in; accept it
    else:
        raise InputError('has no "{}" placeholder for the subject', field=rw.name("prompt"))
    target_new = _str_or_obj(rw, "target_new")
    neighborhood = rec.texts("neighborhood_prompts")
    target_true = _str_or_obj(rw, "target_true", required=bool(neighborhood))
    return EditRequest(
        prompt, target_new,
        ground_truth=target_true,
        subject=subject,
        rephrase_prompts=rec.texts("paraphrase_prompts"),
        # ROME scores neighborhood prompts by whether they still prefer the true object.
        locality=[Probe(p, target_true, group="neighborhood") for p in neighborhood],
        id=_case_id(rec),
        meta=rec.meta(attribute_prompts=rec.texts("attribute_prompts"),
                      generation_prompts=rec.texts("generation_prompts")),
        origin=origin)


# ---------------------------------------------------------------------------- forget formats

def from_tofu(rec: Rec, origin: Origin) -> ForgetRequest:
    return ForgetRequest(
        "fact", rec.text("question"), rec.text("answer"),
        paraphrased_prefixes=rec.texts("paraphrased_question"),
        paraphrased_suffixes=rec.texts("paraphrased_answer"),
        perturbed_suffixes=rec.texts("perturbed_answer"),
        id=_case_id(rec),
        meta=rec.meta(),
        origin=origin)


def from_native(rec: Rec, origin: Origin):
    return request_from_dict(rec.obj, origin=origin)


# ---------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Format:
    name: str
    convert: Callable[[Rec, Origin], Any]
    summary: str
    fields: tuple[tuple[str, str], ...] = ()  # our field → the source's, for later error messages


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("native", from_native, "this project's JSONL: {\"type\": \"edit\"|\"forget\", ...}"),
    Format("zsre", from_zsre, "ZsRE, MEND/ROME style: {subject, src, alt, answers, rephrase, loc, loc_ans}",
           (("prompt", "src"), ("target_new", "alt"), ("ground_truth", "answers"),
            ("rephrase_prompts", "rephrase"), ("locality", "loc_ans"))),
    Format("counterfact", from_counterfact,
           "CounterFact, EasyEdit form: {case_id, prompt, target_new, subject, ground_truth, rephrase_prompt, "
           "locality_prompt, locality_ground_truth}"),
    Format("counterfact-rome", from_counterfact_rome,
           "CounterFact, ROME form: {case_id, requested_rewrite, paraphrase_prompts, neighborhood_prompts}",
           (("prompt", "requested_rewrite.prompt"), ("target_new", "requested_rewrite.target_new.str"),
            ("subject", "requested_rewrite.subject"), ("ground_truth", "requested_rewrite.target_true.str"),
            ("rephrase_prompts", "paraphrase_prompts"), ("locality", "neighborhood_prompts"))),
    Format("knowedit", from_knowedit,
           "EasyEdit/KnowEdit: {prompt, target_new, subject, ground_truth?, portability{...}, locality{...}}"),
    Format("wise", from_wise, "WISE: {prompt, target_new, subject, locality_prompt, locality_ground_truth, "
                              "ood_rephrase?}"),
    Format("tofu", from_tofu, "TOFU forget set: {question, answer, paraphrased_answer?, perturbed_answer?, "
                              "paraphrased_question?}",
           (("prefix", "question"), ("suffix", "answer"), ("paraphrased_prefixes", "paraphrased_question"),
            ("paraphrased_suffixes", "paraphrased_answer"), ("perturbed_suffixes", "perturbed_answer"))),
)}

KNOWN_FORMATS: tuple[str, ...] = tuple(FORMATS)
