"""`workbench.core.cache` (one on-disk tensor cache under WORKBENCH_CACHE) and `editors.common.corpus`
(one default corpus): what ROME/MEMIT's key statistics and K-FAC's factors share."""
from __future__ import annotations

import pytest
import torch

from workbench.core import cache

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


def test_a_one_time_cost_says_what_and_where_then_is_silent(capsys, tmp_path):
    steps = []

    def compute(advance):
        for _ in range(3):
            advance(1)
            steps.append(1)
        return {"x": torch.ones(2)}

    _, hit = cache.cached_tensors("demo", cache.cache_key(a=2), compute, what="collecting demo statistics", total=3)
    err = capsys.readouterr().err
    assert not hit and len(steps) == 3
    # stderr, not stdout: a piped command's output stays its result; no bar when not a terminal
    assert f"collecting demo statistics once (cached in {tmp_path / 'wb' / 'demo'})" in err
    _, hit = cache.cached_tensors("demo", cache.cache_key(a=2), compute, what="collecting demo statistics", total=3)
    assert hit and len(steps) == 3 and capsys.readouterr().err == ""


def test_cache_command_lists_and_clears_by_kind(capsys, tmp_path):
    from workbench.cli.main import main
    assert main(["cache"]) == 0 and "empty" in capsys.readouterr().out
    cache.store_tensors("kfac", cache.cache_key(a=1), {"x": torch.ones(1000)})
    cache.store_tensors("kv", cache.cache_key(a=1), {"x": torch.ones(10)})
    cache.store_tensors("kv", cache.cache_key(a=2), {"x": torch.ones(10)})
    (tmp_path / "wb" / "kv" / "notes.txt").write_text("not ours")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "wb") in out.splitlines()[0]
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["kfac", "1"], ["kv", "2"]]
    assert main(["cache", "--clear", "--kind", "kv"]) == 0
    assert "removed 2 file(s)" in capsys.readouterr().out
    assert [e["kind"] for e in cache.summary() if e["files"]] == ["kfac"]
    assert (tmp_path / "wb" / "kv" / "notes.txt").is_file()  # only the cache's own files go
    assert main(["cache", "--clear", "--kind", "nope"]) == 2
    assert "no cached kind nope" in capsys.readouterr().err
    assert main(["cache", "--clear"]) == 0 and cache.summary()[0]["files"] == 0
