"""WISE on the shipped model: sequential edits, exact revert, patch files, batched routing; the
paper's shards, merges and retrieve mode, EasyEdit's score and routing rules, on a tiny model.

The contract grid (tests/test_editor_grid.py -k wise) covers the tiny architectures; here
one module-scoped run of sequential single edits on the shipped 4-layer Llama is shared by
the tests that read it, so the whole file stays well under a minute on one thread.
"""
from __future__ import annotations

import pytest
import torch

from editors.wise import WISEEditor, WISEHParams, WISETunedEditor, WISETunedHParams
from editors.wise.memory import ATTR, WISEMemory
from workbench.core.arch import get_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.eval.evaluate import evaluate_edits, reference
from workbench.core.patch import Patch, weights_hash
from workbench.eval.requests import load_requests
from workbench.eval.scoring import right_pad

from .conftest import assert_batched_equals_alone

T = 12
# wise-tuned (our settings, measured better on this model: README "Lifelong editing"), more steps.
PARAMS = dict(steps=50)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run():
    from workbench.core.model import load_model
    model, tok = load_model()
    adapter = get_adapter(model)
    reqs = load_requests("data/benchmarks/edits_counterfactual.jsonl")[:T]
    ref = reference(model, tok, reqs)
    base_hash = weights_hash(model)
    with torch.no_grad():
        probe = torch.tensor([tok(reqs[0].prompt)["input_ids"]])
        base_logits = model(probe).logits
    patches = []
    for r in reqs:  # a fresh editor per edit, as the session does
        editor = WISETunedEditor(WISETunedHParams(**PARAMS).derive(adapter))
        patches.append(editor.edit(EditContext(model, tok, adapter, seed=0), [r]))
    return dict(model=model, tok=tok, adapter=adapter, reqs=reqs, ref=ref, patches=patches,
                base_hash=base_hash, probe=probe, base_logits=base_logits)


def test_sequential_edits_hold_on_final_model(run):
    m = evaluate_edits(run["model"], run["tok"], run["reqs"], run["ref"])["mean"]
    print(f"WISE T={T}: reliability {m['reliability']:.3f} generality {m['generality']:.3f} "
          f"locality {m['locality']:.3f}")
    assert m["reliability"] >= 0.9
    # Measured 0.979 at T=12 (locality probes about people no edit touches; 1.000 on the
    # earlier probe set); it falls with T (see editors/wise/measure.py and the README):
    # locality is the weak point of WISE's router on the shipped model.
    assert m["locality"] >= 0.97
    first = evaluate_edits(run["model"], run["tok"], run["reqs"][:1], run["ref"])["mean"]
    assert first["reliability"] == 1.0  # the first edit survives all later ones


def test_first_edit_attaches_memory_later_edits_are_weight_changes(run):
    first, *later = run["patches"]
    assert [a.kind for a in first.attachments] == ["wise_memory"] and not first.weights
    assert all(p.weights and not p.attachments for p in later)
    assert all(w.name.startswith(ATTR + ".") for p in later for w in p.weights)


def test_batched_routing_equals_one_at_a_time(run):
    model, tok, reqs = run["model"], run["tok"], run["reqs"]
    # Edited prompts (routed to the side memory) mixed with locality prompts (main memory).
    texts = [reqs[0].prompt + " " + reqs[0].target_new, reqs[1].locality[0].prompt,
             reqs[2].rephrase_prompts[0], "The old bridge was praised"]
    assert_batched_equals_alone(model, tok, texts)


def test_patch_save_load_round_trip(run, tmp_path):
    model, adapter = run["model"], run["adapter"]
    with torch.no_grad():
        before = model(run["probe"]).logits
    h = weights_hash(model)
    loaded = []
    for i, p in enumerate(run["patches"]):
        p.save(tmp_path / f"{i}.safetensors")
        loaded.append(Patch.load(tmp_path / f"{i}.safetensors"))
    for p in reversed(run["patches"]):
        p.revert(model, adapter)
    for p in loaded:  # replay the saved history on the base model
        p.apply(model, adapter)
    assert weights_hash(model) == h
    with torch.no_grad():
        assert torch.equal(model(run["probe"]).logits, before)


