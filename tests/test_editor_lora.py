"""`lora` (one peft LoRA adapter per edit batch) and `merge` (peft's add_weighted_adapter) on
the shipped world model: quality, exact revert, peft's sharp edges as errors, the ledger.

Every test leaves the session-wide shipped model as it found it (checked by weights hash).
"""
from __future__ import annotations

import pytest
import torch

from editors.lora import LoRAEditor, LoRAHParams
from editors.lora.merge import COMBINATIONS, MergeEditor, MergeHParams
from editors.lora.store import STORE, adapter_names, lora_adapter
from workbench.core.arch import get_adapter as arch_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.eval.evaluate import evaluate_edits, reference
from workbench.core.patch import weights_hash
from workbench.eval.requests import load_requests
from workbench.eval.scoring import right_pad

from .conftest import REPO, assert_patch_round_trips, model_left_unchanged

pytestmark = pytest.mark.usefixtures("one_thread")
REQS = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:12]
FAST = dict(layers=(1, 2), steps=40)


@pytest.fixture
def base(shipped_model):
    model, tok = shipped_model
    adapter = arch_adapter(model)
    keys = list(model.state_dict())
    with model_left_unchanged(model):
        yield model, tok, adapter
    assert list(model.state_dict()) == keys and not hasattr(model, STORE)
    assert "peft_config" not in vars(model)


def _lora(model, tok, adapter, reqs, seed=0, **kw):
    return LoRAEditor(LoRAHParams(**{**FAST, **kw})).edit(EditContext(model, tok, adapter, seed=seed), reqs)


def _merge(model, tok, adapter, **kw):
    return MergeEditor(MergeHParams(**kw)).edit(EditContext(model, tok, adapter), REQS)


def _logits(model, tok):
    ids, mask = right_pad(tok([r.prompt for r in REQS])["input_ids"], tok.pad_token_id)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_an_adapter_writes_its_batch_and_reverts_bit_for_bit(base, tmp_path):
    model, tok, adapter = base
    ref = reference(model, tok, REQS)
    h0, keys0 = weights_hash(model), set(model.state_dict())
    patch = _lora(model, tok, adapter, REQS)
    h1 = weights_hash(model)
    assert h1 != h0 and adapter_names(model) == ["lora0"]
    mean = evaluate_edits(model, tok, REQS, ref)["mean"]
    assert mean["reliability"] >= 0.9 and mean["generality"] >= 0.6, mean
    # The live modules were never replaced: only the store's buffers joined the state dict.
    keys1 = set(model.state_dict())
    assert keys0 <= keys1 and all(k.startswith(STORE + ".") for k in keys1 - keys0)
    att = patch.attachments[0]
    assert att.lora_config["r"] == 8 and att.lora_config["target_modules"] == [
        adapter.module_name(adapter.mlp_out(1)), adapter.module_name(adapter.mlp_out(2))]
    assert sorted(att.state()) == sorted(f"{m}.lora_{x}.weight" for m in att.lora_config["target_modules"]
                                         for x in "AB")  # peft's adapter keys
    assert_patch_round_trips(model, adapter, patch, h0, h1, tmp_path / "lora.safetensors")


def test_cat_merge_equals_the_sum_of_its_sources_and_switches_them_off(base):
    model, tok, adapter = base
    h0 = weights_hash(model)
    sources = [_lora(model, tok, adapter, REQS[4 * i:4 * i + 4], seed=i, r=4 + 2 * i) for i in range(3)]
    h_sources, summed = weights_hash(model), _logits(model, tok)
    try:
        for fold in (False, True):
            patch = _merge(model, tok, adapter, combination_type="cat", weights=(1.0, 1.0, 1.0), fold=fold)
            assert patch.meta["merged_rank"] == 4 + 6 + 8
            assert not any(bool(lora_adapter(model, n).enabled) for n in ("lora0", "lora1", "lora2"))
            assert (STORE + ".adapters.lora3.enabled" in model.state_dict()) is not fold
            torch.testing.assert_close(_logits(model, tok), summed, atol=2e-4, rtol=1e-4)
            patch.revert(model, adapter)
            assert weights_hash(model) == h_sources
            assert all(bool(lora_adapter(model, n).enabled) for n in ("lora0", "lora1", "lora2"))
        # A merge changes the model; linear needs equal ranks, so it is refused here by name.
        with pytest.raises(InputError, match="equal rank.*cat and the \\*_svd"):
            _merge(model, tok, adapter, combination_type="linear")
        assert weights_hash(model) == h_sources
    finally:
        for p in reversed(sources):
            p.revert(model, adapter)
    assert weights_hash(model) == h0


def test_every_peft_combination_type_merges_and_reverts(base):
    model, tok, adapter = base
    sources = [_lora(model, tok, adapter, REQS[6 * i:6 * i + 6], seed=i, steps=10) for i in range(2)]
    h = weights_hash(model)
    try:
        for ct in COMBINATIONS:
            density = None if ct in ("linear", "cat", "svd") else 0.5
            # peft 0.21 takes negative weights for every type (sign-aware): a subtraction stays finite
            patch = _merge(model, tok, adapter, combination_type=ct, density=density, weights=(0.7, -0.3))
            att = patch.attachments[0]
            assert att.name == "lora2" and all(torch.isfinite(t).all() for t in att.state().values()), ct
            assert weights_hash(model) != h
            patch.revert(model, adapter)
            assert weights_hash(model) == h, ct
    finally:
        for p in reversed(sources):
            p.revert(model, adapter)


