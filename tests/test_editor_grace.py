"""`grace` (GRACE codebook) on the shipped world model: lifelong editing quality, exact full
and single-key revert, save/load, batch routing, split/expand bookkeeping, hyperparameters.

Every test leaves the session-wide shipped model as it found it (checked by weights hash).
Shipped-model edits use `early_stop_loss=1e-2` (EasyEdit always runs all 100 steps; the
default is measured by the slow test at the end) so the file runs in well under a minute.
"""
from __future__ import annotations

import time

import pytest
import torch

from editors.grace import GRACEEditor, GraceHParams, route
from editors.grace.codebook import find_codebook
from workbench.core.arch import get_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.eval.evaluate import evaluate_edits, reference
from workbench.core.patch import Patch, weights_hash
from workbench.eval.requests import EditRequest, ForgetRequest, load_requests
from workbench.eval.scoring import right_pad

from .conftest import REPO, model_left_unchanged

T_SEQ = 50
FAST = {"early_stop_loss": 1e-2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(shipped_model):
    model, tok = shipped_model
    requests = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")
    return model, tok, get_adapter(model), requests


@pytest.fixture
def base(world):
    """The shipped model, asserted unchanged (bit for bit) after the test."""
    adapter = world[2]
    with model_left_unchanged(world[0]):
        yield world
    assert find_codebook(adapter, adapter.default_layer()) is None


def _edit(model, tok, adapter, requests, seed=0, **params) -> Patch:
    hp = GraceHParams(**{**FAST, **params}).derive(adapter)
    return GRACEEditor(hp).edit(EditContext(model, tok, adapter, seed=seed), requests)


def test_sequential_edits_are_reliable_local_and_revert_exactly(base, tmp_path, record_property):
    model, tok, adapter, requests = base
    reqs = requests[:T_SEQ]
    ref = reference(model, tok, reqs)
    h0 = weights_hash(model)
    t0 = time.perf_counter()
    patches = [_edit(model, tok, adapter, [r], seed=i) for i, r in enumerate(reqs)]
    per_edit = (time.perf_counter() - t0) / T_SEQ
    h1 = weights_hash(model)
    try:
        result = evaluate_edits(model, tok, reqs, ref)
    finally:
        for p in reversed(patches):
            p.revert(model, adapter)
    mean = result["mean"]
    record_property("grace_T50", {**mean, "s_per_edit": per_edit})  # generality is reported, not gated
    print(f"grace T={T_SEQ}: {mean} s/edit={per_edit:.3f}")
    assert mean["reliability"] >= 0.95 and mean["locality"] >= 0.98, mean
    assert result["per_request"][0]["reliability"] == 1.0, "the first edit was forgotten"
    assert weights_hash(model) == h0
    # Save / load round trip: the loaded patches rebuild the same codebook, bit for bit.
    for i, p in enumerate(patches):
        p.save(tmp_path / f"{i}.safetensors")
    loaded = [Patch.load(tmp_path / f"{i}.safetensors") for i in range(T_SEQ)]
    for p in loaded:
        p.apply(model, adapter)
    assert weights_hash(model) == h1
    for p in reversed(loaded):
        p.revert(model, adapter)
    assert weights_hash(model) == h0


def test_batch_equals_one_at_a_time(base):
    model, tok, adapter, requests = base
    reqs = requests[:3]
    batch = _edit(model, tok, adapter, reqs)
    h_batch = weights_hash(model)
    batch.revert(model, adapter)
    singles = [_edit(model, tok, adapter, [r], seed=i) for i, r in enumerate(reqs)]
    try:
        assert weights_hash(model) == h_batch
        assert [a.group for a in batch.attachments] == [["e0", "e1", "e2"]] * 3
    finally:
        for p in reversed(singles):
            p.revert(model, adapter)


def test_padded_batch_routes_like_single_rows(base):
    model, tok, adapter, requests = base
    reqs = requests[:4]
    patch = _edit(model, tok, adapter, reqs[:2])
    try:
        texts = [tok(r.prompt + " " + r.target_new)["input_ids"] for r in reqs]  # rows 0, 1 hit; 2, 3 do not
        ids, mask = right_pad(texts, tok.pad_token_id)
        with torch.no_grad():
            batched = model(input_ids=ids, attention_mask=mask).logits   # (4, seq, vocab)
            for r, t in enumerate(texts):
                alone = model(input_ids=torch.tensor([t])).logits[0]     # (len, vocab)
                assert torch.allclose(batched[r, :len(t)], alone, atol=1e-4), r
                assert alone[len(tok(reqs[r].prompt)["input_ids"]) - 1].argmax() == batched[r, :len(t)][
                    len(tok(reqs[r].prompt)["input_ids"]) - 1].argmax()
    finally:
        patch.revert(model, adapter)


def test_single_key_reverts_out_of_the_middle_through_the_session(tmp_path, world):
    from workbench.editing.session import Workbench
    _, _, _, requests = world
    reqs = requests[:3]
    wb = Workbench(None, tmp_path / "ws")
    try:
        ref = reference(wb.model, wb.tok, reqs)
        ids = [wb.edit("grace", [r], params=FAST).id for r in reqs]
        wb.revert(ids[0])
        rows = evaluate_edits(wb.model, wb.tok, reqs, ref)["per_request"]
        assert rows[1]["reliability"] == 1.0 and rows[2]["reliability"] == 1.0
        with torch.no_grad():  # the reverted fact is routed to no key: the base model's logits, exactly
            probe = torch.tensor([wb.tok(reqs[0].prompt)["input_ids"]])
            got = wb.model(probe).logits
        wb.revert(ids[1])
        wb.revert(ids[2])
        assert wb.weights_hash() == wb.base_hash
        with torch.no_grad():
            assert torch.equal(got, wb.model(probe).logits)
        assert wb.verify() == []
        # A key that a later edit split cannot leave alone: refused, the history unchanged.
        big = {**FAST, "eps_init": "100"}
        first = wb.edit("grace", [reqs[0]], params=big).id
        assert wb.edit("grace", [reqs[1]], params=big).kind == "edit"  # a split of the first key
        n_events = len(wb.log())
        with pytest.raises(InputError, match="changed later"):
            wb.revert(first)
        assert len(wb.log()) == n_events and wb.verify() == []
    finally:
        wb.close()


def test_a_key_changed_by_a_later_edit_cannot_be_reverted_alone(base):
    model, tok, adapter, requests = base
    a, b = requests[0], requests[1]
    h0 = weights_hash(model)
    first = _edit(model, tok, adapter, [a], eps_init=100.0)     # a huge radius: the next key lands inside
    second = _edit(model, tok, adapter, [b], eps_init=100.0)    # other target -> split
    try:
        (att,) = second.attachments
        assert att.action == "split" and att.modifies == "e0"
        d = (att.new["key"] - first.attachments[0].new["key"]).norm()
        assert torch.isclose(att.new["radius"], d / 2) and torch.isclose(att.after["radius"], d / 2 - 1e-5)
        h2 = weights_hash(model)
        with pytest.raises(InputError, match="changed later") as e:
            first.revert(model, adapter)
        assert e.value.field == "edit_id" and weights_hash(model) == h2  # refused before any change
        # The same prompt again with a new target overwrites that key (no unreachable split at 0).
        again = EditRequest(b.prompt, a.target_new)
        third = _edit(model, tok, adapter, [again])
        assert third.attachments[0].action == "overwrite" and third.attachments[0].modifies == "e1"
        ref_rel = evaluate_edits(model, tok, [again])["mean"]["reliability"]
        assert ref_rel == 1.0
        third.revert(model, adapter)
        assert weights_hash(model) == h2
    finally:
        second.revert(model, adapter)
        first.revert(model, adapter)
    assert weights_hash(model) == h0


def test_same_target_expands_the_nearest_key(base):
    model, tok, adapter, requests = base
    a = requests[0]
    first = _edit(model, tok, adapter, [a], eps_init=0.5)
    rephrased = EditRequest(a.rephrase_prompts[0], a.target_new)
    # within 0.5 + 100 of key e0. The value already gives the target with loss ~0.0098: an early
    # stop at FAST's 1e-2 would train or not depending on the machine's rounding, so train to
    # 1e-4, a few steps on every machine.
    second = _edit(model, tok, adapter, [rephrased], eps_init=100.0, early_stop_loss=1e-4)
    try:
        (att,) = second.attachments
        assert att.action == "expand" and att.new is None and att.modifies == "e0"
        assert att.after["radius"] > att.before["radius"] == 0.5 and att.stats["steps"] > 1
        # The query that expanded the key is inside the radius as routing measures it (a matrix
        # product, float32), with room to spare: a radius of exactly the distance left it outside
        # by rounding on some machines (issue 18), and the rephrase then missed its own key.
        from editors.grace.codebook import distances
        cb = find_codebook(adapter, adapter.default_layer())
        query = _query(model, tok, adapter, rephrased.prompt)
        routed = distances(query[None], cb.entries["e0"].key[None])[0, 0]
        assert routed <= att.after["radius"] * (1 - 1e-4)
        assert evaluate_edits(model, tok, [a, rephrased])["mean"]["reliability"] == 1.0
    finally:
        second.revert(model, adapter)
        first.revert(model, adapter)


def _query(model, tok, adapter, prompt: str) -> torch.Tensor:
    """The MLP output projection's input at the prompt's last token: the key GRACE reads."""
    seen = []
    module = adapter.mlp_out(adapter.default_layer())
    h = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])[-1]))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([tok(prompt)["input_ids"]]))
    finally:
        h.remove()
    return seen[0]


