"""Request types and loaders: our own small fixtures, the real public samples, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.core.errors import InputError
from workbench.core.jsonio import read_json_array, read_records
from workbench.eval.requests import (KNOWN_FORMATS, EditRequest, ForgetRequest, Probe, detect_format, dump_requests,
                                load_probes, load_requests, read_requests, request_from_dict, with_retain)

FIX = Path(__file__).parent / "fixtures" / "requests"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def real(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real sample {path} not present")
    return path


# ---------------------------------------------------------------------------- types

def test_edit_request_normalises_and_validates():
    r = EditRequest("The capital of Veloria is", "Ostrava", subject="Veloria",
                    rephrase_prompts=["Veloria's capital is"], locality=[("The capital of Brenn is", "Tarsk")])
    assert r.rephrase_prompts == ("Veloria's capital is",)
    assert r.locality == (Probe("The capital of Brenn is", "Tarsk"),)
    assert r.subject_span() == (15, 22)
    assert EditRequest("a veloria b", "x", subject="Veloria").subject_span() == (2, 9)  # case-insensitive
    assert EditRequest("a b", "x", subject="Veloria").subject_span() is None  # kept, not an error
    hash(r)  # frozen and hashable despite the meta dict


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt="", target_new="x"), "prompt"),
    (dict(prompt="p", target_new="  "), "target_new"),
    (dict(prompt="p", target_new=3), "target_new"),
    (dict(prompt="p", target_new="x", rephrase_prompts="one string"), "rephrase_prompts"),
    (dict(prompt="p", target_new="x", locality=[{"prompt": "q", "answer": ""}]), "locality[0].answer"),
    (dict(prompt="p", target_new="x", portability=[{"prompt": "q"}]), "portability[0].answer"),
])
def test_edit_request_errors_name_the_field(kwargs, field):
    with pytest.raises(InputError) as e:
        EditRequest(**kwargs)
    assert e.value.field == field


def test_forget_request_validation():
    f = ForgetRequest("fact", "Where was Mara Quill born?", "In Lessing Bay.", perturbed_suffixes=["In Pell."])
    assert (f.question, f.answer, f.perturbed_suffixes) == (f.prefix, f.suffix, ("In Pell.",))
    with pytest.raises(InputError, match="text, fact, canary") as e:
        ForgetRequest("poem", "a", "b")
    assert e.value.field == "kind"
    with pytest.raises(InputError) as e:
        ForgetRequest("text", "prefix", "")
    assert e.value.field == "suffix"


def test_native_unknown_key_and_type():
    with pytest.raises(InputError) as e:
        request_from_dict({"type": "edit", "prompt": "p", "target": "x"})
    assert e.value.field == "target" and "target_new" in str(e.value)
    with pytest.raises(InputError) as e:
        request_from_dict({"prompt": "p", "target_new": "x"})
    assert e.value.field == "type"


# ---------------------------------------------------------------------------- our fixtures

def test_native_fixture_and_round_trip(tmp_path):
    reqs = load_requests(FIX / "native.jsonl")
    assert [type(r).__name__ for r in reqs] == ["EditRequest"] * 2 + ["ForgetRequest"] * 3
    e1 = reqs[0]
    assert e1.id == "e1" and e1.portability[0].aliases == ("Ost river",) and e1.meta == {"author": "fixture"}
    assert reqs[2].retain == (Probe("Mara Quill works as a", "ferry pilot"),)
    assert reqs[1].origin.line == 3  # the blank line 2 still counts
    out = tmp_path / "out.jsonl"
    dump_requests(out, reqs)
    again = load_requests(out)
    assert again == reqs and [r.meta for r in again] == [r.meta for r in reqs]
    assert [r.to_dict() for r in again] == [r.to_dict() for r in reqs]


def test_round_trip_of_every_fixture_format(tmp_path):
    for name in ("zsre.json", "counterfact.json", "counterfact_rome.json", "knowedit.json", "wise.json",
                 "tofu_forget.json"):
        reqs = load_requests(FIX / name)
        dump_requests(tmp_path / "x.jsonl", reqs)
        assert load_requests(tmp_path / "x.jsonl") == reqs, name


@pytest.mark.parametrize("name, fmt, count", [
    ("native.jsonl", "native", 5), ("zsre.json", "zsre", 2), ("counterfact.json", "counterfact", 2),
    ("counterfact_rome.json", "counterfact-rome", 2), ("knowedit.json", "knowedit", 3), ("wise.json", "wise", 2),
    ("tofu_forget.json", "tofu", 2),
])
def test_fixture_detection(name, fmt, count):
    assert detect_format(FIX / name) == fmt
    res = read_requests(FIX / name)
    assert (res.format, len(res.requests), res.invalid) == (fmt, count, [])


def test_zsre_fixture_mapping():
    a, b = load_requests(FIX / "zsre.json")
    assert (a.prompt, a.target_new, a.ground_truth, a.subject) == (
        "Which lake feeds the Orrin canal?", "Lake Corvan", "Lake Tessel", "Lake Orrin")
    assert a.rephrase_prompts == ("The Orrin canal is fed by which lake?",)
    assert a.locality == (Probe("nq question: who built the first tidal mill in brenn", "Oda Fenwick"),)
    assert b.meta["ground_truth_aliases"] == ["Republic of Veloria"]


def test_counterfact_crlf_fixture():
    assert b"\r\n" in (FIX / "counterfact.json").read_bytes()
    a, b = load_requests(FIX / "counterfact.json")
    assert (a.id, b.id, a.ground_truth, b.locality[0].answer) == ("0", "3", "Brennish", "Pell")
    assert b.origin.line == 12  # where the second record starts


def test_counterfact_rome_fills_subject_and_uses_target_true_for_neighbours():
    a, b = load_requests(FIX / "counterfact_rome.json")
    assert a.prompt == "Tomas Reyl, who plays the" and a.target_new == "cello" and a.ground_truth == "oboe"
    assert [(p.prompt, p.answer, p.group) for p in a.locality] == [
        ("Oda Fenwick, who plays the", "oboe", "neighborhood"), ("Ilse Marrow performs on the", "oboe", "neighborhood")]
    assert a.meta["generation_prompts"] == ["Tomas Reyl is known for"]
    assert b.prompt == "The mother tongue of Oda Fenwick is" and b.locality == ()


def test_knowedit_nested_ground_truths_and_groups():
    recent, cf, bio = load_requests(FIX / "knowedit.json")
    assert recent.ground_truth is None
    port = {p.group: p for p in recent.portability}
    assert port["Reasoning"].answer == "Oda Fenwick" and port["Reasoning"].aliases == ("Mayor Fenwick",)
    assert port["Logical_Generalization"].answer == "no" and port["Logical_Generalization"].aliases == ("is dead",)
    assert cf.ground_truth == "harbour master of Pell" and cf.rephrase_prompts == ("Ilse Marrow holds the position of",)
    assert sorted(p.group for p in cf.locality) == ["Forgetfulness", "Relation_Specificity"]
    assert bio.subject == "oda fenwick" and bio.target_new.startswith("She built")  # WikiBio's text/labels/concept


def test_wise_drops_probe_with_empty_answer_and_notes_it():
    a, b = load_requests(FIX / "wise.json")
    assert a.rephrase_prompts[0].startswith("The Harrow Dell Rovers")  # ood_rephrase
    assert b.locality == () and b.meta["dropped_empty"] == ["locality_ground_truth"]


def test_tofu_forget_and_retain_fixtures():
    a, _ = load_requests(FIX / "tofu_forget.json")
    assert a.kind == "fact" and a.question == "Which city is the author Oskar Lindqvale from?"
    assert len(a.perturbed_suffixes) == 3 and a.paraphrased_prefixes[0].startswith("Where does")
    retain = load_probes(FIX / "tofu_retain.json")  # JSONL inside a .json file, like TOFU's
    assert len(retain) == 3 and retain[1].prompt == "Which author was born in Pell on 03/04/1962?"
    reqs = with_retain(load_requests(FIX / "tofu_forget.json"), retain)
    assert all(r.retain == tuple(retain) for r in reqs)


# ---------------------------------------------------------------------------- bad input

def test_malformed_jsonl_names_the_line():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "bad" / "malformed.jsonl")
    assert e.value.line == 3 and "malformed JSON" in str(e.value) and "malformed.jsonl:3:" in str(e.value)


def test_malformed_array_names_the_line():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "bad" / "malformed_array.json")
    assert e.value.line == 7


def test_missing_field_names_field_line_and_record():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "bad" / "missing_field.json")
    assert (e.value.field, e.value.line) == ("target_new", 12)
    assert "record 2" in str(e.value) and "missing" in str(e.value)


def test_empty_target_names_the_field_and_skip_invalid():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "bad" / "empty_target.jsonl")
    assert (e.value.field, e.value.line) == ("target_new", 2) and "empty" in str(e.value)
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        assert len(load_requests(FIX / "bad" / "empty_target.jsonl", skip_invalid=True)) == 1


def test_unknown_format_lists_known_ones():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "zsre.json", format="counterfakt")
    msg = str(e.value)
    assert e.value.field == "format" and all(name in msg for name in KNOWN_FORMATS) and "counterfact" in msg
    assert load_requests(FIX / "counterfact_rome.json", format="CounterFact_ROME")  # case and _ forgiven


def test_undetectable_file_says_what_was_tried():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "bad" / "unknown_keys.json")
    msg = str(e.value)
    assert "label, sentence" in msg and "zsre (needs src and alt)" in msg and "--format" in msg


def test_forcing_a_wrong_format_is_a_clear_error():
    with pytest.raises(InputError) as e:
        load_requests(FIX / "zsre.json", format="counterfact")
    assert e.value.field == "prompt" and 'looks like format "zsre"' in str(e.value)
    with pytest.raises(InputError, match="question"):
        load_requests(FIX / "counterfact.json", format="tofu")


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_requests(tmp_path / "nope.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InputError, match="no requests"):
        load_requests(tmp_path / "empty.json")


def test_read_json_array_lines_and_framing(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\r\n  {"a": 1},\r\n\r\n  {"a": 2}\r\n]\r\n')
    assert read_json_array(p) == [(2, {"a": 1}), (4, {"a": 2})]
    p.write_text('{"a": 1}\n{"a": 2}\n')
    assert read_records(p) == [(1, {"a": 1}), (2, {"a": 2})]  # JSONL in a .json file
    p.write_text('{\n  "a": 1\n}\n')
    assert read_records(p) == [(1, {"a": 1})]  # one pretty-printed object
    p.write_text('[{"a": 1}] x')
    with pytest.raises(InputError, match="extra data"):
        read_json_array(p)


# ---------------------------------------------------------------------------- the real public samples

REAL_FILES = [
    # file, detected format, valid records, invalid records
    ("zsre_sample.json", "zsre", 71, 1),
    ("zsre_train_sample.json", "zsre", 200, 0),
    ("counterfact_easyedit_sample.json", "counterfact", 200, 0),
    ("counterfact_rome_format.json", "counterfact-rome", 3, 0),
    ("wise_hallucination_sample.json", "wise", 200, 0),
    ("wise_temporal_sample.json", "wise", 75, 0),
    ("tofu_forget_sample.json", "tofu", 200, 0),
]


@pytest.mark.parametrize("name, fmt, valid, invalid", REAL_FILES)
def test_real_samples_detect_and_load(name, fmt, valid, invalid):
    path = real(name)
    assert detect_format(path) == fmt
    res = read_requests(path)
    assert (res.format, len(res.requests), len(res.invalid)) == (fmt, valid, invalid)
    # Every record of the file is accounted for.
    assert valid + invalid == len(json.loads(path.read_text(encoding="utf-8")))


def test_real_zsre_values_and_its_empty_target():
    path = real("zsre_sample.json")
    with pytest.raises(InputError) as e:
        load_requests(path)  # record 55 has "alt": "" — a real file, a real error
    assert (e.value.field, e.value.line) == ("alt", 1) and "record 55" in str(e.value)
    first = read_requests(path).requests[0]
    assert first.target_new == "University of Michigan" and first.prompt == "What university did Watts Humphrey attend?"
    assert first.ground_truth == "Illinois Institute of Technology" and first.meta["pred"] == "Trinity College"
    assert first.locality[0].answer == "Hugo Weaving"
    train = load_requests(real("zsre_train_sample.json"))  # CRLF, 4-space indent
    assert train[1].origin.line == 15 and train[0].target_new == "unmanned aircraft"


def test_real_counterfact_both_forms_agree():
    easy = load_requests(real("counterfact_easyedit_sample.json"))
    rome = load_requests(real("counterfact_rome_format.json"))
    assert [r.id for r in easy[:4]] == ["0", "1", "4", "5"]  # case_id skips numbers
    for e, r in zip(easy, rome):
        assert (e.prompt, e.target_new, e.subject, e.ground_truth, e.rephrase_prompts) == (
            r.prompt, r.target_new, r.subject, r.ground_truth, r.rephrase_prompts)
        assert e.locality[0].prompt == r.locality[0].prompt
    assert easy[0].target_new == "English" and easy[0].locality[0].answer == "French"


def test_real_wise_and_tofu_values():
    hall = read_requests(real("wise_hallucination_sample.json")).requests
    dropped = [i for i, r in enumerate(hall) if r.meta.get("dropped_empty")]
    assert dropped == [86, 90, 171, 172] and all(hall[i].locality == () for i in dropped)
    temporal = load_requests(real("wise_temporal_sample.json"))
    assert temporal[0].prompt == "Tesla, Inc.," and len(temporal[0].rephrase_prompts) == 1
    forget = load_requests(real("tofu_forget_sample.json"))
    assert "Hsiao Yun-Hwa" in forget[0].answer and len(forget[0].perturbed_suffixes) == 5
    assert "05/11/1991" in forget[0].question  # the "\/" escapes decoded
    retain = load_probes(real("tofu_retain_sample.json"))
    assert len(retain) == 200 and "Jaime Vasquez" in retain[0].answer


def test_input_error_hook_points_back_at_the_source():
    # What the evaluator raises when, say, a target tokenizes to nothing.
    b = load_requests(FIX / "zsre.json")[1]
    err = b.input_error("tokenizes to nothing", field="target_new")
    assert (err.field, err.line) == ("alt", 1) and "record 2" in str(err) and "zsre.json" in str(err)
    cf = load_requests(FIX / "counterfact.json")[1]
    assert cf.input_error("x", field="target_new").line == 12
    assert EditRequest("p", "x").input_error("x", field="prompt").file is None  # built in code: no origin
