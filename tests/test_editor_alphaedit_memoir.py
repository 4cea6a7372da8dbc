"""AlphaEdit, MEMOIR and MEMIT batches in sequence on the shipped model: what accumulates across
edits, exact revert of whole sequences, patch files, and the mechanics each method rests on
(AlphaEdit's null-space projection, MEMOIR's masks and routing). The contract grid
(tests/test_editor_grid.py) runs both editors on every tiny architecture.
"""
from __future__ import annotations

import pytest
import torch

from editors.alphaedit import (ATTR as KEYS_ATTR, AlphaEditEditor, AlphaEditHParams, alphaedit_solve,
                               null_space_projector, written_keys)
from editors.memit import MEMITEditor, MEMITHParams
from editors.memoir import MEMOIREditor, MEMOIRHParams
from editors.memoir.memory import ATTR as MEMOIR_ATTR
from workbench.core.arch import get_adapter
from workbench.core.patch import Patch, weights_hash
from workbench.editing.contract import EditContext
from workbench.eval.evaluate import evaluate_edits, reference
from workbench.eval.requests import load_requests
from workbench.eval.scoring import encode_pairs, greedy_continuations

from .conftest import REPO, assert_batched_equals_alone, model_left_unchanged

pytestmark = pytest.mark.usefixtures("one_thread")

REQUESTS = REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl"


