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


def cache_path(kind: str, key: str) -> Path:
    """Where the tensors of `kind` under `key` are stored: cache_dir()/kind/key.safetensors."""
    return cache_dir() / kind / f"{key}.safetensors"


def load_tensors(kind: str, key: str) -> dict[str, torch.Tensor] | None:
    """The stored tensors, or None when there are none (or the file is truncated or foreign,
    which is then removed so that the caller recomputes and overwrites it)."""
    from safetensors.torch import load_file
    path = cache_path(kind, key)
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception:
        path.unlink(missing_ok=True)
        return None


def store_tensors(kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Store `tensors` under `key`, atomically: a concurrent reader never sees half a file.
    `meta` (str values) goes into the safetensors header, for a person looking at the file."""
    from safetensors.torch import save_file
    path = cache_path(kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in (meta or {}).items()} or None)
    os.replace(tmp, path)


def cached_tensors(kind: str, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict, bool]:
    """(tensors, hit): load `kind/key.safetensors` or compute, store (atomically) and return.

    Example:
        >>> t, hit = cached_tensors("demo", cache_key(a=1), lambda: {"x": torch.ones(2)})  # doctest: +SKIP
    """
    tensors = load_tensors(kind, key)
    if tensors is not None:
        return tensors, True
    tensors = compute()
    store_tensors(kind, key, tensors)
    return tensors, False
