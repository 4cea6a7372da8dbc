"""Models split with accelerate (`device_map="auto"`, part offloaded) edit like unsplit ones.

A tiny model is trained a little (as the editor grid does), saved as safetensors, and loaded
twice: whole, and with a `max_memory` so small that most decoder layers are offloaded (meta
tensors; accelerate's hooks load them from the checkpoint at each forward). Every registered
editor then makes the same edit with the same seed on both; the weights (every state_dict
entry, attachments included) and the logits must be bit for bit equal, and reverting must
give the original weights exactly. On CPU the split model runs the very same kernels on the
very same values, so exact equality is the right test, not a tolerance.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.test_editor_grid import EDIT, FORGET, WORDS, _editor_class, _editor_names, _memorize
from tests.tiny_models import tiny_model, tiny_tokenizer
from workbench.core import offload
from workbench.core.arch import get_adapter
from workbench.editing.contract import EditContext
from workbench.core.errors import InputError
from workbench.core.model import load_model
from workbench.core.patch import HashCache, weights_hash

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llama", "gpt2"]


@pytest.fixture(scope="module", params=ARCHS)
def saved(request, tmp_path_factory):
    """(folder, max_memory in bytes) of a tiny trained `arch` model saved as safetensors."""
    tok = tiny_tokenizer(WORDS)
    model = tiny_model(request.param, vocab_size=len(tok))
    # Both request kinds' answers are learnt, so forget and edit editors have something to change.
    _memorize(model, tok, [(EDIT.prompt, EDIT.ground_truth), (FORGET.prefix, FORGET.suffix)]
              + [(q.prompt, q.answer) for q in EDIT.locality])
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    # Room for the embeddings (and GPT-2's tied head) and about one block: accelerate then
    # offloads the rest, which is most of the decoder layers.
    embed = model.get_input_embeddings().weight
    block = sum(p.numel() * p.element_size() for p in get_adapter(model).layer(0).parameters())
    return path, embed.numel() * embed.element_size() + 2 * block


def _load_pair(saved):
    path, budget = saved
    whole, tok = load_model(path)
    split, _ = load_model(path, device_map="auto", max_memory={"cpu": budget})
    return whole, split, tok


def _offloaded_layers(model) -> set[int]:
    adapter = get_adapter(model)
    return {i for i in range(adapter.num_layers)
            if any(offload.is_offloaded(m) for m in adapter.layer(i).modules())}


def _assert_same_weights(a, b, what: str) -> None:
    va, vb = dict(offload.state_values(a)), dict(offload.state_values(b))
    assert sorted(va) == sorted(vb), f"{what}: different state_dict keys"
    for k in va:
        assert torch.equal(va[k].cpu(), vb[k].cpu()), f"{what}: {k} differs"


def test_split_really_offloads_and_reads_the_same(saved):
    whole, split, tok = _load_pair(saved)
    n = get_adapter(split).num_layers
    assert len(_offloaded_layers(split)) >= n - 1 >= 2, "most decoder layers should be offloaded"
    meta = [k for k, t in split.state_dict().items() if t.is_meta]
    assert meta and all(offload.is_offloaded(split.get_submodule(k.rpartition(".")[0])) for k in meta)
    assert weights_hash(split) == weights_hash(whole) == HashCache().model_hash(split)
    _assert_same_weights(whole, split, "as loaded")
    probe = torch.tensor([tok(EDIT.prompt)["input_ids"]])  # (1, seq)
    with torch.no_grad():
        assert torch.equal(whole(probe).logits, split(probe).logits)


def test_in_place_write_reaches_the_forward_pass(saved):
    """The primitive every editor relies on: a write into `adapter.weight(module)` of an
    offloaded module changes the next forward pass, and reading gives the written values."""
    whole, split, tok = _load_pair(saved)
    probe = torch.tensor([tok(EDIT.prompt)["input_ids"]])  # (1, seq)
    cache = HashCache()
    h0 = cache.model_hash(split)
    for model in (whole, split):
        ad = get_adapter(model)
        module = ad.mlp_out(-1)
        with torch.no_grad():
            ad.weight(module)[:, :3] += 0.5  # (hidden, 3) slice of the (hidden, d_ff) view
        assert not offload.is_offloaded(module)
    with torch.no_grad():
        assert torch.equal(whole(probe).logits, split(probe).logits)
    assert cache.model_hash(split) == weights_hash(split) == weights_hash(whole) != h0
    _assert_same_weights(whole, split, "after a direct write")


def _run(editor_name, model, tok):
    cls = _editor_class(editor_name)
    adapter = get_adapter(model)
    request = FORGET if cls.capabilities.forget else EDIT
    editor = cls(cls.hparams_class().derive(adapter))
    return editor.edit(EditContext(model, tok, adapter, seed=0), [request]), adapter


@pytest.mark.parametrize("editor_name", _editor_names())
def test_editor_on_split_model_matches_unsplit(editor_name, saved, tmp_path, monkeypatch):
    cls = _editor_class(editor_name)
    if cls.capabilities.composes:
        pytest.skip("composes: works on earlier edits' adapters; chained in test_merge_on_split_model")
    whole, split, tok = _load_pair(saved)
    probe = torch.tensor([tok(EDIT.prompt)["input_ids"]])  # (1, seq)
    originals = {k: v.clone() for k, v in offload.state_values(whole)}
    with torch.no_grad():
        logits0 = whole(probe).logits
    h0 = weights_hash(split)

    # Each load collects its own statistics (ROME's key covariance, K-FAC's factors) through
    # its own forward passes: separate caches, so the split run cannot reuse the whole one's.
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache-whole"))
    patch_w, ad_w = _run(editor_name, whole, tok)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache-split"))
    patch_s, ad_s = _run(editor_name, split, tok)

    assert weights_hash(split) != h0, "the edit did not change the split model"
    assert ({n: p.requires_grad for n, p in split.named_parameters()}
            == {n: p.requires_grad for n, p in whole.named_parameters()}), "requires_grad flags differ"
    assert offload.offloaded_modules(split), "the edit loaded the whole model; it should load only what it touches"
    _assert_same_weights(whole, split, f"{editor_name} edit")
    assert [w.name for w in patch_w.weights] == [w.name for w in patch_s.weights]
    for a, b in zip(patch_w.weights, patch_s.weights):
        assert torch.equal(a.before, b.before) and torch.equal(a.after, b.after)
    with torch.no_grad():
        logits_w, logits_s = whole(probe).logits, split(probe).logits
    assert torch.equal(logits_w, logits_s) and not torch.equal(logits_s, logits0)

    patch_s.revert(split, ad_s)
    patch_w.revert(whole, ad_w)
    assert weights_hash(split) == h0
    restored = dict(offload.state_values(split))
    assert sorted(restored) == sorted(originals)
    assert all(torch.equal(restored[k], originals[k]) for k in originals)
    with torch.no_grad():
        assert torch.equal(split(probe).logits, logits0)


def test_merge_on_split_model(saved):
    """The composing editors, chained: two LoRA edits, then `merge` (fold=true) adds them to
    the (offloaded) base weights, on both loads."""
    whole, split, tok = _load_pair(saved)
    h0 = weights_hash(split)
    patches = []
    for model in (whole, split):
        adapter = get_adapter(model)
        mine = []
        for name, seed in (("a", 0), ("b", 1)):
            cls = _editor_class("lora")
            ed = cls(cls.hparams_class.from_strings({"name": name, "steps": "5"}).derive(adapter))
            p = ed.edit(EditContext(model, tok, adapter, seed=seed), [EDIT])
            mine.append(p)
        cls = _editor_class("merge")
        merge = cls(cls.hparams_class.from_strings({"fold": "true"}).derive(adapter))
        mine.append(merge.edit(EditContext(model, tok, adapter, seed=0), [EDIT]))
        patches.append((adapter, mine))
    assert any(p.weights for p in patches[1][1]), "merge folded nothing into the base weights"
    _assert_same_weights(whole, split, "lora, lora, merge")
    for model, (adapter, mine) in zip((whole, split), patches):
        for p in reversed(mine):
            p.revert(model, adapter)
    assert weights_hash(split) == weights_hash(whole) == h0


# transformers warns that saving an offloaded model loads each shard (50 GB by default) in
# memory; true, and harmless at this size (noted in the README's device-map paragraph).
@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
def test_workbench_ledger_same_hash_split_or_not(saved, tmp_path):
    """A workspace made on the whole model opens on the split one (same base hash, replay
    checked), takes an edit there, exports it as a plain checkpoint, rolls back to base
    exactly, and verifies with a split replay."""
    from workbench.editing.session import Workbench
    path, budget = saved
    ws = tmp_path / "ws"
    wb = Workbench(path, ws)
    wb.edit("ft", [EDIT], params={"steps": "5"})
    head = wb.ledger.head_hash()
    wb.close()
    split = Workbench(path, ws, device_map="auto", max_memory={"cpu": budget})
    assert offload.offloaded_modules(split.model)
    assert split.base_hash == wb.base_hash and split.weights_hash() == head
    split.edit("rome", [EDIT])
    exported = split.export(tmp_path / "exported")  # offloaded modules are saved from the checkpoint
    assert weights_hash(load_model(exported)[0]) == split.weights_hash() != split.base_hash
    split.rollback("base")
    assert split.weights_hash() == split.base_hash == weights_hash(split.model)
    assert split.verify() == []
    split.close()


@pytest.mark.parametrize("kwargs, field", [
    (dict(device_map="auto", max_memory={"cpu": "lots"}), "max_memory"),
    (dict(device_map="auto", max_memory={"gpu7": "1GB"}), "max_memory"),
    (dict(device_map="auto", max_memory="cpu=1GB"), "max_memory"),
    (dict(device_map="everywhere"), "device_map"),
    (dict(max_memory={"cpu": "1GB"}), "device_map"),
    (dict(device_map="auto", max_memory={"cpu": 1000}), "max_memory"),  # not even the embeddings fit
])
def test_bad_placement_is_an_input_error(saved, kwargs, field):
    with pytest.raises(InputError) as e:
        load_model(saved[0], **kwargs)
    assert e.value.field == field


def test_device_map_without_accelerate_is_an_input_error(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now raises ImportError
    with pytest.raises(InputError, match="accelerate"):
        load_model(saved[0], device_map="auto")


def test_cli_passes_placement(saved, tmp_path):
    path, budget = saved
    if get_adapter(load_model(path)[0]).model_type != "llama":
        pytest.skip("the options' pass-through needs one architecture, and each CLI call costs seconds")
    base = [sys.executable, "-m", "workbench.cli", "log", "--model", path, "--workspace", tmp_path / "ws"]
    r = subprocess.run([*map(str, base), "--device-map", "auto", "--max-memory", f"cpu={budget}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    requests = tmp_path / "one.jsonl"
    requests.write_text(json.dumps(EDIT.to_dict()) + "\n")
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "eval", "--model", str(path), "--requests",
                        str(requests), "--device-map", "auto", "--max-memory", "cpu=lots"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "error:" in r.stderr and "lots" in r.stderr, r.stderr


def test_retrieval_on_split_model(saved):
    """Two adapters on the last block and `lora-retrieve` over them (refined where the block allows):
    the split model computes the same keys, routes the same rows and gives the same logits as the
    whole one, and reverts exactly."""
    from workbench.eval.requests import EditRequest
    from workbench.eval.routing import routes
    whole, split, tok = _load_pair(saved)
    h0 = weights_hash(split)
    other = EditRequest("The home city of Bo", "Paris", subject="Bo")
    out = {}
    for model in (whole, split):
        adapter = get_adapter(model)
        mine = []
        for name, req in (("a", EDIT), ("b", other)):
            cls = _editor_class("lora")
            hp = cls.hparams_class.from_strings({"name": name, "steps": "5", "layers": str(adapter.num_layers - 1)})
            mine.append(cls(hp.derive(adapter)).edit(EditContext(model, tok, adapter, seed=0), [req]))
        cls = _editor_class("lora-retrieve")
        mine.append(cls(cls.hparams_class.from_strings({"threshold": "0.9"}).derive(adapter)).edit(
            EditContext(model, tok, adapter), [EDIT, other]))
        probe = torch.tensor([tok(EDIT.prompt)["input_ids"]])  # (1, seq)
        with torch.no_grad():
            out[id(model)] = (routes(model, tok, [EDIT.prompt, other.prompt], ["Rome", "Paris"]),
                              model(probe).logits, mine[-1].attachments[0].state())
        for p in reversed(mine):
            p.revert(model, adapter)
    (r_w, y_w, s_w), (r_s, y_s, s_s) = out[id(whole)], out[id(split)]
    assert r_w == r_s and [final for _, final in r_w] == ["a", "b"]
    assert torch.equal(y_w, y_s)
    assert s_w.keys() == s_s.keys() and all(torch.equal(s_w[k], s_s[k]) for k in s_w)
    assert weights_hash(split) == weights_hash(whole) == h0
