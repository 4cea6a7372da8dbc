"""Patches: minimal slices, resizing tensors, exact round trips, hash cache."""
import pytest
import torch

from workbench.core.patch import HashCache, Patch, WeightChange, WeightRecorder, weights_hash

from .tiny_models import tiny_model

NAME = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture
def model():
    return tiny_model("llama")


def test_recorder_keeps_only_the_changed_slices(model, tmp_path):
    rec = WeightRecorder(model, [NAME, "model.norm.weight"])
    with torch.no_grad():
        model.get_parameter(NAME)[:, 5] += 0.5   # one neuron column
    patch = rec.patch()
    (w,) = patch.weights  # the untouched norm is not in the patch
    assert w.dim == 1 and w.index.tolist() == [5] and w.before.shape == (model.config.hidden_size, 1)
    rec2 = WeightRecorder(model, [NAME])
    with torch.no_grad():
        model.get_parameter(NAME).mul_(1.5)  # a dense change keeps the whole tensor
    assert rec2.patch().weights[0].index is None


def test_save_load_revert_apply_bit_exact_even_with_nan(model, tmp_path):
    h0 = weights_hash(model)
    rec = WeightRecorder(model, [NAME])
    with torch.no_grad():
        model.get_parameter(NAME)[0, 0] = float("nan")
        model.get_parameter(NAME)[3] += 1e-7
    h1 = weights_hash(model)
    patch = rec.patch(meta={"why": "test"})
    digest = patch.save(tmp_path / "p.safetensors")
    assert len(digest) == 64
    loaded = Patch.load(tmp_path / "p.safetensors")
    assert loaded.meta == {"why": "test"}
    loaded.revert(model)
    assert weights_hash(model) == h0
    loaded.apply(model)
    assert weights_hash(model) == h1


def test_resized_buffer_round_trips(model, tmp_path):
    model.model.norm.register_buffer("keys", torch.zeros(1, 4))
    h0 = weights_hash(model)
    rec = WeightRecorder(model, ["model.norm.keys"])
    model.model.norm.register_buffer("keys", torch.arange(12.0).view(3, 4))
    patch = rec.patch()
    assert patch.weights[0].resizes
    patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(tmp_path / "p.safetensors")
    loaded.revert(model)
    assert model.model.norm.keys.shape == (1, 4) and weights_hash(model) == h0
    loaded.apply(model)
    assert torch.equal(model.model.norm.keys, torch.arange(12.0).view(3, 4))


def test_shape_mismatch_without_resize_is_refused(model):
    bad = WeightChange(NAME, torch.zeros(2, 2), torch.zeros(2, 2), dim=0, index=None)
    with pytest.raises(Exception, match="does not fit"):
        bad.apply(model)


def test_corrupt_patch_file_is_refused(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"not a safetensors file at all")
    with pytest.raises(Exception, match="not a readable patch file"):
        Patch.load(p)


def test_hash_cache_matches_full_hash_and_sees_in_place_changes(model):
    cache = HashCache()
    assert weights_hash(model, cache) == weights_hash(model)
    with torch.no_grad():
        model.get_parameter(NAME)[0, 0] += 1
    assert weights_hash(model, cache) == weights_hash(model)
    model.get_parameter(NAME).data[0, 0] -= 1  # bypasses the version counter ...
    cache.invalidate([NAME])                    # ... so the writer must say so
    assert weights_hash(model, cache) == weights_hash(model)


def test_hash_cache_is_not_fooled_by_a_new_tensor_at_a_freed_address():
    # GRACE names a new entry like a removed one (uids restart in an emptied codebook); the
    # allocator often hands the new buffer the freed one's address with version 0 again.
    m = torch.nn.Linear(2, 2)
    cache, stale = HashCache(), 0
    for i in range(50):
        m.register_buffer("r", torch.full((256,), float(i)))
        cache.invalidate([], structure=True)
        stale += weights_hash(m, cache) != weights_hash(m)
        del m.r
        cache.invalidate([], structure=True)
        assert weights_hash(m, cache) == weights_hash(m)
    assert stale == 0
