"""K-FAC memorization removal: the math, the factors, the cache, and refusal of bad input."""
import pytest
import torch

import editors.kfac as K
from workbench.core.arch import get_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.core.patch import weights_hash
from workbench.eval.requests import ForgetRequest

from .tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_keeps_exactly_the_top_mass_components():
    # Diagonal factors: the eigenbasis is the identity, so C = W and mass(i, j) = g_i * a_j.
    a = torch.tensor([4.0, 2.0, 1.0])
    g = torch.tensor([3.0, 1.0])
    W = torch.arange(1.0, 7.0).view(2, 3)
    mass = g[:, None] * a[None, :]  # [[12, 6, 3], [4, 2, 1]], total 28
    W_new, info = K.keep_top_curvature(W, torch.diag(a), torch.diag(g), rho=0.6)
    # Sorted masses 12, 6, 4, ...: cumulative 12/28 = .43 < .6, 18/28 = .64 >= .6 -> keep two.
    assert info["kept"] == 2 and info["components"] == 6
    keep = torch.tensor([[True, True, False], [False, False, False]])
    assert torch.allclose(W_new, W * keep, atol=1e-6)
    full, info1 = K.keep_top_curvature(W, torch.diag(a), torch.diag(g), rho=1.0)
    assert torch.allclose(full, W, atol=1e-6) and info1["kept"] == 6
    assert mass.sum() == 28


def test_rotation_is_undone_for_non_diagonal_factors():
    torch.manual_seed(0)
    W = torch.randn(5, 4)
    A = (lambda x: x @ x.T)(torch.randn(4, 6))
    G = (lambda x: x @ x.T)(torch.randn(5, 7))
    same, _ = K.keep_top_curvature(W, A, G, rho=1.0)
    assert torch.allclose(same, W, atol=1e-5)
    low, info = K.keep_top_curvature(W, A, G, rho=0.5)
    assert info["kept"] < 20 and not torch.allclose(low, W, atol=1e-3)


def test_factors_equal_direct_computation():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    ad = get_adapter(model)
    blocks = torch.randint(3, 200, (3, 16), generator=torch.Generator().manual_seed(0))
    f = K.collect_factors(model, ad, blocks, (1,), fisher="empirical", batch_size=2, seed=0)
    # A directly: the gate projection's inputs.
    seen = []
    h = ad.mlp_in(1)[0].register_forward_hook(lambda m, a, o: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=blocks)
    h.remove()
    a = torch.cat(seen)
    assert torch.allclose(f["A.1"], a.T @ a / blocks.numel(), atol=1e-5)
    assert f["G.1.0"].shape == (ad.num_neurons(1),) * 2 and f["G.1.1"].shape == (ad.num_neurons(1),) * 2
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_factors_are_cached_and_reused(monkeypatch):
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    ad = get_adapter(model)
    calls = []
    real = K.collect_factors
    monkeypatch.setattr(K, "collect_factors", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(K, "default_corpus", lambda: ["the cat sat on the mat"] * 200)
    ed = K.KFACEditor(K.KFACHParams(max_tokens=2000, block_size=32).derive(ad))
    f1, hit1 = ed.factors(EditContext(model, tok, ad))
    f2, hit2 = ed.factors(EditContext(model, tok, ad))
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert all(torch.equal(f1[k], f2[k]) for k in f1)


@pytest.mark.parametrize("kwargs, field", [(dict(rho=0.0), "rho"), (dict(rho=1.5), "rho"),
                                           (dict(fisher="x"), "fisher"), (dict(max_tokens=10), "max_tokens")])
def test_bad_hyperparameters_name_the_field(kwargs, field):
    with pytest.raises(InputError) as e:
        K.KFACHParams(**kwargs)
    assert e.value.field == field


def test_missing_layer_and_unreproduced_forget_set_are_refused():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    ad = get_adapter(model)
    with pytest.raises(InputError, match="must be in 0..2") as e:
        K.KFACHParams(layers=(7,)).derive(ad)
    assert e.value.field == "layers"
    h = weights_hash(model)
    ed = K.KFACEditor(K.KFACHParams(max_tokens=2000).derive(ad))
    with pytest.raises(InputError, match="does not reproduce"):
        ed.edit(EditContext(model, tok, ad), [ForgetRequest("text", "The code is", "zq xv wk jj")])
    assert weights_hash(model) == h
