"""The adapter-merging benchmark.

`batches` batches of `size` counterfactual edits from the world; one LoRA adapter is trained
per batch, each on the unedited model (the earlier ones switched off: adapters are trained
independently, as they are when people later merge them). Everything goes through a session
in a scratch workspace (`lora`, `lora-switch`, `merge`, `lora-retrieve`, `undo`), as a user
would do it. Every adapter adapts the same modules (by default the MLP output projection of the
last block: retrieval needs adapters after block 0, and one setting for every row keeps the rows
comparable; `lora_params` may set others). Then:

- "sources (all on)": the adapters simply stacked, no merge;
- one row per peft combination type: the adapters merged by the `merge` editor, the
  sources switched off, so the model runs the merged adapter alone;
- "retrieval" and "retrieval + refinement": `lora-retrieve` over the same adapters (MOS's
  training-free retrieval, without and with its self-refinement): each input reads the adapter
  that holds it, or none;
- with `mos_momentum` > 0, the adapters trained again MOS's way (each pulled toward the mean of
  the earlier ones after every step): "MOS training + retrieval + refinement" and "MOS training +
  <type>" for every combination type;
- "wise (TIES shards)": for comparison, WISE applied sequentially to the same edits; its
  side memory merges its knowledge shards with TIES.

Each row: reliability, generality and locality over all edits (teacher-forced), the size in
bytes (merged adapter; for retrieval the adapters plus their keys) and the merge (or retrieval
set-up) time. Retrieval rows add `routing` — the share of edit prompts and of rephrasings sent
to the adapter that holds their edit, the share of locality probes sent to none, and the
confusion counts (holder × adapter read) — and `overhead`: the time of a forward pass over every
probe against the unedited model's, measured in the same run.

    workbench bench merge [--batches 10] [--size 50] [--types linear,cat,...] [--no-wise]
                          [--mos-momentum 0.1]
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
        weight: float = 1.0, density: float = 0.5, wise: bool = True, retrieval: bool = True,
        mos_momentum: float = 0.1, model_dir=None, requests_path=DEFAULT_REQUESTS, progress: bool = True) -> list[dict]:
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
    if not 0 <= mos_momentum < 1:
        raise InputError(f"must be in [0, 1), got {mos_momentum}", field="--mos-momentum")
    reqs = [r for r in load_requests(requests_path) if isinstance(r, EditRequest)]
    if batches * size > len(reqs):
        raise InputError(f"{batches} x {size} edits needed; {requests_path} has {len(reqs)}", field="--size")
    reqs = reqs[:batches * size]
    mos = mos_momentum > 0
    group = 2 * batches + 1 + len(types)
    steps = group + (2 * 2 if retrieval else 0) + (group + (2 if retrieval else 0) if mos else 0) + \
        (len(reqs) if wise else 0)
    rows = []
    with scratch_session(model_dir) as wb, progress_bar("adapter merging", steps, enabled=progress) as advance:
        ref = reference(wb.model, wb.tok, reqs)
        params = {"layers": str(wb.adapter.num_layers - 1), **(lora_params or {})}
        probes = _probe_batches(wb.tok, reqs) if retrieval else None
        base_s = _forward_seconds(wb.model, probes) if retrieval else None
        names, sizes, train_s = _train(wb, reqs, batches, size, params, advance)
        rows += _merge_rows(wb, reqs, ref, names, sizes, train_s, types, weight, density, advance)
        if retrieval:
            for refine in (False, True):
                rows.append(_retrieval_row(wb, reqs, ref, names, sizes, size, refine, probes, base_s, advance))
        if mos:
            for _ in range(2 * batches + 1):  # the independent adapters leave; the MOS ones take their names
                wb.undo(note="bench: make room for the MOS-trained adapters")
            mos_params = {**params, "mos_momentum": str(mos_momentum)}
            names, sizes, train_s = _train(wb, reqs, batches, size, mos_params, advance)
            label = "MOS training + "
            if retrieval:
                rows.append(_retrieval_row(wb, reqs, ref, names, sizes, size, True, probes, base_s, advance, label))
            rows += [dict(r, method=label + r["method"]) for r in
                     _merge_rows(wb, reqs, ref, names, sizes, train_s, types, weight, density, advance)]
    if wise:
        rows.append(_wise_row(model_dir, reqs, ref, advance))
    return rows


def _train(wb, reqs, batches: int, size: int, params: dict, advance) -> tuple[list[str], list[int], float]:
    """One adapter per batch, each trained with the earlier ones switched off (on the unedited
    model: adapters trained apart, as they are when people later merge them); then all switched on.
    Returns the names, each adapter's patch size and the training seconds."""
    names, sizes, seconds = [], [], 0.0
    for b in range(batches):
        batch, name = reqs[b * size:(b + 1) * size], f"lora{b}"
        event = wb.edit("lora", batch, {**params, "name": name}, seed=b)
        sizes.append(event.patch_bytes)
        names.append(name)
        seconds += event.duration_s
        advance(1)
        wb.edit("lora-switch", batch, {"adapters": name, "enabled": "false"})
        advance(1)
    wb.edit("lora-switch", reqs, {"adapters": ",".join(names), "enabled": "true"})
    advance(1)
    return names, sizes, seconds