def test_revert_whole_sequence_is_bit_exact(run):
    model, adapter = run["model"], run["adapter"]
    h = weights_hash(model)
    for p in reversed(run["patches"]):
        p.revert(model, adapter)
    assert getattr(model, ATTR, None) is None  # the side memory and its hooks are gone
    assert weights_hash(model) == run["base_hash"]
    with torch.no_grad():
        assert torch.equal(model(run["probe"]).logits, run["base_logits"])
    for p in run["patches"]:
        p.apply(model, adapter)
    assert weights_hash(model) == h


def test_irrelevant_rows_come_from_the_corpus_and_avoid_the_request(run):
    import random
    from editors.wise.train import build_batch, irrelevant_pool
    from editors.common.kv import default_corpus
    tok, reqs = run["tok"], run["reqs"]
    pool = irrelevant_pool(None)
    assert pool == default_corpus()  # the world's fact sentences and filler, as for ROME/MEMIT
    # A pool where most texts mention the edited subject or quote its locality probes.
    r = reqs[0]
    bad = [f"{r.subject} has a cat.", r.locality[0].prompt + " " + r.locality[0].answer]
    pool = bad * 50 + ["The old bridge was busy.", "A train left at dawn."]
    hp = WISEHParams(irrelevant_samples=4, contrast_subject=0)
    _, (ids, _mask), _ = build_batch(tok, [r], hp, random.Random(0), pool)
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    assert texts and all(r.subject not in t and r.locality[0].prompt not in t for t in texts)


@pytest.mark.parametrize("score", ["act", "linear"])
def test_packed_scores_equal_padded_scores(score):
    from editors.wise.memory import row_mean, row_score
    from editors.wise.train import Packed
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 8, generator=g)  # (rows, seq, d_ff)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    weight, bias, delta = torch.randn(4, 8, generator=g), torch.randn(4, generator=g), torch.randn(4, 8, generator=g)
    mem = WISEMemory(0, 4, 8, score=score)
    mem.__dict__["act"] = torch.nn.SiLU()
    base = a @ weight.T + bias  # (rows, seq, out)
    d = a @ delta.T
    want = (torch.nn.functional.silu(base + d) - torch.nn.functional.silu(base)).norm(dim=-1) if score == "act" \
        else d.norm(dim=-1)  # (rows, seq)
    packed = Packed(a, mask, weight, bias)
    torch.testing.assert_close(packed.scores(mem, delta), row_mean(want, mask.float()))
    torch.testing.assert_close(packed.scores(mem, delta, "max"), row_score(want, mask.float(), "max"))


def test_rows_over_100_tokens_route_on_their_max_token():
    from editors.wise.memory import row_score
    dist = torch.ones(2, 120)
    dist[:, 3] = 50.0
    mask = torch.ones(2, 120)
    mask[1, 90:] = 0  # 90 real tokens: the mean
    got = row_score(dist, mask, "auto")
    assert got[0] == 50.0 and abs(float(got[1]) - (89 + 50) / 90) < 1e-5
    assert row_score(dist, mask, "mean")[0] < 2 and row_score(dist, mask, "max")[1] == 50.0


def test_ties_merge_is_peft_ties_for_equal_weights_and_a_weighted_mean_otherwise():
    from peft.utils.merge_utils import ties
    from editors.wise.memory import ties_merge
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(6, 5, generator=g) for _ in range(3)]
    torch.testing.assert_close(ties_merge(ts, [1 / 3] * 3, 0.53), ties(ts, torch.ones(3), 0.53))
    # One entry where all agree: the weighted mean, 0.6 on the last (EasyEdit's earlier merge).
    one = [torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([5.0])]
    assert float(ties_merge(one, [0.2, 0.2, 0.6], 1.0)) == pytest.approx(0.2 + 0.6 + 3.0)


