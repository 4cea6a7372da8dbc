"""An on-disk cache of tensors keyed by what they were computed from (safetensors, no pickle).

Statistics such as K-FAC factors or key covariances take a pass over a corpus; they depend
only on the model's weights, the corpus and a few settings, so they are stored under a
sha256 of exactly those and reused. The folder is `~/.cache/workbench` (`WORKBENCH_CACHE` moves it;
tests use a temporary one); `workbench cache` lists it and `workbench cache --clear` empties it.
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


def cached_tensors(kind: str, key: str, compute: Callable[..., dict[str, torch.Tensor]], *,
                   what: str | None = None, total: int | None = None) -> tuple[dict, bool]:
    """(tensors, hit): load `kind/key.safetensors` or compute, store (atomically) and return.
    With `what` (e.g. "collecting K-FAC factors") a miss is announced with the cache's place
    and `compute(advance)` gets a progress callback over `total` units; else `compute()`.

    Example:
        >>> t, hit = cached_tensors("demo", cache_key(a=1), lambda: {"x": torch.ones(2)})  # doctest: +SKIP
    """
    from workbench.core.progress import one_time_cost
    tensors = load_tensors(kind, key)
    if tensors is not None:
        return tensors, True
    if what is None:
        tensors = compute()
    else:
        with one_time_cost(what, cache_dir() / kind, total or 0) as advance:
            tensors = compute(advance)
    store_tensors(kind, key, tensors)
    return tensors, False


def summary() -> list[dict]:
    """Each kind of cached statistics: files, bytes, and the newest file's time (UTC, ISO)."""
    import datetime
    root = cache_dir()
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = [f for f in d.glob("*.safetensors") if f.is_file()]
        newest = max((f.stat().st_mtime for f in files), default=None)
        out.append({"kind": d.name, "files": len(files), "bytes": sum(f.stat().st_size for f in files),
                    "newest": None if newest is None else
                    datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return out


def clear(kinds: list[str] | None = None) -> tuple[int, int]:
    """Remove the cached files of `kinds` (None: every kind); (files, bytes) removed. Only
    `*.safetensors` files this module wrote are touched, never anything else in the folder."""
    removed, freed = 0, 0
    for entry in summary():
        if kinds is not None and entry["kind"] not in kinds:
            continue
        for f in (cache_dir() / entry["kind"]).glob("*.safetensors"):
            freed += f.stat().st_size
            f.unlink()
            removed += 1
    return removed, freed