@pytest.fixture(scope="module")
def world(shipped_model, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_CACHE", str(tmp_path_factory.mktemp("wbcache")))
    model, tok = shipped_model
    yield model, tok, get_adapter(model), load_requests(REQUESTS)[:12]
    mp.undo()


def _edit(cls, hp, world, requests, seed=0) -> Patch:
    model, tok, adapter, _ = world
    return cls(hp.derive(adapter)).edit(EditContext(model, tok, adapter, seed=seed), requests)


def _revert_all(model, adapter, patches) -> None:
    for p in reversed(patches):
        p.revert(model, adapter)


# ------------------------------------------------------------------------------------ AlphaEdit

def test_null_space_projection_keeps_preserved_directions_and_earlier_keys():
    torch.manual_seed(0)
    d, hidden = 12, 5
    U = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    C = U @ torch.diag(torch.tensor([5.0] * 4 + [1e-4] * 8, dtype=torch.float64)) @ U.T  # rank-4 "knowledge"
    P = null_space_projector(C, 2e-2)
    assert round(float(P.trace())) == 8
    K = torch.randn(3, d, dtype=torch.float64)
    share = torch.randn(3, hidden, dtype=torch.float64)
    upd = alphaedit_solve(P, torch.zeros(d, d, dtype=torch.float64), K, share, alpha=1e-3)  # (hidden, d)
    # The update writes nothing on the preserved directions (C's top eigenvectors)...
    assert (upd @ U[:, :4]).abs().max() < 1e-10 * upd.abs().max()
    # ...and with a tiny ridge it still reaches the new keys' targets from inside the null space.
    assert float((K @ upd.T - share).norm() / share.norm()) < 1e-2
    # Keys an earlier edit wrote (in the null space too) are held: with them as the prior the new
    # update moves their outputs much less than without.
    K_old = (P @ torch.randn(d, 2, dtype=torch.float64)).T  # (2, d)
    free = alphaedit_solve(P, torch.zeros(d, d, dtype=torch.float64), K, share, alpha=1e-3)
    held = alphaedit_solve(P, K_old.T @ K_old * 100, K, share, alpha=1e-3)
    assert (held @ K_old.T).norm() < 0.1 * (free @ K_old.T).norm()


def test_alphaedit_sequence_accumulates_keys_reverts_exactly_and_exports(world, tmp_path):
    model, tok, adapter, reqs = world
    with model_left_unchanged(model):
        h0 = weights_hash(model)
        hp = AlphaEditHParams(v_num_grad_steps=5, mom2_n_samples=300)
        first = _edit(AlphaEditEditor, hp, world, reqs[:2])
        assert first.weights_only and first.meta["prior_edits"] == 0  # an inert attachment only
        assert [a.kind for a in first.attachments] == ["alphaedit_keys"]
        d = adapter.num_neurons(0)
        assert all(k.shape == (2, d) for k in first.attachments[0].keys.values())
        layers = AlphaEditHParams().derive(adapter).layers
        before = {i: adapter.weight(adapter.mlp_out(i)).detach().clone().double() for i in layers}
        second = _edit(AlphaEditEditor, hp, world, reqs[2:5], seed=1)
        assert second.meta["prior_edits"] == 1 and len(written_keys(model)) == 2
        # Every update lies in the preserved keys' null space: (I − P) ΔW ᵀ = 0 for each layer.
        from editors.common import kv_stats
        own = tuple(adapter.param_name(adapter.mlp_out(i)) for i in layers)
        covs = kv_stats.second_moments(model, tok, adapter, layers, n_samples=300, exclude=own)
        for layer in layers:
            P = null_space_projector(covs[layer], hp.nullspace_threshold)
            delta = adapter.weight(adapter.mlp_out(layer)).detach().double() - before[layer]  # (hidden, d_ff)
            assert float(delta.norm()) > 0
            assert float((delta - delta @ P).norm()) < 1e-3 * float(delta.norm())
        h2 = weights_hash(model)
        second.save(tmp_path / "2.safetensors")
        _revert_all(model, adapter, [first, second])
        assert weights_hash(model) == h0 and not written_keys(model)
        first.apply(model, adapter)
        Patch.load(tmp_path / "2.safetensors").apply(model, adapter)
        assert weights_hash(model) == h2 and len(written_keys(model)) == 2
        assert not any(KEYS_ATTR in n for n in model.state_dict())  # never saved with the model
        _revert_all(model, adapter, [first, second])


def test_memit_batches_in_sequence_revert_exactly(world):
    model, _, adapter, reqs = world
    with model_left_unchanged(model):
        h0 = weights_hash(model)
        hp = MEMITHParams(v_num_grad_steps=5, mom2_n_samples=300)
        ref = reference(model, world[1], reqs[:6])
        patches = [_edit(MEMITEditor, hp, world, reqs[i:i + 3], seed=i) for i in (0, 3)]
        h2 = weights_hash(model)
        # The first batch is still in after the second (scored on the final model).
        first = evaluate_edits(model, world[1], reqs[:3], ref)["mean"]
        assert first["reliability"] >= 2 / 3
        _revert_all(model, adapter, patches)
        assert weights_hash(model) == h0
        for p in patches:
            p.apply(model, adapter)
        assert weights_hash(model) == h2
        _revert_all(model, adapter, patches)


def test_alphaedit_through_a_session_replays_keys_and_exports(tmp_path, world):
    from workbench.editing.session import Workbench
    reqs = world[3]
    wb = Workbench(None, tmp_path / "ws", author="tester")
    params = {"v_num_grad_steps": "5", "mom2_n_samples": "300"}
    wb.edit("alphaedit", reqs[:1], params)
    wb.edit("alphaedit", reqs[1:2], params)
    assert len(written_keys(wb.model)) == 2
    again = Workbench(None, tmp_path / "ws", author="tester")  # replays the ledger
    assert len(written_keys(again.model)) == 2 and again.weights_hash() == wb.weights_hash()
    again.undo()
    assert len(written_keys(again.model)) == 1
    out = again.export(tmp_path / "export")
    assert (out / "config.json").exists()


# ------------------------------------------------------------------------------------ MEMOIR

@pytest.fixture(scope="module")
def memoir_run(world):
    model, tok, adapter, reqs = world
    ref = reference(model, tok, reqs)
    h0 = weights_hash(model)
    patches = [_edit(MEMOIREditor, MEMOIRHParams(threshold=0.6), world, [r], seed=i) for i, r in enumerate(reqs)]
    yield dict(ref=ref, h0=h0, patches=patches)
    if getattr(model, MEMOIR_ATTR, None) is not None:
        _revert_all(model, adapter, patches)
    assert weights_hash(model) == h0


def test_memoir_sequence_holds_on_the_final_model(world, memoir_run):
    model, tok, _, reqs = world
    m = evaluate_edits(model, tok, reqs, memoir_run["ref"])["mean"]
    print("memoir T=12:", {k: round(m[k], 3) for k in ("reliability", "generality", "locality",
                                                      "reliability_exact", "locality_exact")})
    assert m["reliability"] >= 0.9 and m["reliability_exact"] >= 0.9  # greedy decoding keeps the prompt's route
    assert m["locality"] >= 0.95
    first = evaluate_edits(model, tok, reqs[:1], memoir_run["ref"])["mean"]
    assert first["reliability"] == 1.0


def test_memoir_patches_record_one_mask_row_and_the_masked_columns(world, memoir_run):
    first, *later = memoir_run["patches"]
    assert [a.kind for a in first.attachments] == ["memoir_memory"] and not first.weights
    mem = getattr(world[0], MEMOIR_ATTR)
    k, d = mem.top_k, mem.residual.shape[1]
    assert mem.n == len(memoir_run["patches"]) and int(mem.masks[:mem.n].sum(1).min()) == k
    for p in later:
        names = {w.name.removeprefix(MEMOIR_ATTR + ".") for w in p.weights}
        assert names <= {"residual", "masks", "count"} and "residual" in names
        res = next(w for w in p.weights if w.name.endswith("residual"))
        assert res.dim == 1 and res.index.numel() <= k < d  # only the edit's columns
        masks = next(w for w in p.weights if w.name.endswith("masks"))
        assert masks.resizes or masks.index.numel() == 1  # one new row, or the table doubled


def test_memoir_batched_routing_equals_one_at_a_time(world, memoir_run):
    model, tok, _, reqs = world
    texts = [reqs[0].prompt + " " + reqs[0].target_new, reqs[1].locality[0].prompt,
             reqs[2].rephrase_prompts[0], "The old bridge was praised"]
    assert_batched_equals_alone(model, tok, texts)


def test_memoir_generation_keeps_the_prompts_route(world, memoir_run):
    model, tok, _, reqs = world
    pairs = encode_pairs(tok, [r.prompt for r in reqs[:4]], [r.target_new for r in reqs[:4]])
    got = greedy_continuations(model, [p for p, _ in pairs], [len(a) for _, a in pairs], pad_id=tok.pad_token_id)
    assert sum(g == a for g, (_, a) in zip(got, pairs)) >= 3


def test_memoir_revert_and_replay_are_bit_exact(world, memoir_run, tmp_path):
    model, _, adapter, _ = world
    patches = memoir_run["patches"]
    h = weights_hash(model)
    loaded = []
    for i, p in enumerate(patches):
        p.save(tmp_path / f"{i}.safetensors")
        loaded.append(Patch.load(tmp_path / f"{i}.safetensors"))
    _revert_all(model, adapter, patches)
    assert getattr(model, MEMOIR_ATTR, None) is None and weights_hash(model) == memoir_run["h0"]
    for p in loaded:
        p.apply(model, adapter)
    assert weights_hash(model) == h


def test_memoir_ablations_change_what_the_paper_says(world):
    """Random masks lose generality (the rephrase gets another mask); without conditional routing
    the memory is read by unrelated prompts too. Each on a fresh memory of a fresh model."""
    from workbench.core.model import load_model
    model, tok = load_model()
    adapter = get_adapter(model)
    fresh = (model, tok, adapter, world[3])
    reqs = world[3][:6]
    ref = reference(model, tok, reqs)
    scores = {}
    with model_left_unchanged(model):
        for name, params in {"paper": {}, "random": {"masks": "random"}, "none": {"router": "none"}}.items():
            patches = [_edit(MEMOIREditor, MEMOIRHParams(**params), fresh, [r], seed=i) for i, r in enumerate(reqs)]
            scores[name] = evaluate_edits(model, tok, reqs, ref)["mean"]
            mem = getattr(model, MEMOIR_ATTR)
            probe = tok(["The old bridge was praised by the town"], return_tensors="pt")
            with torch.no_grad():
                model(**probe)
            m, use = mem._last
            scores[name]["routes_unrelated"] = bool(use.all())
            scores[name]["by_overlap"] = bool(use[0]) == bool(mem.overlaps(m).max() >= mem.tau)
            _revert_all(model, adapter, patches)
    assert scores["random"]["generality"] <= scores["paper"]["generality"] - 0.5
    assert scores["random"]["reliability"] >= 0.8
    # As published, the router reads the memory iff a stored mask overlaps by τ; the ablation always.
    assert scores["paper"]["by_overlap"] and scores["none"]["routes_unrelated"]


# ------------------------------------------------------------------------- memoir-key (ours)

@pytest.fixture(scope="module")
def key_run(world):
    """12 sequential memoir-key edits on a model of its own (the shared one may hold a memory)."""
    from workbench.core.model import load_model
    model, tok = load_model()
    adapter = get_adapter(model)
    reqs = world[3]
    ref = reference(model, tok, reqs)
    h0 = weights_hash(model)
    with torch.no_grad():
        probes = {"loc": tok(reqs[0].locality[0].prompt, return_tensors="pt")["input_ids"],
                  "other": tok(reqs[0].prompt.replace(reqs[0].subject, "Ada Brook"), return_tensors="pt")["input_ids"]}
        base = {k: model(input_ids=v).logits for k, v in probes.items()}
    from editors.memoir import MEMOIRKeyEditor, MEMOIRKeyHParams
    patches = [MEMOIRKeyEditor(MEMOIRKeyHParams().derive(adapter)).edit(EditContext(model, tok, adapter, seed=i), [r])
               for i, r in enumerate(reqs)]
    return dict(model=model, tok=tok, adapter=adapter, reqs=reqs, ref=ref, h0=h0, patches=patches, probes=probes,
                base=base)


def test_memoir_key_sequence_is_reliable_general_and_local(key_run):
    m = evaluate_edits(key_run["model"], key_run["tok"], key_run["reqs"], key_run["ref"])["mean"]
    print("memoir-key T=12:", {k: round(m[k], 3) for k in ("reliability", "generality", "locality",
                                                          "reliability_exact", "generality_exact")})
    assert m["reliability"] >= 0.9 and m["reliability_exact"] >= 0.9
    assert m["generality"] >= 0.75
    assert m["locality"] == 1.0 and m["locality_exact"] == 1.0  # no probe names an edited subject


def test_memoir_key_reads_nothing_for_a_query_without_an_edited_subject(key_run):
    model = key_run["model"]
    with torch.no_grad():  # bit for bit the unedited model's logits: the memory adds nothing at all
        for k, ids in key_run["probes"].items():
            assert torch.equal(model(input_ids=ids).logits, key_run["base"][k]), k


def test_memoir_key_subject_hits_and_causal_gate(key_run):
    model, tok, reqs = key_run["model"], key_run["tok"], key_run["reqs"]
    mem = getattr(model, MEMOIR_ATTR)
    r = reqs[3]
    text = "Yesterday " + r.rephrase_prompts[0]
    ids = torch.tensor([tok(text)["input_ids"]])
    rows, ends, edits = mem.subject_hits(ids)
    want = {i for i, q in enumerate(reqs) if q.subject == r.subject}
    assert set(edits.tolist()) == want and set(rows.tolist()) == {0}
    # Every position before the subject's last token is refused whatever its key.
    best, _ = mem._gated_scores(torch.randn(1, ids.shape[1], mem.residual.shape[1]), ids, None)
    assert torch.isinf(best[0, :int(ends.min())]).all() and torch.isfinite(best[0, int(ends.min()):]).all()


def test_memoir_key_batched_and_generated_like_one_at_a_time(key_run):
    model, tok, reqs = key_run["model"], key_run["tok"], key_run["reqs"]
    texts = [reqs[0].prompt + " " + reqs[0].target_new, reqs[1].locality[0].prompt,
             reqs[2].rephrase_prompts[0] + " " + reqs[2].target_new, "The old bridge was praised"]
    assert_batched_equals_alone(model, tok, texts)
    # Cached greedy decoding (a call per new token) keeps the subject an earlier call saw.
    pairs = encode_pairs(tok, [q.rephrase_prompts[0] for q in reqs[:6]], [q.target_new for q in reqs[:6]])
    got = greedy_continuations(model, [p for p, _ in pairs], [len(a) for _, a in pairs], pad_id=tok.pad_token_id)
    multi = [i for i, (_, a) in enumerate(pairs) if len(a) > 1]
    assert multi and sum(got[i] == pairs[i][1] for i in range(len(pairs))) >= 4


def test_memoir_key_needs_subjects_and_reverts_exactly(key_run):
    import dataclasses
    from editors.memoir import MEMOIRKeyEditor, MEMOIRKeyHParams
    from workbench.core.errors import InputError
    model, tok, adapter = key_run["model"], key_run["tok"], key_run["adapter"]
    h = weights_hash(model)
    bad = dataclasses.replace(key_run["reqs"][0], subject="Nobody Here")
    with pytest.raises(InputError, match="subject"):
        MEMOIRKeyEditor(MEMOIRKeyHParams().derive(adapter)).edit(EditContext(model, tok, adapter), [bad])
    assert weights_hash(model) == h
    _revert_all(model, adapter, key_run["patches"])
    assert getattr(model, MEMOIR_ATTR, None) is None and weights_hash(model) == key_run["h0"]
    for p in key_run["patches"]:
        p.apply(model, adapter)
    assert weights_hash(model) == h
