"""`lora-retrieve` (each input routed to the recorded LoRA adapter holding it, or none) and MOS-style
`lora` training, on the shipped world model and on every tiny family.

Every test on the shipped model leaves it as it found it (checked by weights hash).
"""
from __future__ import annotations

import pytest
import torch

from editors.lora import LoRAEditor, LoRAHParams
from editors.lora.retrieve import LoRARetrieveEditor, RetrieveHParams
from editors.lora.store import STORE, LoRAAdd, lora_adapter
from workbench.core.arch import get_adapter
from workbench.core.errors import InputError
from workbench.core.patch import weights_hash
from workbench.editing.contract import EditContext
from workbench.eval.evaluate import evaluate_edits, reference
from workbench.eval.requests import load_requests
from workbench.eval.routing import all_probes, routes

from .conftest import REPO, model_left_unchanged

pytestmark = pytest.mark.usefixtures("one_thread")
REQS = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:16]
LAST = dict(layers=(3,), steps=60)  # the shipped model's last block: retrieval reads keys at its input


@pytest.fixture
def base(shipped_model):
    model, tok = shipped_model
    adapter = get_adapter(model)
    with model_left_unchanged(model):
        yield model, tok, adapter
    assert not hasattr(model, STORE)


def _two_adapters(model, tok, adapter, **kw):
    """lora0 on REQS[:8], lora1 on REQS[8:], each trained alone; both left switched off."""
    from editors.lora.switch import LoRASwitchEditor, SwitchHParams
    ctx = EditContext(model, tok, adapter)
    patches = []
    for i in range(2):
        patches.append(LoRAEditor(LoRAHParams(**{**LAST, **kw, "name": f"lora{i}"})).edit(
            EditContext(model, tok, adapter, seed=i), REQS[8 * i:8 * i + 8]))
        patches.append(LoRASwitchEditor(SwitchHParams(adapters=(f"lora{i}",), enabled=False)).edit(ctx, REQS))
    return patches


def _retrieve(model, tok, adapter, **kw):
    hp = RetrieveHParams(**{"adapters": ("lora0", "lora1"), **kw})
    return LoRARetrieveEditor(hp).edit(EditContext(model, tok, adapter), REQS)


def _undo(model, adapter, patches):
    for p in reversed(patches):
        p.revert(model, adapter)


@torch.no_grad()
def _logits_with_only(model, x, name):
    """Logits of ids `x` with the retrieval in force set aside (the adapters' flags rule, all off
    here) and only adapter `name` switched on (None: no adapter)."""
    router = getattr(model, STORE).routers[-1]
    router.on = False
    try:
        if name is not None:
            lora_adapter(model, name).enabled.fill_(True)
        return model(input_ids=x).logits
    finally:
        router.on = True
        if name is not None:
            lora_adapter(model, name).enabled.fill_(False)


def test_each_edit_reads_its_adapter_and_locality_reads_none(base):
    model, tok, adapter = base
    ref = reference(model, tok, REQS)
    patches = _two_adapters(model, tok, adapter)
    try:
        h_off = weights_hash(model)
        patches.append(_retrieve(model, tok, adapter, refine=False))
        assert weights_hash(model) != h_off  # the keys and threshold are in the state dict
        got = routes(model, tok, [r.prompt for r in REQS], [r.target_new for r in REQS])
        assert [final for _, final in got] == ["lora0"] * 8 + ["lora1"] * 8
        loc = routes(model, tok, [q.prompt for r in REQS for q in r.locality],
                     [q.answer for r in REQS for q in r.locality])
        assert sum(final is None for _, final in loc) / len(loc) >= 0.9
        mean = evaluate_edits(model, tok, REQS, ref)["mean"]
        assert mean["reliability"] >= 0.95 and mean["locality"] >= 0.95, mean
        # a row routed to none is computed exactly as with every adapter off
        from workbench.eval.scoring import encode_pairs
        none_rows = [i for i, (_, final) in enumerate(loc) if final is None][:4]
        probes = [(q.prompt, q.answer) for r in REQS for q in r.locality]
        for i in none_rows:
            p, a = encode_pairs(tok, [probes[i][0]], [probes[i][1]])[0]
            x = torch.tensor([p + a])
            with torch.no_grad():
                routed = model(input_ids=x).logits
            assert torch.equal(routed, _logits_with_only(model, x, None))  # both adapters off
    finally:
        _undo(model, adapter, patches)


