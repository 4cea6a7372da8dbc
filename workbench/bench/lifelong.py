"""The lifelong-editing benchmark (the WISE protocol).

T sequential single edits from a request set are applied to a fresh copy of the model, one
`Workbench.edit` each in a scratch workspace (as a user would apply them), and then *all T are
scored on the final model*; several T are checkpoints of one run (the first T requests scored
when the T-th edit is in): reliability, generality and locality, teacher-forced and greedy
exact. Also reported: the median seconds per edit and the inference overhead of the edited
model (forward time over a fixed probe batch against an unedited copy, the two timed in turn).

    workbench bench lifelong --editors wise,grace,rome,memit,ft --T 1,10,100,1000
"""
from __future__ import annotations

import statistics
import time

import torch

from workbench.core.errors import InputError
from workbench.core.paths import COUNTERFACTUAL as DEFAULT_REQUESTS

METRICS = ("reliability", "reliability_exact", "generality", "generality_exact", "locality", "locality_exact")


def _forward_seconds(models, tok, prompts: list[str], repeats: int = 7) -> list[float]:
    """Median wall time of one batched forward pass over `prompts` (the inference probe) for each
    model, the models' passes interleaved so that a change in the machine's speed during the
    measurement reaches all of them alike."""
    from workbench.eval.scoring import right_pad
    ids, mask = right_pad(tok(prompts)["input_ids"], tok.pad_token_id)
    times = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            m(input_ids=ids, attention_mask=mask)  # warm-up
        for _ in range(repeats):
            for m, out in zip(models, times):
                t0 = time.perf_counter()
                m(input_ids=ids, attention_mask=mask)
                out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def run_one(editor: str, T: int, requests: list, *, model_dir=None, params: dict | None = None,
            progress=None) -> dict:
    """Apply `requests[:T]` one by one through a session, score all of them on the final model."""
    return run_series(editor, [T], requests, model_dir=model_dir, params=params, progress=progress)[0]


def run_series(editor: str, Ts: list[int], requests: list, *, model_dir=None, params: dict | None = None,
               progress=None, batch: int = 1) -> list[dict]:
    """One sequence of edits, `requests[:max(Ts)]`, `batch` requests per edit (sequential batches,
    AlphaEdit's and MEMIT's protocol; 1 = single edits), scored at each checkpoint T: the first T
    requests on the model as it stands after the edit that brought in the T-th. A row per T, each
    what a fresh run of T would give (the edit from request i on is seeded i either way), for the
    cost of the longest. With batches, each T must be a multiple of `batch`."""
    from workbench.bench.scratch import scratch_session
    from workbench.core.model import load_model
    from workbench.editing.registry import get_editor
    from workbench.eval.evaluate import evaluate_edits, reference
    Ts = sorted(set(Ts))
    caps = get_editor(editor).capabilities
    rows = {T: {"editor": editor, "T": T, "skipped": "not a sequential editor"}
            for T in Ts if T > batch and not caps.sequential}
    if batch > 1 and not caps.batch:
        rows = {T: {"editor": editor, "T": T, "skipped": "edits one request at a time"} for T in Ts}
    todo = [T for T in Ts if T not in rows]
    if todo:
        reqs = requests[:max(todo)]
        with scratch_session(model_dir) as wb:
            ref = reference(wb.model, wb.tok, reqs)  # keyed by request index: a prefix's is its part
            probe = [p.prompt for r in requests[:256] for p in r.locality][:256]
            base, _ = load_model(model_dir)  # the unedited model, timed beside the edited one
            times, total = [], 0.0  # seconds per request, one entry per edit; all seconds so far
            for i in range(0, len(reqs), batch):
                chunk = reqs[i:i + batch]
                event = wb.edit(editor, chunk, params or {}, seed=i)
                times.append(event.duration_s / len(chunk))  # the editor's own time, not the session's measuring
                total += event.duration_s
                if progress is not None:
                    progress(len(chunk))
                done = i + len(chunk)
                if done in todo:
                    scores = evaluate_edits(wb.model, wb.tok, reqs[:done], ref)["mean"]
                    t_after, t_before = _forward_seconds([wb.model, base], wb.tok, probe)
                    rows[done] = {"editor": editor, "T": done, **{m: scores[m] for m in METRICS},
                                  "median_edit_s": statistics.median(times), "total_edit_s": total,
                                  "inference_overhead": t_after / t_before - 1.0, "hparams": event.hparams,
                                  **({"batch": batch} if batch > 1 else {})}
    return [rows[T] for T in Ts]


