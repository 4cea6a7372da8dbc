"""`ga` and `npo` on the shipped world model (forgetting, retain, exact revert, the reference
model, validation) and the editor grid contract on a few tiny architectures (repeated here
with the classes until their entry points are registered).

Every shipped-model test leaves the session-wide model as it found it (checked by hash).
"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from editors import gradient_ascent as mod
from editors.gradient_ascent import GAEditor, GAHParams, NPOEditor, NPOHParams
from workbench.core.arch import get_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.eval.evaluate import evaluate_forgets
from workbench.core.patch import Patch, weights_hash
from workbench.eval.requests import EditRequest, load_probes, load_requests, with_retain

from .conftest import REPO, assert_patch_round_trips, model_left_unchanged

EDITORS = {"ga": (GAEditor, GAHParams), "npo": (NPOEditor, NPOHParams)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(shipped_model):
    """The 12 facts of 2 forget-split people, with 60 retain-split probes attached."""
    model, tok = shipped_model
    bench = REPO / "data" / "benchmarks"
    forget = load_requests(bench / "forget_people.jsonl")[:12]
    requests = with_retain(forget, load_probes(bench / "retain.jsonl")[:60])
    return model, tok, get_adapter(model), requests


@pytest.fixture
def base(world):
    with model_left_unchanged(world[0]):
        yield world


def _edit(name, model, tok, adapter, requests, seed=0, **params) -> Patch:
    cls, hp = EDITORS[name]
    return cls(hp(**params).derive(adapter)).edit(EditContext(model, tok, adapter, seed), requests)


@pytest.mark.parametrize("name, params", [("ga", {}), ("ga", {"retain_weight": 1.0}), ("npo", {})])
def test_forget_recitation_drops_and_retain_is_reported(base, name, params, record_property):
    model, tok, adapter, requests = base
    before = evaluate_forgets(model, tok, requests)["mean"]
    patch = _edit(name, model, tok, adapter, requests, **params)
    try:
        after = evaluate_forgets(model, tok, requests)["mean"]
    finally:
        patch.revert(model, adapter)
    record_property(f"{name}_{params}", {"before": before, "after": after})
    assert after["strict_recitation"] < before["strict_recitation"]
    assert after["suffix_logprob"] < before["suffix_logprob"]
    if name == "npo" or params.get("retain_weight"):  # with a retain term the retain set survives
        assert after["retain_acc"] >= 0.7, after
        assert patch.meta["retain_used"]


def test_patch_records_every_trained_parameter_and_reverts_bit_for_bit(base, tmp_path):
    model, tok, adapter, requests = base
    h0 = weights_hash(model)
    patch = _edit("npo", model, tok, adapter, requests[:4], steps=2)
    h1 = weights_hash(model)
    mlp = {adapter.param_name(m) for i in range(adapter.num_layers) for m in [*adapter.mlp_in(i), adapter.mlp_out(i)]}
    assert {w.name for w in patch.weights} == mlp and h1 != h0
    assert_patch_round_trips(model, adapter, patch, h0, h1, tmp_path / "npo.safetensors")


def test_params_all_trains_beyond_the_mlp(base):
    model, tok, adapter, requests = base
    patch = _edit("ga", model, tok, adapter, requests[:2], steps=1, params="all")
    patch.revert(model, adapter)
    names = {w.name for w in patch.weights}
    assert any("embed" in n for n in names) and any("self_attn" in n for n in names)


def test_npo_reference_model_is_frozen_and_freed(base, monkeypatch):
    model, tok, adapter, requests = base
    seen = []
    real = mod._answer_logprobs

    def spy(m, chunk, pad):
        if m is not model:
            seen.append(weakref.ref(m))
            assert not any(p.requires_grad for p in m.parameters())
        return real(m, chunk, pad)

    monkeypatch.setattr(mod, "_answer_logprobs", spy)
    patch = _edit("npo", model, tok, adapter, requests[:2], steps=2)
    patch.revert(model, adapter)
    assert seen, "NPO never consulted a reference model"
    gc.collect()
    assert all(r() is None for r in seen), "the reference copy outlived the edit"


def test_same_seed_identical_patch_and_callers_rng_kept(base):
    model, tok, adapter, requests = base
    rng = torch.get_rng_state()
    patches = []
    for _ in range(2):
        patches.append(_edit("ga", model, tok, adapter, requests[:3], seed=5, steps=2, retain_weight=1.0))
        patches[-1].revert(model, adapter)
    assert torch.equal(torch.get_rng_state(), rng)
    for a, b in zip(*(p.weights for p in patches)):
        assert a.name == b.name and torch.equal(a.after, b.after)


def test_failure_mid_edit_restores_the_model(base, monkeypatch):
    model, tok, adapter, requests = base
    real, calls = GAEditor._forget_loss, []

    def flaky(self, *args):
        calls.append(1)
        if len(calls) == 3:  # after two optimizer steps
            raise RuntimeError("boom")
        return real(self, *args)

    monkeypatch.setattr(GAEditor, "_forget_loss", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        _edit("ga", model, tok, adapter, requests[:2], steps=5)
    # `base` checks weights and requires_grad flags are back


@pytest.mark.parametrize("name", ["ga", "npo"])
def test_rejects_edit_requests_and_empty_input(base, name):
    model, tok, adapter, _ = base
    with pytest.raises(InputError) as e:
        _edit(name, model, tok, adapter, [EditRequest("Ada lives in", "Rome")])
    assert e.value.field == "requests"
    with pytest.raises(InputError):
        _edit(name, model, tok, adapter, [])


@pytest.mark.parametrize("cls, params, field", [
    (GAHParams, {"lr": 0}, "lr"), (GAHParams, {"steps": 0}, "steps"), (GAHParams, {"retain_weight": -1}, "retain_weight"),
    (GAHParams, {"params": "attn"}, "params"), (GAHParams, {"weight_decay": -0.1}, "weight_decay"),
    (GAHParams, {"batch_size": -2}, "batch_size"), (NPOHParams, {"beta": 0}, "beta"),
    (NPOHParams, {"beta": -0.5}, "beta"), (NPOHParams, {"beta": float("inf")}, "beta"), (NPOHParams, {"lr": -1}, "lr"),
])
def test_bad_hyperparameters_name_the_field(cls, params, field):
    with pytest.raises(InputError) as e:
        cls(**params)
    assert e.value.field == field


def test_hyperparameters_describe_themselves():
    assert {d["name"] for d in NPOHParams.describe()} == {
        "lr", "steps", "retain_weight", "params", "weight_decay", "batch_size", "beta"}
    assert all(d["help"] for d in NPOHParams.describe())
    assert NPOHParams.from_strings({"beta": "0.5", "params": "all"}).beta == 0.5


# The editor contract on every tiny architecture is tests/test_editor_grid.py's job: these
# editors are registered, so the grid runs them.


@pytest.mark.parametrize("name", ["ga", "npo"])
def test_registered_under_its_name(name):
    from workbench.editing.registry import get_editor
    assert get_editor(name) is EDITORS[name][0]