def test_the_choice_is_the_same_one_at_a_time_or_batched_and_held_through_generation(base):
    model, tok, adapter = base
    patches = _two_adapters(model, tok, adapter)
    try:
        patches.append(_retrieve(model, tok, adapter))
        prompts, answers, _ = all_probes(REQS, [None] * len(REQS))
        batched = routes(model, tok, prompts, answers, batch_size=32)
        assert routes(model, tok, prompts, answers, batch_size=1) == batched
        assert len({final for _, final in batched}) == 3  # lora0, lora1 and none all occur
        # generation decides on the prompt and keeps that adapter for every new token (the cache
        # carries the choice): the greedy continuation is the new target, one at a time or left-padded
        from workbench.eval.scoring import greedy_continuations
        ids = [tok(r.prompt)["input_ids"] for r in REQS[:4]] + [tok(r.prompt)["input_ids"] for r in REQS[8:12]]
        want = [tok(" " + r.target_new, add_special_tokens=False)["input_ids"] for r in REQS[:4] + REQS[8:12]]
        together = greedy_continuations(model, ids, [len(w) for w in want], pad_id=tok.pad_token_id)
        alone = [greedy_continuations(model, [i], [len(w)], pad_id=tok.pad_token_id)[0] for i, w in zip(ids, want)]
        assert together == alone
        assert sum(g == w for g, w in zip(together, want)) >= 7
    finally:
        _undo(model, adapter, patches)


def test_refined_choices_are_what_the_model_computes(base):
    model, tok, adapter = base
    patches = _two_adapters(model, tok, adapter)
    try:
        p = _retrieve(model, tok, adapter, refine=True)
        patches.append(p)
        assert p.meta["refine_layer"] == 3 and p.meta["key_layer"] == 3
        assert -1 <= p.meta["late_threshold"] <= 1 and p.meta["calibration"]["negatives"] == 16
        prompts, answers, _ = all_probes(REQS, [None] * len(REQS))
        got = routes(model, tok, prompts, answers)
        # the edits themselves match their own keys exactly at the first stage
        assert [first for first, _ in got[:16]] == ["lora0"] * 8 + ["lora1"] * 8
        # what the refined choice says is what the model computes: the row's logits equal those of
        # the adapter it names switched on alone (or of no adapter)
        from workbench.eval.scoring import encode_pairs
        pairs = encode_pairs(tok, prompts, answers)
        for (_, final), (pi, ai) in list(zip(got, pairs))[16::3]:
            x = torch.tensor([pi + ai])
            with torch.no_grad():
                routed = model(input_ids=x).logits
            torch.testing.assert_close(routed, _logits_with_only(model, x, final), atol=2e-5, rtol=1e-4)
    finally:
        _undo(model, adapter, patches)


def test_retrieval_on_off_and_its_adapter_set_are_ledger_edits_that_revert_exactly(tmp_path):
    from workbench.editing.session import Workbench
    wb = Workbench(None, tmp_path / "ws")
    try:
        base_hash = wb.weights_hash()
        for i in range(2):
            wb.edit("lora", REQS[8 * i:8 * i + 4], {"layers": "3", "steps": "40", "name": f"lora{i}"})
        h_on = wb.weights_hash()
        on = wb.edit("lora-retrieve", REQS[:4] + REQS[8:12], {"threshold": "0.9"})
        assert on.hparams["adapters"] == ["lora0", "lora1"]  # the default set, resolved and recorded
        h_r = wb.weights_hash()
        wb.edit("lora-retrieve", REQS[:4], {"enabled": "false"})
        assert wb.weights_hash() not in (h_r, h_on)
        wb.undo()
        assert wb.weights_hash() == h_r
        wb.edit("lora-retrieve", REQS[:4], {"adapters": "lora0", "threshold": "0.9"})  # lora1 leaves the set
        assert wb.weights_hash() != h_r
        assert wb.verify() == []
        wb.undo()
        wb.undo()
        assert wb.weights_hash() == h_on
        wb.rollback("base")
        assert wb.weights_hash() == base_hash and not hasattr(wb.model, STORE)
    finally:
        wb.close()