def test_route_replace_all_is_causal_and_sticky():
    keys = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    x = torch.tensor([[[5.0, 5.0], [0.0, 0.1], [5.0, 5.0], [10.0, 0.0], [5.0, 5.0]]])  # (1, 5, 2)
    radii = torch.tensor([1.0, 1.0])
    hit, idx = route(x, keys, radii, "replace_last")
    assert hit.tolist() == [[False, True, False, True, False]]
    hit, idx = route(x, keys, radii, "replace_all")
    assert hit.tolist() == [[False, True, True, True, True]] and idx[0, 1:].tolist() == [0, 0, 1, 1]


def test_failure_mid_edit_restores_the_model(base, monkeypatch):
    model, tok, adapter, requests = base
    from editors.grace import train
    calls = []
    real = torch.nn.functional.cross_entropy

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(train.torch.nn.functional, "cross_entropy", flaky)
    keep = _edit(model, tok, adapter, requests[:1], n_iter=1)   # 1 call
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _edit(model, tok, adapter, requests[1:3], n_iter=1)  # second request's call raises
        assert list(find_codebook(adapter, adapter.default_layer()).entries) == ["e0"]
    finally:
        keep.revert(model, adapter)


def test_rejects_forget_requests_and_empty_input(base):
    model, tok, adapter, _ = base
    with pytest.raises(InputError, match="EditRequest"):
        _edit(model, tok, adapter, [ForgetRequest("text", "The code is", "1234")])
    with pytest.raises(InputError):
        _edit(model, tok, adapter, [])


