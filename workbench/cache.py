"""An on-disk cache of tensors keyed by what they were computed from (safetensors, no pickle).

Statistics such as K-FAC factors or key covariances take a pass over a corpus; they depend
only on the model's weights, the corpus and a few settings, so they are stored under a
sha256 of exactly those and reused. `WORKBENCH_CACHE` moves the folder (tests use tmp).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch


def cache_dir() -> Path:
    root = os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench"
    return Path(root)


def cache_key(**parts) -> str:
    """A stable hex key from JSON-able parts (sorted), e.g. model hash, corpus hash, layers."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def cached_tensors(kind: str, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict, bool]:
    """(tensors, hit): load `kind/key.safetensors` or compute, store (atomically) and return.

    Example:
        >>> t, hit = cached_tensors("demo", cache_key(a=1), lambda: {"x": torch.ones(2)})  # doctest: +SKIP
    """
    from safetensors.torch import load_file, save_file
    path = cache_dir() / kind / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path)), True
        except Exception:  # a truncated or foreign file: recompute and overwrite
            path.unlink(missing_ok=True)
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    return tensors, False
