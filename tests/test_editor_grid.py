"""The editor contract, checked for every registered editor on a tiny model of every family.

One test body, parametrized over `registered editors x tiny architectures` (as peft's
tests/testing_common.py does): an edit with default hyperparameters must return a non-empty
patch that reverts and re-applies bit for bit, must change the model's output, and must move
the target the right way (edit: its log-prob goes up; forget: down).
"""
from __future__ import annotations

import pytest
import torch

from tests.tiny_models import MODEL_TYPES, tiny_model, tiny_tokenizer
from workbench.arch import ARCH_SPECS, get_adapter
from workbench.editing import EditContext, Editor
from workbench.patch import weights_hash
from workbench.requests import EditRequest, ForgetRequest
from workbench.scoring import encode_pairs, score_answers


def _editor_names() -> list[str]:
    # The editors the package registers through its entry points, so the grid does not depend
    # on which test modules happened to import (and decorator-register) editors before it.
    from importlib.metadata import entry_points
    return sorted(ep.name for ep in entry_points(group="workbench.editors"))


def _editor_class(name: str):
    try:
        from workbench.registry import get_editor
    except ImportError:
        from editors.ft import FTEditor
        return FTEditor
    return get_editor(name)


pytestmark = pytest.mark.usefixtures("one_thread")


EDIT = EditRequest("Ada lives in", "Rome", subject="Ada", rephrase_prompts=["Ada's home is"],
                   locality=[("Bo lives in", "Oslo")])
FORGET = ForgetRequest("text", "The secret code is", "tulip 42", retain=[("Bo lives in", "Oslo")])


def _target_logprob(model, tok, prompt: str, answer: str) -> float:
    pairs = encode_pairs(tok, [prompt], [answer])
    return sum(score_answers(model, pairs, pad_id=tok.pad_token_id)[0].logprobs)


def _memorize(model, tok, prompt: str, answer: str, steps: int = 60) -> None:
    """Teach a random tiny model to recite `answer` after `prompt`, so a forget editor has
    something real to remove (a model that recites nothing is rightly refused by some)."""
    (p_ids, a_ids), = encode_pairs(tok, [prompt], [answer])
    ids = torch.tensor([p_ids + a_ids])  # (1, seq)
    labels = ids.clone()
    labels[0, :len(p_ids)] = -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


def test_tiny_models_cover_every_supported_architecture():
    assert set(MODEL_TYPES) == set(ARCH_SPECS)


@pytest.mark.parametrize("arch", MODEL_TYPES)
@pytest.mark.parametrize("editor_name", _editor_names())
def test_editor_contract(editor_name, arch):
    cls = _editor_class(editor_name)
    assert isinstance(cls(cls.hparams_class()), Editor)
    model, tok = tiny_model(arch), tiny_tokenizer()
    adapter = get_adapter(model)
    request = FORGET if cls.capabilities.forget else EDIT
    prompt, answer = (request.prefix, request.suffix) if cls.capabilities.forget else (request.prompt,
                                                                                       request.target_new)
    if cls.capabilities.forget:
        _memorize(model, tok, prompt, answer)
    probe = torch.tensor([tok(prompt)["input_ids"]])  # (1, seq)
    with torch.no_grad():
        logits_before = model(probe).logits
    lp_before = _target_logprob(model, tok, prompt, answer)
    hash_before = weights_hash(model)

    editor = cls(cls.hparams_class().derive(adapter))
    patch = editor.edit(EditContext(model, tok, adapter, seed=0), [request])

    assert patch.weights or patch.attachments, "the edit recorded no change"
    hash_after = weights_hash(model)
    with torch.no_grad():
        assert not torch.equal(model(probe).logits, logits_before), "the model's output did not change"
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
