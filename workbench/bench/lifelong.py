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

import time

import torch

from workbench.core.errors import InputError
from workbench.core.paths import COUNTERFACTUAL as DEFAULT_REQUESTS

METRICS = ("reliability", "reliability_exact", "generality", "generality_exact", "locality", "locality_exact")


def _forward_seconds(models, tok, prompts: list[str], repeats: int = 7) -> list[list[float]]:
    """Wall time of one batched forward pass over `prompts` (the inference probe) for each model,
    `repeats` times, the models' passes interleaved so that a change in the machine's speed
    during the measurement reaches all of them alike (repeat i of each model is a pair)."""
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
    return times


def scored_row(editor: str, T: int, evaluation: dict, times: list[float], overheads: list[float]) -> dict:
    """One checkpoint's row from `evaluate_edits`' result: each metric's mean with its interval
    over the T requests, the per-request scores (for paired comparisons between runs), seconds
    per edit and the inference overhead with their spread over the repeats."""
    from workbench.eval.stats import spread
    per = evaluation["per_request"]
    edit_s, over = spread(times), spread(overheads)
    return {"editor": editor, "T": T, **{m: evaluation["mean"][m] for m in METRICS},
            "intervals": {m: evaluation["intervals"][m] for m in METRICS if m in evaluation["intervals"]},
            "per_request": {"id": [r["id"] for r in per],
                            **{m: [None if r[m] is None else round(r[m], 6) for r in per] for m in METRICS}},
            "median_edit_s": edit_s["median"], "edit_s": edit_s, "total_edit_s": sum(times),
            "inference_overhead": over["median"], "inference_overhead_spread": over}


def run_one(editor: str, T: int, requests: list, *, model_dir=None, params: dict | None = None,
            progress=None) -> dict:
    """Apply `requests[:T]` one by one through a session, score all of them on the final model."""
    return run_series(editor, [T], requests, model_dir=model_dir, params=params, progress=progress)[0]


def run_series(editor: str, Ts: list[int], requests: list, *, model_dir=None, params: dict | None = None,
               progress=None, batch: int = 1, repeats: int = 7) -> list[dict]:
    """One sequence of edits, `requests[:max(Ts)]`, `batch` requests per edit (sequential batches,
    AlphaEdit's and MEMIT's protocol; 1 = single edits), scored at each checkpoint T: the first T
    requests on the model as it stands after the edit that brought in the T-th. A row per T, each
    what a fresh run of T would give (the edit from request i on is seeded i either way), for the
    cost of the longest. With batches, each T must be a multiple of `batch`; `repeats` timed forward
    passes of the edited and the unedited model measure the inference overhead."""
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
                    after, before = _forward_seconds([wb.model, base], wb.tok, probe, repeats)
                    rows[done] = {**scored_row(editor, done, evaluate_edits(wb.model, wb.tok, reqs[:done], ref),
                                               times, [a / b - 1.0 for a, b in zip(after, before)]),
                                  "total_edit_s": total, "hparams": event.hparams,
                                  **({"batch": batch} if batch > 1 else {})}
    return [rows[T] for T in Ts]


def run(editors: list[str], Ts: list[int], *, requests_path=DEFAULT_REQUESTS, model_dir=None,
        params: dict[str, dict] | None = None, progress: bool = True, batch: int = 1, repeats: int = 7) -> list[dict]:
    """Every (editor, T) pair; `params` maps an editor name to its hyperparameter strings;
    `batch` requests per edit (each T a multiple of it); `repeats` timed forward passes per
    checkpoint for the inference overhead."""
    from workbench.core.progress import progress_bar
    from workbench.editing.registry import get_editor
    from workbench.eval.requests import EditRequest, load_requests
    for name in editors:
        get_editor(name)  # unknown names fail before any work
    if not Ts or min(Ts) < 1:
        raise InputError(f"T values must be positive integers, got {Ts}", field="--T")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"must be a positive integer, got {batch!r}", field="--batch")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"must be a positive integer, got {repeats!r}", field="--repeats")
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
                               progress=advance, batch=batch, repeats=repeats)
    return rows


def load_rows(paths) -> list[dict]:
    """The rows one or more `workbench bench lifelong --json` runs wrote, each labelled with its
    editor (and, from several files, the file it came from, so ablation runs of one editor stay
    apart); anything else is refused with the file, row and field named."""
    from pathlib import Path
    from workbench.bench.rows import read_rows
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    out = []
    for p in paths:
        for i, r in enumerate(read_rows(p, "lifelong", ("editor",))):
            if not isinstance(r.get("T"), int) or isinstance(r.get("T"), bool) or r["T"] < 1:
                raise InputError(f"row {i}: expected a positive integer", file=p, field="T")
            if "skipped" not in r:
                for m in METRICS:
                    if r.get(m) is not None and not isinstance(r.get(m), (int, float)):
                        raise InputError(f"row {i}: expected a number or null", file=p, field=m)
                for m in ("median_edit_s", "inference_overhead"):
                    if not isinstance(r.get(m), (int, float)):
                        raise InputError(f"row {i}: expected a number", file=p, field=m)
                _check_uncertainty(r, i, p)
            out.append({**r, "label": r["editor"] if len(paths) == 1 else f"{r['editor']} ({p.stem})"})
    return out