@pytest.mark.parametrize("params, field", [
    ({"eps_init": 0}, "eps_init"), ({"eps_init": float("inf")}, "eps_init"), ({"n_iter": 0}, "n_iter"),
    ({"n_iter": 1.5}, "n_iter"), ({"lr": -1.0}, "lr"), ({"dist_fn": "cos"}, "dist_fn"),
    ({"val_init": "hot"}, "val_init"), ({"replacement": "replace_prompt"}, "replacement"),
    ({"eps_expand": "decay"}, "eps_expand"), ({"early_stop_loss": -1.0}, "early_stop_loss"),
    ({"layer": "two"}, "layer"),
])
def test_bad_hyperparameters_name_the_field(params, field):
    with pytest.raises(InputError) as e:
        GraceHParams(**params)
    assert e.value.field == field


def test_layer_default_and_range(base):
    _, _, adapter, _ = base
    n = adapter.num_layers
    assert GraceHParams().derive(adapter).layer == adapter.default_layer()
    with pytest.raises(InputError) as e:
        GraceHParams(layer=n).derive(adapter)
    assert e.value.field == "layer"


def test_hyperparameters_parse_and_describe_themselves():
    hp = GraceHParams.from_strings({"eps_init": "2.5", "val_init": "warm", "layer": "auto", "n_iter": "7"})
    assert (hp.eps_init, hp.val_init, hp.layer, hp.n_iter) == (2.5, "warm", None, 7)
    assert all(d["help"] for d in GraceHParams.describe())


def test_registered_under_its_name():
    from workbench.editing.registry import describe_editor, get_editor
    assert get_editor("grace") is GRACEEditor
    assert describe_editor("grace")["capabilities"] == {
        "batch": True, "sequential": True, "forget": False, "single_revert": True, "composes": False}


@pytest.mark.slow
@pytest.mark.parametrize("t", [100])
def test_measure_lifelong_editing_with_default_hparams(base, t, record_property):
    """The numbers reported for GRACE: T sequential edits, EasyEdit's defaults, final model."""
    model, tok, adapter, requests = base
    reqs = requests[:t]
    ref = reference(model, tok, reqs)
    times, patches = [], []
    try:
        for i, r in enumerate(reqs):
            t0 = time.perf_counter()
            patches.append(GRACEEditor(GraceHParams().derive(adapter)).edit(EditContext(model, tok, adapter, i), [r]))
            times.append(time.perf_counter() - t0)
        mean = evaluate_edits(model, tok, reqs, ref)["mean"]
    finally:
        for p in reversed(patches):
            p.revert(model, adapter)
    times.sort()
    row = {k: mean[k] for k in ("reliability", "generality", "locality")} | {"median_s_per_edit": times[t // 2]}
    record_property(f"grace_T{t}", row)
    print(f"grace T={t}: {row}")
