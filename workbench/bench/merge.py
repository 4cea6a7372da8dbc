"""The adapter-merging benchmark.

`batches` batches of `size` counterfactual edits from the world; one LoRA adapter is trained
per batch, each on the unedited model (adapters are trained independently, as they are when
people later merge them). Then, on a fresh copy with every adapter attached:

- "sources (all on)": the adapters simply stacked, no merge;
- one row per peft combination type: the adapters merged by the `merge` editor, the
  sources switched off, so the model runs the merged adapter alone;
- "wise (TIES shards)": for comparison, WISE applied sequentially to the same edits; its
  side memory merges its knowledge shards with TIES.

Each row: reliability, generality and locality over all edits (teacher-forced), the merged
adapter's size in bytes (the patch's tensors) and the merge time.

    workbench bench merge [--batches 10] [--size 50] [--types linear,cat,...] [--no-wise]
"""
from __future__ import annotations

import time

from workbench.core.errors import InputError
from workbench.bench.lifelong import DEFAULT_REQUESTS

DENSITY_TYPES = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                 "magnitude_prune", "magnitude_prune_svd")
ALL_TYPES = ("linear", "cat", "svd") + DENSITY_TYPES


def _scores(model, tok, reqs, ref) -> dict:
    from workbench.eval.evaluate import evaluate_edits
    mean = evaluate_edits(model, tok, reqs, ref)["mean"]
    return {k: mean[k] for k in ("reliability", "generality", "locality")}


def run(*, batches: int = 10, size: int = 50, types=ALL_TYPES, lora_params: dict | None = None,
        weight: float = 1.0, density: float = 0.5, wise: bool = True, model_dir=None, requests_path=DEFAULT_REQUESTS,
        progress: bool = True) -> list[dict]:
    """The rows of the module docstring. `weight` is every adapter's merge weight."""
    from workbench.core.arch import get_adapter
    from workbench.editing.contract import EditContext
    from workbench.eval.evaluate import reference
    from workbench.core.model import load_model
    from workbench.core.progress import progress_bar
    from workbench.editing.registry import make_editor
    from workbench.eval.requests import EditRequest, load_requests
    unknown = [t for t in types if t not in ALL_TYPES]
    if unknown or not types:
        raise InputError(f"unknown combination type(s) {unknown or list(types)}; choose from {', '.join(ALL_TYPES)}",
                         field="--types")
    if batches < 1 or size < 1:
        raise InputError(f"--batches and --size must be positive, got {batches} and {size}", field="--batches")
    reqs = [r for r in load_requests(requests_path) if isinstance(r, EditRequest)]
    if batches * size > len(reqs):
        raise InputError(f"{batches} x {size} edits needed; {requests_path} has {len(reqs)}", field="--size")
    reqs = reqs[:batches * size]
    model, tok = load_model(model_dir)
    adapter = get_adapter(model)
    ref = reference(model, tok, reqs)
    rows = []
    steps = batches + len(types) + (len(reqs) if wise else 0)
    with progress_bar("adapter merging", steps, enabled=progress) as advance:
        patches, train_s = [], []
        for b in range(batches):  # each adapter trained on the unedited model, then taken off
            editor, _ = make_editor("lora", adapter, {**(lora_params or {}), "name": f"lora{b}"})
            t0 = time.perf_counter()
            p = editor.edit(EditContext(model, tok, adapter, seed=b), reqs[b * size:(b + 1) * size])
            train_s.append(time.perf_counter() - t0)
            p.revert(model, adapter)
            patches.append(p)
            advance(1)
        for p in patches:
            p.apply(model, adapter)
        rows.append({"method": "sources (all on)", **_scores(model, tok, reqs, ref),
                     "bytes": sum(p.nbytes for p in patches), "seconds": sum(train_s)})
        for ct in types:
            params = {"combination_type": ct, "weights": ",".join([str(weight)] * batches)}
            if ct in DENSITY_TYPES:
                params["density"] = str(density)
            editor, _ = make_editor("merge", adapter, params)
            t0 = time.perf_counter()
            merged = editor.edit(EditContext(model, tok, adapter), reqs)
            seconds = time.perf_counter() - t0
            rows.append({"method": ct, **_scores(model, tok, reqs, ref), "bytes": merged.nbytes, "seconds": seconds,
                         "rank": merged.meta["merged_rank"]})
            merged.revert(model, adapter)
            advance(1)
        for p in reversed(patches):
            p.revert(model, adapter)
        if wise:
            rows.append(_wise_row(model_dir, reqs, ref, advance))
    return rows


def _wise_row(model_dir, reqs, ref, advance) -> dict:
    """WISE on a fresh copy: its patches are not kept (each holds side-memory snapshots)."""
    from workbench.core.arch import get_adapter
    from workbench.editing.contract import EditContext
    from workbench.core.model import load_model
    from workbench.editing.registry import make_editor
    model, tok = load_model(model_dir)
    adapter = get_adapter(model)
    base_keys = set(model.state_dict())
    t0 = time.perf_counter()
    for i, r in enumerate(reqs):
        editor, _ = make_editor("wise", adapter, {})
        editor.edit(EditContext(model, tok, adapter, seed=i), [r])
        advance(1)
    seconds = time.perf_counter() - t0
    added = [t for k, t in model.state_dict().items() if k not in base_keys]  # the side memory's tensors
    return {"method": "wise (TIES shards)", **_scores(model, tok, reqs, ref),
            "bytes": sum(t.numel() * t.element_size() for t in added), "seconds": seconds}


def table(rows: list[dict]) -> str:
    lines = ["| method | rel. | gen. | loc. | rank | size (KiB) | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['reliability']:.3f} | {r['generality']:.3f} | {r['locality']:.3f} | "
                     f"{r.get('rank', '—')} | {r['bytes'] / 1024:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)
