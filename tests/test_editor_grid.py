"""The editor contract, checked for every registered editor on a tiny model of every family.

One test body, parametrized over `registered editors x tiny architectures` (as peft's
tests/testing_common.py does): an edit with default hyperparameters must return a non-empty
patch that reverts and re-applies bit for bit, must change the model's output (on the prompt, or on
the prompt with its answer, as scored), and must move
the target the right way (edit: its log-prob goes up; forget: down).
"""
from __future__ import annotations

import pytest
import torch

from tests.tiny_models import MODEL_TYPES, REFUSED, tiny_model, tiny_tokenizer
from workbench.core.arch import ARCH_SPECS, get_adapter
from workbench.editing.contract import EditContext, Editor
from workbench.core.patch import weights_hash
from workbench.eval.requests import EditRequest, ForgetRequest
from workbench.eval.scoring import encode_pairs, score_answers


def _editor_names() -> list[str]:
    # The editors the package registers through its entry points, so the grid does not depend
    # on which test modules happened to import (and decorator-register) editors before it.
    from importlib.metadata import entry_points
    return sorted(ep.name for ep in entry_points(group="workbench.editors"))


def _editor_class(name: str):
    try:
        from workbench.editing.registry import get_editor
    except ImportError:
        from editors.ft import FTEditor
        return FTEditor
    return get_editor(name)


pytestmark = pytest.mark.usefixtures("one_thread")

# Settings the grid changes from an editor's defaults, and why. `wise` (the paper's algorithm):
# its router threshold is the edit's score at the last pass *before* the last lr-1.0 step; on a
# 32-wide model whose loss stays high that step moves the score by ~30% (tiny gemma: 1.07 -> 0.73
# against a threshold of 0.94), so the edit would not reach its own threshold. The grid checks the
# contract with the threshold taken after training (the option `wise-tuned` uses); the paper's
# rule runs on the shipped model in tests/test_editor_wise.py.
GRID_PARAMS = {"wise": {"threshold_from": "final"}}


# The edit puts its subject last and its answers are single word tokens: see `_memorize` for why
# a tiny model can host a ROME-style edit only there.
WORDS = (" Rome", " Paris", " Oslo")
EDIT = EditRequest("The home city of Ada", "Rome", ground_truth="Paris", subject="Ada",
                   rephrase_prompts=["Ada's home city"], locality=[("The home city of Bo", "Oslo")])
FORGET = ForgetRequest("text", "The secret code is", "tulip 42", retain=[("Bo lives in", "Oslo")])


def _target_logprob(model, tok, prompt: str, answer: str) -> float:
    pairs = encode_pairs(tok, [prompt], [answer])
    return sum(score_answers(model, pairs, pad_id=tok.pad_token_id)[0].logprobs)


def _memorize(model, tok, pairs: list[tuple[str, str]], steps: int = 60) -> None:
    """Teach a random tiny model to say each answer after its prompt, so that an editor has
    something real to change: a forget editor a text to remove (a model that recites nothing
    is rightly refused by some), an edit editor a fact to overwrite.

    Why edit editors need it, measured for ROME/MEMIT (which edit the MLP value v at the
    subject's last token): in a random model that site does not influence the answer at all
    (an unconstrained delta 50x the residual norm there moves the target's mean NLL by
    < 0.01), and |v| ≈ 0.005..0.07, so ROME's weight decay |δ|/|v|² has slope 90..17000
    against an NLL gradient of 0.002..0.14: the minimiser of ROME's own objective is δ = 0.
    After this warm-up |v| is O(1) as in a trained model. What a few seconds of training do
    not give a 3-layer model is attention that carries the subject to later positions: with
    "Ada lives in" a faithful ROME still moved the target by < 0.05 nats, either way. Hence
    the grid's edit prompt ends with its subject, where the answer is read, and the answers
    are one token each, as city names are in real tokenizers (`WORDS`).
    """
    from workbench.eval.scoring import right_pad
    enc = encode_pairs(tok, [p for p, _ in pairs], [a for _, a in pairs])
    ids, mask = right_pad([p + a for p, a in enc], tok.pad_token_id)  # (n, seq) each
    labels = ids.masked_fill(mask == 0, -100)
    for r, (p, _) in enumerate(enc):
        labels[r, :len(p)] = -100  # only the answer is learnt
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