def run(editors: list[str], Ts: list[int], *, requests_path=DEFAULT_REQUESTS, model_dir=None,
        params: dict[str, dict] | None = None, progress: bool = True, batch: int = 1) -> list[dict]:
    """Every (editor, T) pair; `params` maps an editor name to its hyperparameter strings;
    `batch` requests per edit (each T a multiple of it)."""
    from workbench.core.progress import progress_bar
    from workbench.editing.registry import get_editor
    from workbench.eval.requests import EditRequest, load_requests
    for name in editors:
        get_editor(name)  # unknown names fail before any work
    if not Ts or min(Ts) < 1:
        raise InputError(f"T values must be positive integers, got {Ts}", field="--T")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"must be a positive integer, got {batch!r}", field="--batch")
    if any(T % batch for T in Ts):
        raise InputError(f"every T must be a multiple of the batch size {batch}, got {Ts}", field="--T")
    reqs = [r for r in load_requests(requests_path) if isinstance(r, EditRequest)]
    if max(Ts) > len(reqs):
        raise InputError(f"T={max(Ts)} needs {max(Ts)} edit requests; {requests_path} has {len(reqs)}",
                         field="--T")
    rows = []
    with progress_bar("lifelong editing", max(Ts) * len(editors), enabled=progress) as advance:
        for name in editors:
            rows += run_series(name, Ts, reqs, model_dir=model_dir, params=(params or {}).get(name),
                               progress=advance, batch=batch)
    return rows


def load_rows(paths) -> list[dict]:
    """The rows one or more `workbench bench lifelong --json` runs wrote, each labelled with its
    editor (and, from several files, the file it came from, so ablation runs of one editor stay
    apart); anything else is refused with the file, row and field named."""
    from pathlib import Path
    from workbench.core.jsonio import read_json
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    out = []
    for p in paths:
        rows = read_json(p)  # a missing file or bad JSON: named with its line
        if not isinstance(rows, list) or not rows:
            raise InputError("expected a non-empty list of rows from `workbench bench lifelong --json`", file=p)
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or not isinstance(r.get("editor"), str):
                raise InputError(f"row {i}: expected a string", file=p, field="editor")
            if not isinstance(r.get("T"), int) or isinstance(r.get("T"), bool) or r["T"] < 1:
                raise InputError(f"row {i}: expected a positive integer", file=p, field="T")
            if "skipped" not in r:
                for m in METRICS:
                    if r.get(m) is not None and not isinstance(r.get(m), (int, float)):
                        raise InputError(f"row {i}: expected a number or null", file=p, field=m)
                for m in ("median_edit_s", "inference_overhead"):
                    if not isinstance(r.get(m), (int, float)):
                        raise InputError(f"row {i}: expected a number", file=p, field=m)
            out.append({**r, "label": r["editor"] if len(paths) == 1 else f"{r['editor']} ({p.stem})"})
    return out


def table(rows: list[dict]) -> str:
    """A Markdown table of the results (the README's)."""
    head = ("| editor | T | rel. | rel. exact | gen. | gen. exact | loc. | loc. exact | median s/edit | "
            "inference overhead |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r.get('label', r['editor'])} | {r['T']} | {r['skipped']} |" + " |" * 8)
            continue
        vals = " | ".join("—" if r.get(m) is None else f"{r[m]:.3f}" for m in METRICS)
        lines.append(f"| {r.get('label', r['editor'])} | {r['T']} | {vals} | {r['median_edit_s']:.3f} | "
                     f"{100 * r['inference_overhead']:+.1f}% |")
    return "\n".join(lines)