def _cell(r: dict, m: str) -> str:
    """A metric with its 95% interval when the row carries one (rows written before intervals
    were recorded show the value alone)."""
    from workbench.eval.stats import fmt
    return fmt(r.get(m), (r.get("intervals") or {}).get(m))


def _seconds(r: dict) -> str:
    s = r.get("edit_s")
    return f"{r['median_edit_s']:.3f}" + (f" [{s['q1']:.3f}, {s['q3']:.3f}]" if s else "")


def _overhead(r: dict) -> str:
    s = r.get("inference_overhead_spread")
    return f"{100 * r['inference_overhead']:+.1f}%" + (f" [{100 * s['q1']:+.1f}, {100 * s['q3']:+.1f}]" if s else "")


def _check_uncertainty(r: dict, i: int, path) -> None:
    """The optional interval and per-request fields of a row, each refused with its name when
    malformed (a hand-edited file must not draw wrong error bars or pair the wrong requests)."""
    for m, iv in (r.get("intervals") or {}).items():
        if m not in METRICS or not isinstance(iv, dict) or not all(
                isinstance(iv.get(k), (int, float)) for k in ("value", "lo", "hi", "n")):
            raise InputError(f"row {i}: expected one of {METRICS} -> {{value, lo, hi, method, n}}", file=path,
                             field=f"intervals.{m}")
    per = r.get("per_request")
    if per is None:
        return
    ids = per.get("id") if isinstance(per, dict) else None
    if not isinstance(ids, list) or len(ids) != r["T"]:
        raise InputError(f"row {i}: expected a list of the T={r['T']} request ids", file=path, field="per_request.id")
    for m in METRICS:
        vals = per.get(m)
        if not isinstance(vals, list) or len(vals) != len(ids) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in vals):
            raise InputError(f"row {i}: expected {len(ids)} numbers or nulls", file=path, field=f"per_request.{m}")


def table(rows: list[dict]) -> str:
    """A Markdown table of the results (the README's): each rate with its 95% interval over the
    requests (Wilson where every request scored 0 or 1, else a bootstrap over requests), seconds
    per edit as the median [quartiles] over the edits, the overhead as the median [quartiles]
    over the timed repeats."""
    head = ("| editor | T | rel. | rel. exact | gen. | gen. exact | loc. | loc. exact | median s/edit | "
            "inference overhead |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r.get('label', r['editor'])} | {r['T']} | {r['skipped']} |" + " |" * 8)
            continue
        vals = " | ".join(_cell(r, m) for m in METRICS)
        lines.append(f"| {r.get('label', r['editor'])} | {r['T']} | {vals} | {_seconds(r)} | {_overhead(r)} |")
    return "\n".join(lines)


def paired(row_a: dict, row_b: dict, *, alpha: float = 0.05) -> list[dict]:
    """Row B against row A (the baseline), both scored on the same requests at the same T: per
    metric the paired difference with its interval, McNemar or Wilcoxon, Holm-corrected across
    the six metrics (`workbench.eval.stats.compare_paired`). Rows without per-request scores
    (written before they were recorded) are refused."""
    from workbench.eval.stats import compare_paired
    for r in (row_a, row_b):
        if not isinstance(r.get("per_request"), dict):
            raise InputError(f"{r.get('label', r['editor'])} at T={r['T']} has no per-request scores; "
                             "re-run it with this version of `workbench bench lifelong`", field="per_request")
    if row_a["T"] != row_b["T"]:
        raise InputError(f"rows at different T ({row_a['T']} and {row_b['T']}) score different requests", field="T")

    def rows(r):
        per = r["per_request"]
        return [{"id": i, **{m: per[m][k] for m in METRICS}} for k, i in enumerate(per["id"])]

    try:
        return compare_paired(rows(row_a), rows(row_b), list(METRICS), alpha=alpha)
    except ValueError as e:
        raise InputError(str(e), field="per_request") from None


def paired_table(rows: list[dict], baseline: str, *, alpha: float = 0.05) -> str:
    """A Markdown table of every other editor's rows against `baseline`'s at the same T: each
    metric's difference (other − baseline) [95% interval] and Holm-adjusted p, * where < alpha."""
    from workbench.eval.stats import fmt_paired
    base = {r["T"]: r for r in rows if r.get("label", r["editor"]) == baseline and "skipped" not in r}
    if not base:
        raise InputError(f"no scored rows of {baseline!r} among {sorted({r.get('label', r['editor']) for r in rows})}",
                         field="--baseline")
    head = "| editor vs " + baseline + " | T | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + len(METRICS))]
    for r in rows:
        name = r.get("label", r["editor"])
        if name == baseline or "skipped" in r or r["T"] not in base:
            continue
        cells = [fmt_paired(c) for c in paired(base[r["T"]], r, alpha=alpha)]
        lines.append(f"| {name} | {r['T']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