def _merge_rows(wb, reqs, ref, names, sizes, train_s, types, weight, density, advance) -> list[dict]:
    """The sources stacked, then each combination type (undone after it is scored)."""
    rows = [{"method": "sources (all on)", **_scores(wb.model, wb.tok, reqs, ref), "bytes": sum(sizes),
             "seconds": train_s}]
    for ct in types:
        params = {"combination_type": ct, "weights": ",".join([str(weight)] * len(names))}
        if ct in DENSITY_TYPES:
            params["density"] = str(density)
        event = wb.edit("merge", reqs, params)
        merged = wb.patch(event.id)
        rows.append({"method": ct, **_scores(wb.model, wb.tok, reqs, ref), "bytes": merged.nbytes,
                     "seconds": event.duration_s, "rank": merged.meta["merged_rank"]})
        wb.undo(note="bench: back to the sources")
        advance(1)
    return rows


def _retrieval_row(wb, reqs, ref, names, sizes, size: int, refine: bool, probes, base_s: float, advance,
                   label: str = "") -> dict:
    """`lora-retrieve` over the adapters: scores, routing and inference overhead; undone after."""
    from workbench.eval.routing import routes
    event = wb.edit("lora-retrieve", reqs, {"adapters": ",".join(names), "refine": str(refine).lower()})
    advance(1)
    patch = wb.patch(event.id)
    row = {"method": label + ("retrieval + refinement" if refine else "retrieval"),
           **_scores(wb.model, wb.tok, reqs, ref), "bytes": sum(sizes) + patch.nbytes,
           "seconds": event.duration_s, "threshold": patch.meta["threshold"],
           "routing": _routing(wb.model, wb.tok, reqs, names, size, routes),
           "overhead": round(_forward_seconds(wb.model, probes) / base_s - 1, 4)}
    wb.undo(note="bench: retrieval off")
    advance(1)
    return row


def _routing(model, tok, reqs, names: list[str], size: int, routes) -> dict:
    """Where every probe went: shares and the confusion counts (holder × adapter read; 'none' last)."""
    from workbench.eval.routing import confusion, probes
    kinds = probes(reqs, [names[i // size] for i in range(len(reqs))])
    labels = [*names, "none"]
    out, got_all, want_all = {}, [], []
    for kind, (prompts, answers, want) in kinds.items():
        got = [final for _, final in routes(model, tok, prompts, answers)]
        out[f"{kind}_right"] = round(sum(g == w for g, w in zip(got, want)) / max(1, len(got)), 4)
        got_all += got
        want_all += want
    out["confusion"] = {"labels": labels, "counts": confusion(got_all, want_all, labels)}
    return out


def _probe_batches(tok, reqs) -> list:
    """Every probe of the requests (edit, rephrasings, locality with its answer) as padded batches."""
    from workbench.eval.routing import all_probes
    from workbench.eval.scoring import answer_rows
    prompts, answers, _ = all_probes(reqs, [None] * len(reqs))
    return list(answer_rows(tok, prompts, answers))


def _forward_seconds(model, batches, repeats: int = 3) -> float:
    """The fastest of `repeats` forward passes over the batches (seconds)."""
    import time
    import torch
    device = next(model.parameters()).device
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for x, mask in batches:
                model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False)
            best = min(best, time.perf_counter() - t0)
    return best


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
        if "routing" in r:
            _check_routing(p, i, r)
    return rows


def _check_routing(p, i: int, r: dict) -> None:
    """A retrieval row's routing shares, confusion counts, threshold and overhead."""
    g = r["routing"]
    if not isinstance(g, dict):
        raise InputError(f"row {i}: expected an object", file=p, field="routing")
    for k in ("edits_right", "rephrasings_right", "locality_right"):
        if not isinstance(g.get(k), (int, float)) or isinstance(g.get(k), bool):
            raise InputError(f"row {i}: expected a number", file=p, field=f"routing.{k}")
    c = g.get("confusion")
    labels = c.get("labels") if isinstance(c, dict) else None
    counts = c.get("counts") if isinstance(c, dict) else None
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels) and isinstance(counts, list)
            and len(counts) == len(labels) and all(isinstance(row, list) and len(row) == len(labels)
                                                   and all(isinstance(v, int) for v in row) for row in counts)):
        raise InputError(f"row {i}: expected {{labels: [names], counts: [[ints]] (square)}}", file=p,
                         field="routing.confusion")
    for k in ("threshold", "overhead"):
        if not isinstance(r.get(k), (int, float)) or isinstance(r.get(k), bool):
            raise InputError(f"row {i}: expected a number", file=p, field=k)


def table(rows: list[dict]) -> str:
    """A Markdown table: each rate with its 95% interval over the edits (bootstrap over requests)
    where the row recorded one."""
    from workbench.eval.stats import fmt
    lines = ["| method | rel. | gen. | loc. | rank | size (KiB) | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {' | '.join(fmt(r[k], (r.get('intervals') or {}).get(k)) for k in SCORED)} | "
                     f"{r.get('rank', '—')} | {r['bytes'] / 1024:.1f} | {r['seconds']:.2f} |")
    routed = [r for r in rows if "routing" in r]
    if routed:
        lines += ["", "| retrieval | edits → their adapter | rephrasings → their adapter | locality → none | "
                      "threshold | inference time vs. unedited |", "|---|---|---|---|---|---|"]
        for r in routed:
            g = r["routing"]
            lines.append(f"| {r['method']} | {g['edits_right']:.3f} | {g['rephrasings_right']:.3f} | "
                         f"{g['locality_right']:.3f} | {r['threshold']:.3f} | {r['overhead']:+.1%} |")
    return "\n".join(lines)