@pytest.mark.parametrize("field,value", [("lr", 0), ("mask_ratio", 0.0), ("alpha", -1), ("steps", 0),
                                          ("margin_scale", 0), ("shard_size", -1), ("merge_every", 700),
                                          ("act_ratio", 2.0), ("retrieve", "yes"), ("weight_decay", -1),
                                          ("contrast_subject", -1), ("score_tokens", "max"), ("route", "top"),
                                          ("score", "cosine"), ("stop", "never"), ("prefixes", 11),
                                          ("target_loss", "sum"), ("threshold_from", "first")])
def test_bad_hparams_name_the_field(field, value):
    with pytest.raises(InputError) as e:
        WISEHParams(**{field: value})
    assert field in str(e.value)


def test_layer_is_derived_and_checked(run):
    assert WISEHParams().derive(run["adapter"]).layer == run["adapter"].default_layer(0.8)
    with pytest.raises(InputError, match="layer"):
        WISEHParams(layer=9).derive(run["adapter"])


def _tiny(n: int = 6):
    from tests.tiny_models import tiny_model, tiny_tokenizer
    from workbench.eval.requests import EditRequest
    model, tok = tiny_model("llama"), tiny_tokenizer()
    return model, tok, get_adapter(model), [EditRequest(f"P{i} lives in", f"City{i}", subject=f"P{i}")
                                            for i in range(n)]


FAST = dict(steps=8, prefixes=2)


def test_shards_are_saved_then_merged_and_inference_merges_a_view():
    model, tok, adapter, reqs = _tiny(5)
    hp = WISEHParams(shard_size=2, merge_every=4, **FAST).derive(adapter)
    patches, seen = [], []
    for r in reqs:
        patches.append(WISEEditor(hp).edit(EditContext(model, tok, adapter), [r]))
        mem = getattr(model, ATTR)
        seen.append((mem.memories.shape[0], bool(mem.merged.any()), bool(mem.delta.any()), int(mem.counts[1])))
    # edit 2 saves the first shard (the live one restarts from W), edit 4 merges both, edit 5 is live
    assert seen == [(0, False, True, 1), (1, False, False, 0), (1, False, True, 1), (0, True, False, 0),
                    (0, True, True, 1)]
    mem = getattr(model, ATTR)
    assert len(mem.prefixes) == 2 and patches[0].attachments[0].config()["prefixes"] == list(mem.prefixes)
    # Past shard_size edits with a shard pending, inference reads the merge EasyEdit would make
    # there — as a view: the buffers stay as the edits left them.
    before = {k: v.clone() for k, v in mem.state_dict().items()}
    deltas, thr, live = mem._active()
    assert deltas.shape[0] == 1 and live == -1
    torch.testing.assert_close(deltas[0], mem.merge([mem.delta]))
    with torch.no_grad():
        model(torch.tensor([tok(reqs[0].prompt)["input_ids"]]))
    assert all(torch.equal(before[k], v) for k, v in mem.state_dict().items())
    h = weights_hash(model)
    for p in reversed(patches):
        p.revert(model, adapter)
    assert getattr(model, ATTR, None) is None
    for p in patches:
        p.apply(model, adapter)
    assert weights_hash(model) == h


def test_retrieve_mode_archives_memories_and_routes():
    model, tok, adapter, reqs = _tiny(4)
    patches = [WISEEditor(WISEHParams(retrieve=True, shard_size=1, merge_every=2, **FAST).derive(adapter))
               .edit(EditContext(model, tok, adapter), [r]) for r in reqs]
    mem = getattr(model, ATTR)
    # 4 one-edit shards, merged in pairs: 2 memories, each with the weaker threshold of its pair
    assert isinstance(mem, WISEMemory) and mem.memories.shape[0] == 2 and mem.thresholds.shape == (2,)
    assert int(mem.counts[1]) == 0 and not mem.delta.any()
    scores = [p.meta["edit_score"] for p in patches]
    assert float(mem.thresholds[0]) == pytest.approx(min(scores[:2])) and \
        float(mem.thresholds[1]) == pytest.approx(min(scores[2:]))
    for p in reversed(patches):
        p.revert(model, adapter)
    assert getattr(model, ATTR, None) is None