def test_tiny_models_cover_every_table_entry_and_twenty_families():
    assert set(ARCH_SPECS) <= set(MODEL_TYPES) and len(MODEL_TYPES) + len(REFUSED) >= 20


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_every_editor_refuses_a_mixture_of_experts_in_one_line(arch, tmp_path):
    # through a session, as a user meets it: the model is refused as it opens, before any editor
    # runs (so every editor refuses alike), with the reason in one line and no workspace written
    import transformers as T
    from workbench.core.errors import WorkbenchError
    from workbench.editing.session import Workbench
    factory, reason = REFUSED[arch]
    tok = tiny_tokenizer(WORDS)
    config = factory()
    config.vocab_size = len(tok)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    with pytest.raises(WorkbenchError, match=reason) as err:
        Workbench(tmp_path / "model", tmp_path / "ws")
    assert "\n" not in str(err.value) and not (tmp_path / "ws").exists()


@pytest.mark.parametrize("arch", MODEL_TYPES)
@pytest.mark.parametrize("editor_name", _editor_names())
def test_editor_contract(editor_name, arch):
    cls = _editor_class(editor_name)
    assert isinstance(cls(cls.hparams_class()), Editor)
    if getattr(cls.capabilities, "composes", False):
        pytest.skip("composes: works on adapters that earlier edits recorded, not on a request; "
                    "tests/test_editor_lora.py runs it per architecture")
    tok = tiny_tokenizer(WORDS)
    model = tiny_model(arch, vocab_size=len(tok))
    adapter = get_adapter(model)
    request = FORGET if cls.capabilities.forget else EDIT
    prompt, answer = (request.prefix, request.suffix) if cls.capabilities.forget else (request.prompt,
                                                                                       request.target_new)
    # The model first learns what the request changes: the text to forget, or the fact the
    # edit overwrites together with its locality fact (so the answer depends on the subject).
    if cls.capabilities.forget:
        _memorize(model, tok, [(prompt, answer)])
    else:
        _memorize(model, tok, [(prompt, request.ground_truth)] + [(q.prompt, q.answer) for q in request.locality])
    probe = torch.tensor([tok(prompt)["input_ids"]])  # (1, seq)
    # With its answer too: a routed memory (WISE) may decide on the whole input, as it is scored.
    probe_answer = torch.tensor([sum(encode_pairs(tok, [prompt], [answer])[0], [])])  # (1, seq + answer)
    with torch.no_grad():
        logits_before, answer_before = model(probe).logits, model(probe_answer).logits
    lp_before = _target_logprob(model, tok, prompt, answer)
    hash_before = weights_hash(model)

    editor = cls(cls.hparams_class.from_strings(GRID_PARAMS.get(editor_name, {})).derive(adapter))
    patch = editor.edit(EditContext(model, tok, adapter, seed=0), [request])

    assert patch.weights or patch.attachments, "the edit recorded no change"
    hash_after = weights_hash(model)
    with torch.no_grad():
        assert not (torch.equal(model(probe).logits, logits_before)
                    and torch.equal(model(probe_answer).logits, answer_before)), "the model's output did not change"
    lp_after = _target_logprob(model, tok, prompt, answer)
    if cls.capabilities.forget:
        assert lp_after < lp_before
    else:
        assert lp_after > lp_before

    patch.revert(model, adapter)
    assert weights_hash(model) == hash_before
    with torch.no_grad():
        assert torch.equal(model(probe).logits, logits_before)
    patch.apply(model, adapter)
    assert weights_hash(model) == hash_after


NEW_FAMILIES = ("bloom", "falcon", "gpt_neo", "gptj", "olmo2", "phi3", "stablelm", "starcoder2")


