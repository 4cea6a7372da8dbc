"""`rmu` and `simnpo` on the shipped model's forget canaries: they forget, keep what the retain
set holds, follow their papers' losses, and validate their hyperparameters. (The contract on
every tiny architecture is tests/test_editor_grid.py's.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from editors.gradient_ascent import SimNPOEditor, SimNPOHParams
from editors.rmu import RMUEditor, RMUHParams, _activations
from workbench.core.arch import get_adapter
from workbench.core.errors import InputError
from workbench.core.paths import BENCHMARKS, FORGET_SETS
from workbench.editing.contract import EditContext
from workbench.eval.evaluate import evaluate_forgets
from workbench.eval.requests import load_probes, load_requests, with_retain
from workbench.world.measure import fact_accuracy

from .conftest import model_left_unchanged

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setting(shipped_model):
    """The last 12 forget canaries (seen 32-256 times), with the kept canaries, half the kept
    quotes and reading passages as the retain set; the other half of the quotes is scored:
    memorized text the editors never saw."""
    model, tok = shipped_model
    forget = load_requests(FORGET_SETS["canaries"])[-12:]
    memorized = load_probes(BENCHMARKS / "retain_memorized.jsonl")
    canaries = [p for p in memorized if p.group != "quote"]
    quotes = [p for p in memorized if p.group == "quote"]
    retain = canaries + quotes[::2] + load_probes(BENCHMARKS / "skills_reading.jsonl")[:30]
    return model, tok, get_adapter(model), with_retain(forget, retain), quotes[1::2]


@pytest.fixture
def base(setting):
    with model_left_unchanged(setting[0]):
        yield setting


# RMU's run takes 30 s of the default run's 10 minutes: slow (`-m slow`); its steering is checked on
# the shipped model by test_rmu_steers_... and its contract on every family by the grid
@pytest.mark.parametrize("cls, hp", [pytest.param(RMUEditor, RMUHParams(), marks=pytest.mark.slow),
                                     (SimNPOEditor, SimNPOHParams())])
def test_forgets_the_canaries_and_keeps_the_quotes(base, cls, hp):
    model, tok, adapter, requests, kept = base
    before = evaluate_forgets(model, tok, requests, exposure_samples=0)["mean"]["strict_recitation"]
    patch = cls(hp.derive(adapter)).edit(EditContext(model, tok, adapter, 0), requests)
    try:
        after = evaluate_forgets(model, tok, requests, exposure_samples=0)["mean"]["strict_recitation"]
        kept_after = fact_accuracy(model, tok, kept)["exact"]
    finally:
        patch.revert(model, adapter)
    assert before == 1.0 and after <= 0.25 and kept_after >= 0.8, (after, kept_after)
    assert patch.meta["retain_used"] and patch.meta["loss_last"] < patch.meta["loss_first"]


def test_rmu_steers_the_forget_activations_toward_the_scaled_direction(base):
    model, tok, adapter, requests, _ = base
    hp = RMUHParams(steps=10).derive(adapter)
    assert hp.layer == 1  # ~25% of 4 layers; updates layers 0 and 1 (there is no layer -1)
    pairs = [p + a for p, a in ((tok(r.prefix)["input_ids"], tok(" " + r.suffix, add_special_tokens=False)["input_ids"])
                                for r in requests)]
    block = adapter.layer(hp.layer)
    with torch.no_grad():
        h0 = _activations(model, block, pairs, tok.pad_token_id)  # (tokens, d)
    patch = RMUEditor(hp).edit(EditContext(model, tok, adapter, 0), requests)
    try:
        with torch.no_grad():
            h1 = _activations(model, block, pairs, tok.pad_token_id)
    finally:
        patch.revert(model, adapter)
    # adaptive coefficient: adaptive_scale x the mean token norm before training
    assert patch.meta["steering_coeff"] == pytest.approx(hp.adaptive_scale * h0.norm(dim=-1).mean().item(), rel=1e-5)
    assert patch.meta["trained_layers"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert {w.name for w in patch.weights} == {n + ".weight" for n in patch.meta["trained_layers"]}
    # the forget activations moved toward c·u, u the edit seed's random unit direction
    u = torch.rand(adapter.hidden_size, generator=torch.Generator().manual_seed(0))  # (d,)
    target = patch.meta["steering_coeff"] * u / u.norm()
    assert F.mse_loss(h1, target.expand_as(h1)) < 0.9 * F.mse_loss(h0, target.expand_as(h0))
    explicit = RMUEditor(RMUHParams(steering_coeff=7.0, steps=1).derive(adapter)).edit(
        EditContext(model, tok, adapter, 0), requests)
    explicit.revert(model, adapter)
    assert explicit.meta["steering_coeff"] == 7.0


def test_simnpo_loss_is_the_papers(base):
    model, tok, adapter, requests, _ = base
    hp = SimNPOHParams(beta=2.0, delta=0.5, forget_weight=0.25)
    pairs = [(tok(r.prefix)["input_ids"], tok(" " + r.suffix, add_special_tokens=False)["input_ids"]) for r in requests[:3]]
    got = SimNPOEditor(hp)._forget_loss(model, None, pairs, hp, tok.pad_token_id)
    want = 0.0
    for p, a in pairs:  # by hand: mean NLL of the answer tokens, one sequence at a time
        with torch.no_grad():
            logits = model(torch.tensor([p + a])).logits[0, len(p) - 1:-1]  # (|a|, vocab)
        nll = F.cross_entropy(logits, torch.tensor(a)).item()
        want += -(2 / 2.0) * F.logsigmoid(torch.tensor(2.0 * (nll - 0.5))).item() / 3
    assert got.item() == pytest.approx(0.25 * want, rel=1e-4)


@pytest.mark.parametrize("cls, params, field", [
    (RMUHParams, {"alpha": -1}, "alpha"), (RMUHParams, {"lr": 0}, "lr"), (RMUHParams, {"steps": 0}, "steps"),
    (RMUHParams, {"steering_coeff": -2}, "steering_coeff"), (RMUHParams, {"update_layers": 0}, "update_layers"),
    (RMUHParams, {"layer": 1.5}, "layer"), (SimNPOHParams, {"beta": 0}, "beta"), (SimNPOHParams, {"delta": -1}, "delta"),
    (SimNPOHParams, {"forget_weight": 0}, "forget_weight"),
])
def test_bad_hyperparameters_name_the_field(cls, params, field):
    with pytest.raises(InputError) as e:
        cls(**params)
    assert e.value.field == field


def test_registered_under_their_names():
    from workbench.editing.registry import get_editor
    assert get_editor("rmu") is RMUEditor and get_editor("simnpo") is SimNPOEditor