def test_retrieve_router_picks_the_best_archived_memory_over_its_threshold():
    mem = WISEMemory(0, 2, 2, retrieve=True, shard_size=1, merge_every=None)
    score = torch.tensor([[5.0, 1.0, 9.0, 1.0],    # archived 0 (threshold 4)
                          [6.0, 1.0, 3.0, 8.0],    # archived 1 (threshold 7)
                          [2.0, 3.0, 10.0, 2.0]])  # live (threshold 2.5)
    which, use = mem._decide(score, torch.tensor([4.0, 7.0, 2.5]), live=2)
    # row 0: archived 0 clears 4 and beats live's 2; row 1: only live, at 3 >= 2.5; row 2: archived
    # 0's 9 does not beat live's 10; row 3: archived 1's 8 clears its 7
    assert use.tolist() == [True, True, True, True] and which.tolist() == [0, 2, 2, 1]
    which, use = mem._decide(torch.tensor([[1.0], [0.5]]), torch.tensor([4.0, 2.5]), live=1)
    assert use.tolist() == [False]


def test_block_shortcut_trains_what_the_full_block_trains(monkeypatch):
    import contextlib

    import editors.wise.train as train
    runs = []
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(train, "edited_block_linear", lambda *a, **k: contextlib.nullcontext())
        model, tok, adapter, reqs = _tiny(2)
        for r in reqs:
            WISEEditor(WISEHParams(**FAST).derive(adapter)).edit(EditContext(model, tok, adapter), [r])
        runs.append(getattr(model, ATTR).delta.clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-5)


def test_subject_mask_marks_the_subject_tokens_and_falls_back_to_all(run):
    from editors.wise.train import subject_mask
    from workbench.eval.requests import EditRequest
    tok, r = run["tok"], run["reqs"][2]
    no_subject = EditRequest("The old bridge was praised by", "Paris")
    pairs = [tok(x.prompt)["input_ids"] for x in (r, no_subject)]
    ids, mask = right_pad(pairs, tok.pad_token_id)
    from editors.wise.train import edit_rows
    m = subject_mask(tok, edit_rows([r, no_subject], ()), mask)
    assert tok.decode(ids[0][m[0].bool()]).strip() == r.subject
    assert torch.equal(m[1], mask[1])  # no subject: every real token


def test_subject_scores_edit_batch_and_missing_subject():
    from tests.tiny_models import tiny_model, tiny_tokenizer
    from workbench.eval.requests import EditRequest
    model, tok = tiny_model("llama"), tiny_tokenizer()
    adapter = get_adapter(model)
    reqs = [EditRequest("P1 lives in", "City1", subject="P1"), EditRequest("Q2 lives in", "City2", subject="Q2"),
            EditRequest("Some town lies in", "City3")]  # the last one without a subject: all tokens
    hp = WISEHParams(score_tokens="subject", route="max", steps=20, prefixes=1).derive(adapter)
    p = WISEEditor(hp).edit(EditContext(model, tok, adapter), reqs)
    assert p.meta["score_tokens"] == "subject" and p.meta["route"] == "max"
    mem = getattr(model, ATTR)
    assert int(mem.counts[0]) == 3 and float(mem.min_score) > 0 and mem.route == "max"
    assert p.attachments[0].build().route == "max"  # kept in the attachment's config
    # Max routing is still per example: a padded batch equals one row at a time.
    seqs = tok([r.prompt + " " + r.target_new for r in reqs] + ["Nothing here at all"])["input_ids"]
    ids, mask = right_pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for r, s in enumerate(seqs):
            torch.testing.assert_close(batched[r, :len(s)], model(input_ids=torch.tensor([s])).logits[0],
                                       rtol=1e-4, atol=1e-4)
    p.revert(model, adapter)
    assert getattr(model, ATTR, None) is None