@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_a_session_on_a_family_without_an_entry_edits_verifies_rolls_back_and_exports(arch, tmp_path):
    # the whole path a user takes with their own checkpoint: a folder with its tokenizer, a session,
    # an edit, verify (replay), rollback to base bit-identical, export that reloads as the edited model
    from workbench.core.model import load_model
    from workbench.editing.session import Workbench
    tok = tiny_tokenizer(WORDS)
    tiny_model(arch, vocab_size=len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    wb = Workbench(tmp_path / "model", tmp_path / "ws")
    base = wb.weights_hash()
    event = wb.edit("ft", [EDIT], {"steps": "5"})
    assert event.kind == "edit" and wb.weights_hash() != base and wb.verify() == []
    edited = wb.weights_hash()
    out = wb.export(tmp_path / "exported")
    assert weights_hash(load_model(out)[0]) == edited
    wb.rollback("base")
    assert wb.weights_hash() == base and wb.verify() == []


def test_rome_moves_a_gptj_shaped_model_as_far_as_a_sequential_one():
    # GPT-J (the family the ROME paper edits) reads attention and MLP from the same block input. ROME
    # reads its key at the MLP out-projection's input and writes its value at its output, so that
    # layout changes nothing: the edit moves the target as far as on Llama's sequential blocks. (Neither
    # reaches reliability 1.0 on these 32-wide models with the paper's 20 value steps: issue 20's note.)
    moved = {}
    for arch in ("gptj", "llama"):
        tok = tiny_tokenizer(WORDS)
        model = tiny_model(arch, vocab_size=len(tok))
        adapter = get_adapter(model)
        _memorize(model, tok, [(EDIT.prompt, EDIT.ground_truth)] + [(q.prompt, q.answer) for q in EDIT.locality])
        before = _target_logprob(model, tok, EDIT.prompt, EDIT.target_new)
        cls = _editor_class("rome")
        cls(cls.hparams_class().derive(adapter)).edit(EditContext(model, tok, adapter, seed=0), [EDIT])
        moved[arch] = _target_logprob(model, tok, EDIT.prompt, EDIT.target_new) - before
        print(f"rome on a tiny {arch}: log p(target) {before:.1f} -> {before + moved[arch]:.1f}")  # README (pytest -s)
    assert get_adapter(tiny_model("gptj")).parallel_blocks and not get_adapter(tiny_model("llama")).parallel_blocks
    assert moved["gptj"] > 5 and moved["llama"] > 5  # nats
    assert abs(moved["gptj"] - moved["llama"]) < 2


@pytest.mark.slow  # every editor through a session on every family: minutes (`pytest -m slow`)
@pytest.mark.parametrize("arch", MODEL_TYPES)
def test_every_editor_through_a_session_on_every_family(arch, tmp_path):
    """The path a user takes with their own checkpoint, for every editor: edit in a session, export
    a checkpoint that reloads to the edited weights (or a one-line refusal where the edit attaches
    modules a plain checkpoint cannot hold), undo; then verify the whole history (replayed on a
    fresh copy) and roll back to base bit-identical from two edits in force."""
    from workbench.core.errors import WorkbenchError
    from workbench.core.model import load_model
    from workbench.editing.session import Workbench
    tok = tiny_tokenizer(WORDS)
    model = tiny_model(arch, vocab_size=len(tok))
    _memorize(model, tok, [(EDIT.prompt, EDIT.ground_truth), (FORGET.prefix, FORGET.suffix)]
              + [(q.prompt, q.answer) for q in EDIT.locality])
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    wb = Workbench(tmp_path / "model", tmp_path / "ws")
    base = wb.weights_hash()
    for name in _editor_names():
        cls = _editor_class(name)
        if cls.capabilities.composes:
            continue  # works on adapters earlier edits recorded (tests/test_editor_lora.py)
        event = wb.edit(name, [FORGET if cls.capabilities.forget else EDIT], GRID_PARAMS.get(name, {}))
        assert event.kind == "edit" and wb.weights_hash() != base, name
        try:
            out = wb.export(tmp_path / f"export-{name}")
        except WorkbenchError as e:
            assert "\n" not in str(e) and "adds modules" in str(e), (name, str(e))
        else:
            assert weights_hash(load_model(out)[0]) == wb.weights_hash(), name
        wb.undo()
        assert wb.weights_hash() == base, name
    assert wb.verify() == []
    wb.edit("ft", [EDIT], {"steps": "3"})
    wb.edit("grace", [EDIT])
    wb.rollback("base")
    assert wb.weights_hash() == base and wb.active() == [] and wb.verify() == []
