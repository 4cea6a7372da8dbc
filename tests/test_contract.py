"""The editor template's ritual, on a tiny model: what it restores when a method fails, the
RNG streams it leaves alone, and what it refuses (tests for each real editor are in the grid)."""
import pytest
import torch

from workbench.core.arch import get_adapter
from workbench.core.errors import InputError, WorkbenchError
from workbench.core.patch import Patch, weights_hash
from workbench.editing.contract import Capabilities, EditContext, Editor, HParams
from workbench.eval.requests import EditRequest, ForgetRequest

from .tiny_models import tiny_model, tiny_tokenizer

REQ = EditRequest("alpha beta", "gamma")


class _Scaler(Editor):
    """Scales one MLP output projection, then (optionally) fails or returns something odd."""
    name = "t-scaler"
    capabilities = Capabilities(batch=False)
    hparams_class = HParams
    fail, result, draws = None, None, []

    def run(self, ctx, batch, hp):
        module = ctx.adapter.mlp_out(0)
        rec = ctx.recorder([ctx.adapter.param_name(module)])
        ctx.model.lm_head.weight.requires_grad_(False)  # a flag the template must put back
        with torch.no_grad():
            ctx.adapter.weight(module).mul_(2.0)
        type(self).draws.append(torch.rand(3))  # from the template's seeded generator
        if self.fail is not None:
            raise self.fail
        return self.result if self.result is not None else rec.patch()


@pytest.fixture
def tiny():
    model, tok = tiny_model("llama"), tiny_tokenizer(("alpha", "beta", "gamma"))
    model.train()  # the template must hand it back in the mode it was in
    return model, tok, get_adapter(model)


def _apply(editor, tiny, requests=(REQ,), seed=0):
    model, tok, adapter = tiny
    return editor.edit(EditContext(model, tok, adapter, seed=seed), list(requests))


@pytest.mark.parametrize("make", [lambda: RuntimeError("boom"), lambda: KeyboardInterrupt()])
def test_a_failing_method_leaves_the_model_exactly_as_it_was(tiny, make):
    model = tiny[0]
    h = weights_hash(model)
    ed = _Scaler()
    ed.fail = make()
    with pytest.raises(type(ed.fail)):
        _apply(ed, tiny)
    assert weights_hash(model) == h and model.training and model.lm_head.weight.requires_grad


def test_a_method_that_returns_no_patch_is_refused_and_undone(tiny):
    model = tiny[0]
    h = weights_hash(model)
    ed = _Scaler()
    ed.result = {"not": "a patch"}
    with pytest.raises(WorkbenchError, match="returned dict, not a Patch"):
        _apply(ed, tiny)
    assert weights_hash(model) == h


def test_success_keeps_the_change_restores_flags_and_seeds_locally(tiny):
    model = tiny[0]
    h = weights_hash(model)
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    _Scaler.draws = []
    patch = _apply(_Scaler(), tiny, seed=7)
    assert torch.equal(torch.rand(4), expected_next)  # the caller's stream went on untouched
    assert torch.equal(_Scaler.draws[0], _draw(7))  # the method drew from a generator seeded 7
    assert isinstance(patch, Patch) and patch.meta["editor"] == "t-scaler"
    assert weights_hash(model) != h and model.training and model.lm_head.weight.requires_grad
    patch.revert(model, tiny[2])
    assert weights_hash(model) == h


def _draw(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, generator=g)


@pytest.mark.parametrize("requests, text", [
    ((), "no requests given"),
    ((REQ, REQ), "one request at a time"),
    ((ForgetRequest("text", "alpha", "beta"),), "takes EditRequests"),
])
def test_the_one_check_refuses_before_anything_runs(tiny, requests, text):
    _Scaler.draws = []
    with pytest.raises(InputError, match=text):
        _apply(_Scaler(), tiny, requests)
    assert _Scaler.draws == []  # the method never ran


def test_context_length_names_the_longer_field(tiny):
    model, tok, adapter = tiny
    long_prompt = EditRequest(" ".join(["alpha"] * (model.config.max_position_embeddings + 5)), "gamma")
    with pytest.raises(InputError, match="longer than the model's context") as e:
        _Scaler.check([long_prompt], tok, adapter, context=model.config.max_position_embeddings)
    assert e.value.field == "prompt"


def test_every_undo_step_runs_even_if_one_fails_and_the_error_says_so(tiny):
    model = tiny[0]
    h = weights_hash(model)

    class Broken(_Scaler):
        def run(self, ctx, batch, hp):
            def bad_undo():
                raise OSError("disk gone")
            ctx.on_error(bad_undo)  # oldest step: runs last, after the weight is restored
            return super().run(ctx, batch, hp)

    ed = Broken()
    ed.fail = RuntimeError("boom")
    with pytest.raises(WorkbenchError, match="boom.*undoing its changes failed too.*disk gone"):
        _apply(ed, tiny)
    assert weights_hash(model) == h  # the recorder's restore still ran
