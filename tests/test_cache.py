"""`editors.common.cache` (one on-disk tensor cache under WORKBENCH_CACHE) and `editors.common.corpus`
(one default corpus): what ROME/MEMIT's key statistics and K-FAC's factors share."""
from __future__ import annotations

import pytest
import torch

from editors.common import cache

from editors.common import corpus

from editors.common import kv
from workbench.core.errors import InputError


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "wb"))


def test_cached_tensors_compute_once_then_read_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0).view(2, 3)}

    key = cache.cache_key(model="m", layer=1)
    first, hit1 = cache.cached_tensors("demo", key, compute)
    again, hit2 = cache.cached_tensors("demo", key, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(first["x"], again["x"])
    assert cache.cache_path("demo", key) == tmp_path / "wb" / "demo" / f"{key}.safetensors"
    assert cache.cache_key(layer=1, model="m") == key  # order of the parts does not matter
    assert cache.cache_key(model="m", layer=2) != key


def test_a_truncated_file_is_recomputed_and_replaced():
    key = cache.cache_key(a=1)
    cache.store_tensors("demo", key, {"x": torch.ones(4)}, meta={"note": 1})
    path = cache.cache_path("demo", key)
    path.write_bytes(path.read_bytes()[:20])
    assert cache.load_tensors("demo", key) is None and not path.exists()
    t, hit = cache.cached_tensors("demo", key, lambda: {"x": torch.zeros(4)})
    assert not hit and torch.equal(cache.load_tensors("demo", key)["x"], torch.zeros(4))
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_one_default_corpus_for_every_editor(shipped_world):
    from editors import kfac
    texts = corpus.default_corpus()
    assert kfac.default_corpus() == texts == kv.default_corpus()
    assert len(texts) > 1000
    assert not set(texts) & {c["text"] for c in shipped_world.canaries}
    texts.append("mutating the returned list")
    assert corpus.default_corpus()[-1] != "mutating the returned list"


def test_read_corpus_takes_txt_lines_and_jsonl_texts(tmp_path):
    (tmp_path / "c.txt").write_text("one\n\n two \n", encoding="utf-8")
    assert corpus.read_corpus(tmp_path / "c.txt") == ["one", " two "]
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert corpus.load_corpus(str(tmp_path / "c.jsonl")) == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError) as e:
        corpus.read_corpus(tmp_path / "bad.jsonl")
    assert e.value.line == 2 and e.value.field == "text"
    with pytest.raises(InputError):
        corpus.read_corpus(tmp_path / "missing.txt")
