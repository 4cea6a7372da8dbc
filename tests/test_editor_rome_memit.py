"""`rome` and `memit` on the shipped world model, and the shared key/value math of
`editors.common.kv`: edit quality, exact revert, the on-disk statistics cache, input errors and
hyperparameter validation.

Every test uses a temporary statistics cache (WORKBENCH_CACHE) and leaves the session-wide
shipped model as it found it (checked by weights hash).
"""
from __future__ import annotations

import pytest
import torch

from editors.memit import MEMITEditor, MEMITHParams
from editors.rome import ROMEEditor, ROMEHParams
from editors.common import kv
from editors.common import kv_stats
from editors.common.corpus import default_corpus
from workbench.core.arch import get_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.eval.evaluate import evaluate_edits, reference
from workbench.core.patch import Patch, weights_hash
from workbench.eval.requests import EditRequest, load_requests

from .conftest import REPO, assert_patch_round_trips, model_left_unchanged

N_SINGLE, N_BATCH, N_GPTJ = 5, 10, 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    """One temporary cache for the module, so the statistics are computed once here."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("wbcache")
    mp.setenv("WORKBENCH_CACHE", str(path))
    yield path / "kv"
    mp.undo()


@pytest.fixture(scope="module")
def world(shipped_model, stats_dir):
    model, tok = shipped_model
    requests = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:N_BATCH]
    return model, tok, get_adapter(model), requests


@pytest.fixture
def base(world):
    """The shipped model, asserted unchanged (bit for bit) after the test."""
    model = world[0]
    with model_left_unchanged(model):
        yield world
    assert all(p.grad is None for p in model.parameters()), "an edit left gradients on the weights"


def _rome(model, tok, adapter, requests, **params) -> Patch:
    return ROMEEditor(ROMEHParams(**params).derive(adapter)).edit(EditContext(model, tok, adapter), requests)


def _memit(model, tok, adapter, requests, **params) -> Patch:
    return MEMITEditor(MEMITHParams(**params).derive(adapter)).edit(EditContext(model, tok, adapter), requests)


@pytest.mark.slow  # 27 s; ROME's quality on a trained model stays in the default run on the GPT-J model below
def test_single_rome_edits_are_reliable_and_local(base, record_property):
    model, tok, adapter, requests = base
    requests = requests[:N_SINGLE]
    ref = reference(model, tok, requests)
    rows = []
    for i, req in enumerate(requests):
        patch = _rome(model, tok, adapter, [req])
        try:
            one_ref = type(ref)(locality={0: ref.locality[i]})
            rows.append(evaluate_edits(model, tok, [req], one_ref)["per_request"][0])
        finally:
            patch.revert(model, adapter)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("reliability", "generality", "locality")}
    record_property("rome_single", mean)  # generality is reported, not gated
    print("rome single edits:", mean)
    assert mean["reliability"] >= 0.9, mean
    assert mean["locality"] >= 0.9, mean


def test_rome_edits_the_shipped_gptj_model_reliably(stats_dir, record_property):
    # GPT-J is the family the ROME paper edits: attention and MLP read the same block input. On tiny
    # random GPT-J models ROME moved the target only as far as on tiny Llamas (test_editor_grid); a
    # GPT-J trained on the world, which recalls facts through the subject (the paper's premise), is
    # edited with the paper's settings to reliability 1.0 (here with a 500-text covariance instead of
    # 2,000 to spare 16 s; the README's 10 edits use the defaults).
    from workbench.core.model import load_model
    from workbench.core.paths import COUNTERFACTUAL, GPTJ_MODEL
    model, tok = load_model(GPTJ_MODEL)
    adapter = get_adapter(model)
    assert adapter.parallel_blocks and type(model).__name__ == "GPTJForCausalLM"
    requests = load_requests(COUNTERFACTUAL)[:N_GPTJ]
    ref = reference(model, tok, requests)
    assert evaluate_edits(model, tok, requests)["mean"]["reliability"] <= 0.5  # new targets, not known ones
    h0, rows = weights_hash(model), []
    for i, req in enumerate(requests):
        patch = _rome(model, tok, adapter, [req], mom2_n_samples=500)
        assert [w.name for w in patch.weights] == [f"transformer.h.{patch.meta['layer']}.mlp.fc_out.weight"]
        rows.append(evaluate_edits(model, tok, [req], type(ref)(locality={0: ref.locality[i]}))["per_request"][0])
        patch.revert(model, adapter)
        assert weights_hash(model) == h0
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("reliability", "generality", "locality")}
    record_property("rome_gptj", mean)
    print("rome single edits on world-gptj:", mean)  # the README quotes it (pytest -s)
    assert all(r["reliability"] == 1.0 for r in rows), rows
    assert mean["locality"] >= 0.9, mean


@pytest.mark.slow  # 34 s; MEMIT's mechanics stay in the default run (grid, device-map tests)
def test_memit_batch_is_reliable_and_local(base, record_property):
    model, tok, adapter, requests = base
    ref = reference(model, tok, requests)
    patch = _memit(model, tok, adapter, requests)
    try:
        mean = evaluate_edits(model, tok, requests, ref)["mean"]
    finally:
        patch.revert(model, adapter)
    record_property("memit_batch", mean)
    print("memit batch of", len(requests), {k: mean[k] for k in ("reliability", "generality", "locality")})
    assert mean["reliability"] >= 0.8, mean
    assert mean["locality"] >= 0.9, mean
    assert patch.meta["residual_after"] < patch.meta["residual_before"]


@pytest.mark.parametrize("editor", ["rome", "memit"])
def test_patches_touch_only_mlp_out_and_revert_bit_for_bit(base, tmp_path, editor):
    model, tok, adapter, requests = base
    h0 = weights_hash(model)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    # a few value steps and a small covariance sample suffice to check bookkeeping; quality is tested
    # above (MEMIT's default 2000 samples of layer 0 took 25 s of the default run)
    patch = (_rome if editor == "rome" else _memit)(model, tok, adapter, requests[:1], v_num_grad_steps=3,
                                                    mom2_n_samples=250)
    h1 = weights_hash(model)
    layers = [patch.meta["layer"]] if editor == "rome" else patch.meta["layers"]
    expected = sorted(adapter.param_name(adapter.mlp_out(i)) for i in layers)
    changed = sorted(n for n, t in model.state_dict().items() if not torch.equal(before[n], t))
    assert changed == expected and sorted(w.name for w in patch.weights) == expected
    assert_patch_round_trips(model, adapter, patch, h0, h1, tmp_path / "p.safetensors")


def test_default_layers_are_derived_from_depth(base):
    _, _, adapter, _ = base
    assert adapter.num_layers == 4
    assert ROMEHParams().derive(adapter).layer == 1  # round(0.3 * 3)
    assert MEMITHParams().derive(adapter).layers == (0, 1)  # round(0.1 * 3) .. round(0.3 * 3)
    assert ROMEHParams(layer=-3).derive(adapter).layer == 1


def test_covariance_is_cached_once_and_keyed(base, stats_dir):
    model, tok, adapter, requests = base
    first = kv_stats.second_moments(model, tok, adapter, [1], n_samples=300)[1]
    files = set(stats_dir.glob("*.safetensors"))
    misses = kv_stats.cache_misses
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = kv_stats.second_moments(model, tok, adapter, [1], n_samples=300)[1]
    assert kv_stats.cache_misses == misses and torch.equal(first, again)
    assert {f: f.stat().st_mtime_ns for f in stats_dir.glob("*.safetensors")} == mtimes
    d = adapter.num_neurons(1)
    assert first.shape == (d, d) and torch.allclose(first, first.T)

    # A ROME edit changes only the projection *above* the keys: its statistics stay valid.
    patch = _rome(model, tok, adapter, requests[:1], mom2_n_samples=300, v_num_grad_steps=2)
    try:
        kv_stats.second_moments(model, tok, adapter, [1], n_samples=300)
        assert kv_stats.cache_misses == misses
    finally:
        patch.revert(model, adapter)

    # Another layer, another corpus or another sample count: another file.
    kv_stats.second_moments(model, tok, adapter, [0], n_samples=300)
    corpus = stats_dir.parent / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "Line {i} of a small corpus about nothing."}}\n' for i in range(50)))
    kv_stats.second_moments(model, tok, adapter, [1], n_samples=300, corpus=str(corpus))
    kv_stats.second_moments(model, tok, adapter, [1], n_samples=200)
    assert kv_stats.cache_misses == misses + 3
    assert len(set(stats_dir.glob("*.safetensors")) - files) == 3


def test_default_corpus_leaves_out_canaries(shipped_world):
    texts = set(default_corpus())
    assert len(texts) > 1000
    assert not texts & {c["text"] for c in shipped_world.canaries}


def test_subject_key_is_the_last_subject_token(base):
    _, tok, _, requests = base
    req = requests[0]
    ids, i = kv.encode_at_subject(tok, "Some text. {}", req.prompt, req.subject_span())
    text = "Some text. " + req.prompt
    seen = tok.decode(ids[:i + 1], skip_special_tokens=True)
    assert seen.strip().endswith(req.subject) and not tok.decode(ids[i + 1:]).startswith(req.subject[-1])
    assert text.startswith(seen.strip())


@pytest.mark.parametrize("editor", ["rome", "memit"])
def test_request_without_subject_names_the_field(base, editor):
    model, tok, adapter, _ = base
    edit = _rome if editor == "rome" else _memit
    for req in (EditRequest("Ada lives in", "Rome"), EditRequest("Ada lives in", "Rome", subject="Bo")):
        with pytest.raises(InputError) as e:
            edit(model, tok, adapter, [req])
        assert e.value.field == "subject" and "subject" in str(e.value)


def test_rome_takes_one_request_per_call(base):
    model, tok, adapter, requests = base
    with pytest.raises(InputError, match="edits one request at a time"):
        _rome(model, tok, adapter, requests[:2])
    assert not ROMEEditor.capabilities.batch and MEMITEditor.capabilities.batch


@pytest.mark.parametrize("cls, params, field", [
    (ROMEHParams, {"v_lr": 0}, "v_lr"), (ROMEHParams, {"v_num_grad_steps": 0}, "v_num_grad_steps"),
    (ROMEHParams, {"kl_factor": -1.0}, "kl_factor"), (ROMEHParams, {"clamp_norm_factor": 0}, "clamp_norm_factor"),
    (ROMEHParams, {"v_weight_decay": float("nan")}, "v_weight_decay"), (ROMEHParams, {"layer": "two"}, "layer"),
    (ROMEHParams, {"mom2_n_samples": 0}, "mom2_n_samples"), (ROMEHParams, {"mom2_adjustment": "yes"}, "mom2_adjustment"),
    (ROMEHParams, {"corpus": ""}, "corpus"),
    (MEMITHParams, {"mom2_update_weight": -1.0}, "mom2_update_weight"), (MEMITHParams, {"layers": (2, 1)}, "layers"),
    (MEMITHParams, {"layers": ()}, "layers"), (MEMITHParams, {"layers": ("a",)}, "layers"),
])
def test_bad_hyperparameters_name_the_field(cls, params, field):
    with pytest.raises(InputError) as e:
        cls(**params)
    assert e.value.field == field


def test_layers_out_of_range_are_caught_against_the_model(base):
    _, _, adapter, _ = base
    with pytest.raises(InputError) as e:
        ROMEHParams(layer=4).derive(adapter)
    assert e.value.field == "layer" and "0..3" in str(e.value)
    with pytest.raises(InputError) as e:
        MEMITHParams(layers=(1, 9)).derive(adapter)
    assert e.value.field == "layers"
    with pytest.raises(InputError) as e:
        MEMITHParams(layers=(3, -1)).derive(adapter)  # the same block twice
    assert e.value.field == "layers"


def test_hyperparameters_parse_from_cli_strings_and_describe_themselves():
    hp = MEMITHParams.from_strings({"layers": "0,1", "mom2_update_weight": "15000", "corpus": "none"})
    assert hp.layers == (0, 1) and hp.mom2_update_weight == 15000.0 and hp.corpus is None
    assert ROMEHParams.from_strings({"layer": "auto", "mom2_adjustment": "false"}).mom2_adjustment is False
    for cls in (ROMEHParams, MEMITHParams):
        assert all(d["help"] for d in cls.describe())


def test_registered_under_their_names():
    from workbench.editing.registry import describe_editor, get_editor
    assert get_editor("rome") is ROMEEditor and get_editor("memit") is MEMITEditor
    caps = describe_editor("rome")["capabilities"]
    assert {k: caps[k] for k in ("batch", "sequential", "forget", "single_revert")} == {
        "batch": False, "sequential": True, "forget": False, "single_revert": False}
    assert describe_editor("memit")["capabilities"]["batch"] is True
    from importlib.metadata import entry_points  # what the editor grid runs
    eps = {ep.name: ep.value for ep in entry_points(group="workbench.editors")}
    assert eps["rome"] == "editors.rome:ROMEEditor" and eps["memit"] == "editors.memit:MEMITEditor"
