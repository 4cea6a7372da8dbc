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
    model = tiny_model("llama")
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


def test_auto_candidates_are_every_run_of_adjacent_layers():
    assert K.candidate_layers(4, 2) == [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (2, 3)]
    assert K.candidate_layers(2, 5) == [(0,), (1,), (0, 1)]


def _cand(layers, rho, loose, ext, reading, ppl):
    return {"layers": layers, "rho": rho, "loose_recitation": loose, "extraction_strength": ext,
            "suites": {"reading": reading}, "perplexity": ppl}


def test_auto_rule_picks_the_lowest_recitation_within_the_guard():
    before = {"suites": {"reading": 0.8}, "perplexity": 3.0}
    cands = [_cand([0], 0.6, 0.0, 0.0, 0.70, 3.1),   # reading 0.875 of before: outside the 0.95 guard
             _cand([1], 0.6, 0.2, 0.1, 0.79, 3.1),
             _cand([1], 0.9, 0.2, 0.1, 0.80, 3.0),   # same recitation, higher rho: the smaller change
             _cand([1, 2], 0.6, 0.1, 0.3, 0.78, 3.6),  # perplexity 1.2x: outside the 1.15 guard
             _cand([2], 0.7, 0.3, 0.0, 0.80, 3.0)]
    assert K.choose_candidate(before, cands, 0.95, 1.15) == (2, True)
    # With a looser perplexity guard the two-layer run's lower recitation wins.
    assert K.choose_candidate(before, cands, 0.95, 1.25) == (3, True)
    # Nothing within the guard: the candidate whose worst share is highest.
    assert K.choose_candidate(before, cands[:2], 0.999, 1.0) == (1, False)


@pytest.mark.slow  # 18 s; choose_candidate's rule is tested above without a model
def test_auto_sweeps_on_the_shipped_model_and_the_ledger_records_the_choice(tmp_path, monkeypatch):
    from workbench.core.paths import BENCHMARKS, DEFAULT_MODEL
    from workbench.editing.session import Workbench
    from workbench.eval.requests import load_requests
    import editors.common.corpus as C
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip("the shipped model is absent")
    dev = C.default_dev_suites()
    assert set(dev) == {"reading", "rules"} and all(len(v) >= 50 for v in dev.values())
    # A smaller dev split keeps the test quick; the rule is the same.
    monkeypatch.setattr(C, "default_dev_suites", lambda: {k: v[:20] for k, v in dev.items()})
    canaries = load_requests(BENCHMARKS / "forget_canaries.jsonl")[:6]
    wb = Workbench(None, tmp_path / "ws")
    try:
        base = weights_hash(wb.model)
        ev = wb.edit("kfac", canaries, {"auto": "true", "auto_rhos": "0.6,0.9", "auto_span": "1",
                                        "max_tokens": "20480", "block_size": "64"})
        sweep = wb.patch(ev.id).meta["auto"]
        assert len(sweep["candidates"]) == wb.adapter.num_layers * 2
        assert sweep["dev_forget_ids"] == [r.id for r in canaries[::2]]
        assert sweep["dev_text"] == "world dev prose"  # the perplexity guard reads prose, not biographies
        chosen = sweep["candidates"][sweep["chosen"]]
        # The ledger records what ran: the sweep's choice, not the default layers and rho.
        assert ev.hparams["auto"] is True
        assert ev.hparams["layers"] == chosen["layers"] and ev.hparams["rho"] == chosen["rho"]
        assert wb.patch(ev.id).meta["rho"] == chosen["rho"]
        if sweep["eligible"]:
            assert chosen["loose_recitation"] == min(c["loose_recitation"] for c in sweep["candidates"]
                                                     if c["perplexity"] <= 1.15 * sweep["before"]["perplexity"]
                                                     and all(c["suites"][n] >= 0.95 * sweep["before"]["suites"][n]
                                                             for n in c["suites"]))
        assert 0 <= ev.hparams["rho"] <= 1 and ev.metrics_after["strict_recitation"] <= ev.metrics_before["strict_recitation"]
        wb.rollback("base")
        assert weights_hash(wb.model) == base
    finally:
        wb.close()


def test_output_projection_is_edited_when_asked():
    model = tiny_model("llama")
    ad = get_adapter(model)
    blocks = torch.randint(3, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    f = K.collect_factors(model, ad, blocks, (1,), fisher="empirical", batch_size=2, seed=0, projections="in+out")
    d_ff = ad.num_neurons(1)
    assert f["A.1.out"].shape == (d_ff, d_ff) and f["G.1.out"].shape == (ad.weight(ad.mlp_out(1)).shape[0],) * 2
    names = [ad.param_name(m) for m, _, _ in K.targets(ad, 1, "in+out")]
    assert names[-1] == ad.param_name(ad.mlp_out(1)) and len(names) == len(ad.mlp_in(1)) + 1


def test_bos_share_measures_what_bos_rows_contribute():
    # A from two kinds of rows: BOS rows along e0 only, text rows along e1 only.
    bos_rows = torch.tensor([[3.0, 0.0]] * 4)
    text_rows = torch.tensor([[0.0, 1.0]] * 4)
    A = (bos_rows.T @ bos_rows + text_rows.T @ text_rows) / 8
    A_bos = bos_rows.T @ bos_rows / 8
    assert K.bos_share(A, A_bos, top=1) == pytest.approx(1.0)  # the top direction is all BOS
    assert K.bos_share(A, A_bos, top=2) == pytest.approx(36 / 40)


def test_dev_prose_is_of_the_held_out_kind_and_never_held_out():
    from workbench.core.paths import WORLD
    from workbench.world import World
    from workbench.world.corpus import heldout_sentences
    import editors.common.corpus as C
    if not (WORLD / "world.json").is_file():
        pytest.skip("the bundled world is absent")
    prose = C.default_dev_prose(300)
    assert len(prose) == 300 and prose == C.default_dev_prose(300)  # seeded
    held = heldout_sentences(World.load(WORLD))
    sentences = {s if s.endswith(".") else s + "." for t in prose for s in t.split(". ")}
    assert not sentences & held
    # the same grammar as the held-out text: every held-out text's sentence count and shape
    assert all(t.count(".") == 2 for t in prose)
    assert len(set(prose)) > 250
