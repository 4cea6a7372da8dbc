"""The adapter-merging benchmark.

`batches` batches of `size` counterfactual edits from the world; one LoRA adapter is trained
per batch, each on the unedited model (the earlier ones switched off: adapters are trained
independently, as they are when people later merge them). Everything goes through a session
in a scratch workspace (`lora`, `lora-switch`, `merge`, `undo`), as a user would do it. Then,
with every adapter switched on:

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


from workbench.bench.scratch import scratch_session
from workbench.core.errors import InputError
from workbench.core.paths import COUNTERFACTUAL as DEFAULT_REQUESTS

DENSITY_TYPES = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                 "magnitude_prune", "magnitude_prune_svd")
ALL_TYPES = ("linear", "cat", "svd") + DENSITY_TYPES


SCORED = ("reliability", "generality", "locality")


def _scores(model, tok, reqs, ref) -> dict:
    """The three means and their 95% intervals over the requests."""
    from workbench.eval.evaluate import evaluate_edits
    ev = evaluate_edits(model, tok, reqs, ref)
    return {**{k: ev["mean"][k] for k in SCORED}, "intervals": {k: ev["intervals"][k] for k in SCORED}}


def run(*, batches: int = 10, size: int = 50, types=ALL_TYPES, lora_params: dict | None = None,
        weight: float = 1.0, density: float = 0.5, wise: bool = True, model_dir=None, requests_path=DEFAULT_REQUESTS,
        progress: bool = True) -> list[dict]:
    """The rows of the module docstring. `weight` is every adapter's merge weight."""
    from workbench.core.progress import progress_bar
    from workbench.eval.evaluate import reference
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
    rows = []
    steps = 2 * batches + 1 + len(types) + (len(reqs) if wise else 0)
    with scratch_session(model_dir) as wb, progress_bar("adapter merging", steps, enabled=progress) as advance:
        ref = reference(wb.model, wb.tok, reqs)
        names, train_s, sizes = [], [], []
        for b in range(batches):
            # Each adapter is trained with the earlier ones switched off, i.e. on the unedited
            # model: adapters trained apart, as they are when people later merge them.
            batch, name = reqs[b * size:(b + 1) * size], f"lora{b}"
            event = wb.edit("lora", batch, {**(lora_params or {}), "name": name}, seed=b)
            train_s.append(event.duration_s)
            sizes.append(event.patch_bytes)
            names.append(name)
            advance(1)
            wb.edit("lora-switch", batch, {"adapters": name, "enabled": "false"})
            advance(1)
        wb.edit("lora-switch", reqs, {"adapters": ",".join(names), "enabled": "true"})
        advance(1)
        rows.append({"method": "sources (all on)", **_scores(wb.model, wb.tok, reqs, ref),
                     "bytes": sum(sizes), "seconds": sum(train_s)})
        for ct in types:
            params = {"combination_type": ct, "weights": ",".join([str(weight)] * batches)}
            if ct in DENSITY_TYPES:
                params["density"] = str(density)
            event = wb.edit("merge", reqs, params)
            merged = wb.patch(event.id)
            rows.append({"method": ct, **_scores(wb.model, wb.tok, reqs, ref), "bytes": merged.nbytes,
                         "seconds": event.duration_s, "rank": merged.meta["merged_rank"]})
            wb.undo(note="bench: back to the sources")
            advance(1)
    if wise:
        rows.append(_wise_row(model_dir, reqs, ref, advance))
    return rows


def _wise_row(model_dir, reqs, ref, advance) -> dict:
    """WISE applied to the same edits one by one, in a session of its own."""
    with scratch_session(model_dir) as wb:
        base_keys = set(wb.model.state_dict())
        seconds = 0.0
        for i, r in enumerate(reqs):
            seconds += wb.edit("wise", [r], {}, seed=i).duration_s
            advance(1)
        added = [t for k, t in wb.model.state_dict().items() if k not in base_keys]  # the side memory's tensors
        return {"method": "wise (TIES shards)", **_scores(wb.model, wb.tok, reqs, ref),
                "bytes": sum(t.numel() * t.element_size() for t in added), "seconds": seconds}


def load_rows(path) -> list[dict]:
    """The rows a `workbench bench merge --json` run wrote; anything else is refused with the file,
    the row and the field named."""
    from pathlib import Path
    from workbench.bench.rows import read_rows
    p = Path(path)
    rows = read_rows(p, "merge", ("method",))
    for i, r in enumerate(rows):
        for k in (*SCORED, "bytes", "seconds"):
            if not isinstance(r.get(k), (int, float)) or isinstance(r.get(k), bool):
                raise InputError(f"row {i}: expected a number", file=p, field=k)
        ivs = r.get("intervals")
        if ivs is not None and not (isinstance(ivs, dict) and all(
                isinstance(iv, dict) and all(isinstance(iv.get(b), (int, float)) for b in ("value", "lo", "hi"))
                for iv in ivs.values())):
            raise InputError(f"row {i}: expected {{metric: {{value, lo, hi}}}}", file=p, field="intervals")
    return rows


def table(rows: list[dict]) -> str:
    """A Markdown table: each rate with its 95% interval over the edits (bootstrap over requests)
    where the row recorded one."""
    from workbench.eval.stats import fmt
    lines = ["| method | rel. | gen. | loc. | rank | size (KiB) | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {' | '.join(fmt(r[k], (r.get('intervals') or {}).get(k)) for k in SCORED)} | "
                     f"{r.get('rank', '—')} | {r['bytes'] / 1024:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)