def test_refusals_name_the_field_and_change_nothing(base):
    model, tok, adapter = base
    ctx = EditContext(model, tok, adapter)
    h0 = weights_hash(model)
    with pytest.raises(InputError, match="no LoRA adapters"):
        LoRARetrieveEditor(RetrieveHParams()).edit(ctx, REQS)
    with pytest.raises(InputError) as e:
        RetrieveHParams(threshold=1.5)
    assert e.value.field == "threshold"
    p0 = LoRAEditor(LoRAHParams(layers=(0, 3), steps=3, name="early")).edit(ctx, REQS[:2])
    try:
        h1 = weights_hash(model)
        with pytest.raises(InputError, match="block 0") as e:
            LoRARetrieveEditor(RetrieveHParams(adapters=("early",))).edit(ctx, REQS)
        assert e.value.field == "adapters" and weights_hash(model) == h1
    finally:
        p0.revert(model, adapter)
    p1 = LoRAEditor(LoRAHParams(layers=(3,), targets="mlp", steps=3, name="both")).edit(ctx, REQS[:2])
    try:
        with pytest.raises(InputError, match="MLP output only") as e:
            LoRARetrieveEditor(RetrieveHParams(adapters=("both",))).edit(ctx, REQS)
        assert e.value.field == "refine"
    finally:
        p1.revert(model, adapter)
    # refinement swaps adapters at the last adapted block: one that does not adapt it is refused
    p2 = [LoRAEditor(LoRAHParams(layers=(i,), steps=3, name=f"at{i}")).edit(ctx, REQS[:2]) for i in (2, 3)]
    try:
        with pytest.raises(InputError, match="'at2' does not adapt its MLP output") as e:
            LoRARetrieveEditor(RetrieveHParams(adapters=("at2", "at3"))).edit(ctx, REQS)
        assert e.value.field == "refine"
    finally:
        _undo(model, adapter, p2)
    # an adapter recorded without its prompts (before retrieval existed)
    old = LoRAAdd("old", {"r": 2}, {adapter.module_name(adapter.mlp_out(3)): (
        torch.zeros(2, adapter.num_neurons(3)), torch.zeros(adapter.hidden_size, 2), 1.0)})
    old.attach(model, adapter)
    try:
        with pytest.raises(InputError, match="recorded no training prompts"):
            LoRARetrieveEditor(RetrieveHParams(adapters=("old",))).edit(ctx, REQS)
    finally:
        old.detach(model, adapter)
    assert weights_hash(model) == h0


def test_mos_training_pulls_a_new_adapter_toward_the_earlier_ones(base):
    model, tok, adapter = base
    ctx = EditContext(model, tok, adapter)
    patches = [LoRAEditor(LoRAHParams(**LAST, name="first")).edit(ctx, REQS[:8])]
    try:
        target = adapter.module_name(adapter.mlp_out(3))
        a0, b0, _ = lora_adapter(model, "first").factors()[target]
        dist = {}
        for m in (0.0, 0.3):
            hp = LoRAHParams(**LAST, name=f"m{int(m * 10)}", mos_momentum=m)
            p = LoRAEditor(hp).edit(EditContext(model, tok, adapter, seed=1), REQS[8:])
            if m:
                assert list(p.meta["mos_adapters"]) == ["first"]  # the default: every earlier adapter alike
            a, b, _ = lora_adapter(model, f"m{int(m * 10)}").factors()[target]
            dist[m] = float((a - a0).norm() + (b - b0).norm())
            p.revert(model, adapter)
        assert dist[0.3] < 0.8 * dist[0.0], dist
        with pytest.raises(InputError, match="same modules with the same rank") as e:
            LoRAEditor(LoRAHParams(**LAST, r=4, name="x", mos_momentum=0.1, mos_adapters=("first",))).edit(ctx, REQS[8:])
        assert e.value.field == "mos_adapters"
    finally:
        _undo(model, adapter, patches)


@pytest.mark.parametrize("arch", __import__("tests.tiny_models", fromlist=["MODEL_TYPES"]).MODEL_TYPES)
def test_retrieval_routes_and_reverts_on_every_architecture(arch):
    """On each tiny family: two adapters on the last block, retrieval over them (with refinement where
    the block's MLP output reaches the residual unchanged), each edit prompt reads its own adapter,
    and reverting gives the weights back bit for bit."""
    from tests.tiny_models import LAYERS, tiny_model, tiny_tokenizer
    from workbench.eval.requests import EditRequest
    model, tok = tiny_model(arch), tiny_tokenizer()
    adapter = get_adapter(model)
    edits = [EditRequest("Ada lives in", "Rome", subject="Ada"), EditRequest("Bo works at", "Acme", subject="Bo")]
    ctx = EditContext(model, tok, adapter)
    h0 = weights_hash(model)
    patches = [LoRAEditor(LoRAHParams(layers=(LAYERS - 1,), steps=5, lr=2e-2, name=f"a{i}")).edit(ctx, [e])
               for i, e in enumerate(edits)]
    try:
        try:
            p = LoRARetrieveEditor(RetrieveHParams(adapters=("a0", "a1"))).edit(ctx, edits)
        except InputError as e:  # post-norm MLP outputs (Gemma 2/3, OPT): refinement refused, plain retrieval works
            assert e.field == "refine", e
            p = LoRARetrieveEditor(RetrieveHParams(adapters=("a0", "a1"), refine=False)).edit(ctx, edits)
        patches.append(p)
        got = routes(model, tok, [e.prompt for e in edits], [e.target_new for e in edits])
        assert [first for first, _ in got] == ["a0", "a1"]
    finally:
        _undo(model, adapter, patches)
    assert weights_hash(model) == h0 and not hasattr(model, STORE)