def test_peft_sharp_edges_are_clear_errors_that_change_nothing(base):
    model, tok, adapter = base
    with pytest.raises(InputError, match="no enabled LoRA adapter"):
        _merge(model, tok, adapter)
    src = _lora(model, tok, adapter, REQS[:2], steps=2)
    h = weights_hash(model)
    try:
        cases = [(dict(adapters=("lora0", "nope")), "no LoRA adapter named 'nope'"),
                 (dict(adapters=("lora0",), name="lora0"), "already exists"),
                 (dict(adapters=("lora0",), weights=(1.0, 2.0)), "2 weight"),
                 (dict(adapters=("lora0", "lora0")), "named twice"),
                 (dict(density=1.5), "density|\\(0, 1\\]"),
                 (dict(combination_type="average"), "combination_type|must be one of")]
        for kw, msg in cases:
            with pytest.raises(InputError, match=msg):
                _merge(model, tok, adapter, **kw)
            assert weights_hash(model) == h and adapter_names(model) == ["lora0"]
        with pytest.raises(InputError, match="already exists"):
            _lora(model, tok, adapter, REQS[:2], name="lora0", steps=1)
        for bad in (dict(r=0), dict(alpha=-1.0), dict(targets="attention"), dict(layers=(9,)), dict(name="a.b")):
            with pytest.raises(InputError):
                LoRAHParams(**bad).derive(adapter)
        assert weights_hash(model) == h
    finally:
        src.revert(model, adapter)


def test_adapters_and_merges_go_through_the_ledger_and_roll_back(tmp_path):
    from workbench.editing.session import Workbench
    wb = Workbench(None, tmp_path / "ws")
    try:
        base_hash = wb.weights_hash()
        for i in range(2):
            wb.edit("lora", REQS[3 * i:3 * i + 3], params={"layers": "2", "steps": "15", "r": "4"})
        merged = wb.edit("merge", REQS[:6], params={"combination_type": "ties", "density": "0.8"})
        # The ledger records what ran: the default selection resolved to the enabled adapters,
        # and the default equal weights.
        assert merged.kind == "edit" and merged.hparams["adapters"] == ["lora0", "lora1"]
        assert merged.hparams["weights"] == [0.5, 0.5]
        assert wb.verify() == []
        wb.undo()  # the merge: both sources are switched back on
        assert all(bool(lora_adapter(wb.model, n).enabled) for n in ("lora0", "lora1"))
        h_on = wb.weights_hash()
        off = wb.edit("lora-switch", REQS[3:6], params={"adapters": "lora1", "enabled": "false"})
        assert off.metrics_after["reliability"] < off.metrics_before["reliability"]  # lora1's edits fade
        assert not bool(lora_adapter(wb.model, "lora1").enabled) and wb.weights_hash() != h_on
        with pytest.raises(InputError, match="already off"):
            wb.edit("lora-switch", REQS[3:6], params={"adapters": "lora1", "enabled": "false"})
        wb.undo()
        assert wb.weights_hash() == h_on
        wb.rollback("base")
        assert wb.weights_hash() == base_hash and not hasattr(wb.model, STORE)
        assert wb.verify() == []
    finally:
        wb.close()


@pytest.mark.parametrize("arch", __import__("tests.tiny_models", fromlist=["MODEL_TYPES"]).MODEL_TYPES)
def test_lora_merge_and_switch_on_every_architecture(arch):
    """On each tiny family: two adapters, a cat merge (= their sum), a folded merge, a switch,
    each reverting bit for bit; GPT-2's Conv1D goes through peft's fan_in_fan_out."""
    from tests.tiny_models import tiny_model, tiny_tokenizer
    from workbench.eval.requests import EditRequest
    from workbench.eval.scoring import encode_pairs, score_answers

    from editors.lora.switch import LoRASwitchEditor, SwitchHParams
    model, tok = tiny_model(arch), tiny_tokenizer()
    adapter = arch_adapter(model)
    edits = [EditRequest("Ada lives in", "Rome"), EditRequest("Bo works at", "Acme")]
    probe = torch.tensor([tok("Ada lives in")["input_ids"]])  # (1, seq)

    def out():
        with torch.no_grad():
            return model(probe).logits

    def lp():
        return sum(score_answers(model, encode_pairs(tok, ["Ada lives in"], ["Rome"]), pad_id=tok.pad_token_id)[0]
                   .logprobs)

    h0, y0, lp0 = weights_hash(model), out(), lp()
    ctx = EditContext(model, tok, adapter)
    sources = [LoRAEditor(LoRAHParams(steps=30, lr=2e-2)).edit(ctx, [edits[0]])]
    assert lp() > lp0 + 1.0
    sources.append(LoRAEditor(LoRAHParams(steps=5, lr=2e-2)).edit(ctx, [edits[1]]))
    h2, y2 = weights_hash(model), out()
    for fold in (False, True):
        m = MergeEditor(MergeHParams(combination_type="cat", weights=(1.0, 1.0), fold=fold)).edit(ctx, edits)
        assert bool(m.weights) is fold
        torch.testing.assert_close(out(), y2, atol=1e-4, rtol=1e-4)
        m.revert(model, adapter)
        assert weights_hash(model) == h2 and torch.equal(out(), y2)
    s = LoRASwitchEditor(SwitchHParams(adapters=("lora0",), enabled=False)).edit(ctx, edits)
    assert not torch.allclose(out(), y2)
    s.revert(model, adapter)
    for p in reversed(sources):
        p.revert(model, adapter)
    assert weights_hash(model) == h0 and torch.equal(out(), y0)