def test_ledger_records_the_settings_a_later_edit_ran_with(tmp_path):
    # The first WISE edit fixes the memory's layer, shards and routing; a later edit asking for
    # others runs with the memory's, and the ledger must say so (an audit log records what ran).
    from workbench.editing.session import Workbench
    wb = Workbench(None, tmp_path / "ws")
    reqs = load_requests("data/benchmarks/edits_counterfactual.jsonl")[:2]
    fast = {"lr": "0.1", "mask_ratio": "0.05", "steps": "5"}
    first = wb.edit("wise", reqs[:1], {**fast, "layer": "2", "shard_size": "10", "route": "mean", "prefixes": "1"})
    later = wb.edit("wise", reqs[1:], {**fast, "layer": "1", "shard_size": "5", "route": "max", "retrieve": "true"})
    assert (first.hparams["layer"], first.hparams["shard_size"], first.hparams["route"]) == (2, 10, "mean")
    assert (later.hparams["layer"], later.hparams["shard_size"], later.hparams["route"], later.hparams["retrieve"],
            later.hparams["prefixes"]) == (2, 10, "mean", False, 1)
    assert later.hparams["steps"] == 5  # settings the memory does not fix are the ones asked for
    assert wb.patch(later.id).meta["layer"] == 2 and wb.show(later.id).hparams == later.hparams


def test_paper_defaults_on_the_shipped_model():
    # `wise` at its defaults (EasyEdit's LLaMA config): 3 edits on a model of its own.
    from workbench.core.model import load_model
    from editors.wise.train import PREFIX_STARTS
    model, tok = load_model()
    adapter = get_adapter(model)
    reqs = load_requests("data/benchmarks/edits_counterfactual.jsonl")[:3]
    patches = [WISEEditor(WISEHParams().derive(adapter)).edit(EditContext(model, tok, adapter, seed=0), [r])
               for r in reqs]
    mem = getattr(model, ATTR)
    prefixes = patches[0].attachments[0].config()["prefixes"]
    assert len(set(prefixes)) == 10 and all(p.startswith(PREFIX_STARTS) and len(p) > 3 for p in prefixes)
    assert mem.layer == adapter.default_layer(0.8) and mem.score == "act" and mem.route == "auto"
    assert mem.counts.tolist() == [3, 3] and mem.memories.shape[0] == 0 and not mem.merged.any()
    scores = [p.meta["edit_score"] for p in patches]
    assert float(mem.min_score) == pytest.approx(min(scores)) and all(1 <= p.meta["steps"] <= 70 for p in patches)
    # Weight decay acts on the whole side weight (EasyEdit's optimiser holds W + Δ), the gradient
    # only inside the shard's mask; the clamp keeps Δ within ±1.
    assert bool(mem.delta[~mem.mask].ne(0).any()) and float(mem.delta.abs().max()) <= 1.0
    outside, inside = mem.delta[~mem.mask].abs().mean(), mem.delta[mem.mask].abs().mean()
    assert outside < inside / 10


def test_swapped_forward_puts_back_an_instance_wrapper():
    # accelerate's offload hook is an instance-level `forward`; a cached block must get it back
    from editors.common.frozen import swapped_forward
    hooked, plain = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    def wrapper(x):
        return x * 0
    hooked.forward = wrapper
    with swapped_forward([hooked, plain], [lambda x: x + 1, lambda x: x + 1]):
        assert hooked(torch.ones(2)).sum() == 4 and plain(torch.ones(2)).sum() == 4
    assert hooked.forward is wrapper and "forward" not in plain.__dict__


def test_easyedit_target_loss_divides_each_row_by_its_target_count_plus_one():
    firsts = {}
    for rule in ("mean", "easyedit"):
        model, tok, adapter, reqs = _tiny(1)
        hp = WISEHParams(steps=1, prefixes=0, target_loss=rule).derive(adapter)
        firsts[rule] = WISEEditor(hp).edit(EditContext(model, tok, adapter), reqs).meta["ce_first"]
    t = len(tok(" " + reqs[0].target_new, add_special_tokens=False)["input_ids"])
    assert firsts["easyedit"] == pytest.approx(firsts["mean"] * t / (t + 1), rel=1e-5)
