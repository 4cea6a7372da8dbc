"""`workbench eval`: score a model on a request file and print (and optionally save) the results."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from workbench.core.errors import InputError
from workbench.cli.args import int64, add_placement, load_cli_requests, placement, writable_output

# (key in the mean dict, label, key of its greedy exact-match variant or None)
EDIT_COLUMNS = [("reliability", "reliability", "reliability_exact"), ("generality", "generality", "generality_exact"),
                ("locality", "locality", "locality_exact"), ("portability", "portability", "portability_exact"),
                ("locality_answer_acc", "loc. answer acc", "locality_answer_exact")]
FORGET_COLUMNS = [("strict_recitation", "strict recit.", None), ("loose_recitation", "loose recit.", None),
                  ("extraction_strength", "extraction str.", None), ("exposure", "exposure", None),
                  ("retain_acc", "retain acc", None)]


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="score a model on edit/forget requests (reliability, generality, locality, "
                                    "recitation, extraction, exposure, perplexity)")
    e.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    add_placement(e)
    e.add_argument("--requests", type=Path, required=True, help="request file (native JSONL or a public format)")
    e.add_argument("--format", default=None, help="force the request format (default: detected)")
    e.add_argument("--base", type=Path, default=None,
                   help="the unedited model folder: enables locality and nDCG@10 against it")
    e.add_argument("--retain", type=Path, default=None, help="retain probes (native or TOFU) for forget requests")
    e.add_argument("--heldout-text", type=Path, default=None, help="JSONL of {text} for perplexity")
    e.add_argument("--exposure-samples", type=int64, default=200, help="alternatives per canary for exposure")
    e.add_argument("--batch-size", type=int64, default=64, help="sequences per forward pass")
    e.add_argument("--skip-invalid", action="store_true",
                   help="leave out invalid records (each said on stderr and listed in --json) instead of failing")
    e.add_argument("--json", type=Path, default=None, help="write per-request and aggregate scores here")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run)


def _load_inputs(args):
    from workbench.core.jsonio import read_jsonl
    from workbench.eval.requests import EditRequest, ForgetRequest, check_format_name, load_probes, with_retain
    writable_output(args.json, "--json")
    if args.batch_size <= 0:
        raise InputError(f"must be a positive integer, got {args.batch_size}", field="--batch-size")
    if args.exposure_samples < 0:
        raise InputError(f"must be non-negative, got {args.exposure_samples}", field="--exposure-samples")
    if args.format is not None:
        check_format_name(args.format)  # an unknown name is refused before any file is read
    reqs, args.skipped = load_cli_requests(args)
    if args.retain is not None:
        reqs = with_retain(reqs, load_probes(args.retain))
    texts = None
    if args.heldout_text is not None:
        texts = []
        for line, row in read_jsonl(args.heldout_text):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise InputError("expected a non-empty string", file=args.heldout_text, line=line, field="text")
            texts.append(row["text"])
    edits = [r for r in reqs if isinstance(r, EditRequest)]
    forgets = [r for r in reqs if isinstance(r, ForgetRequest)]
    return edits, forgets, texts


def evaluate_file(args) -> dict:
    """Everything `workbench eval` computes, as one JSON-ready dict."""
    from workbench.eval import evaluate as ev
    from workbench.core.model import load_model
    from workbench.core.progress import progress_bar
    edits, forgets, texts = _load_inputs(args)  # all input checks happen before any model loads
    base = load_model(args.base, **placement(args)) if args.base is not None else None
    model, tok = load_model(args.model, **placement(args))
    from workbench.editing.contract import context_length
    ev.check_context(tok, edits + forgets, context_length(model))  # before minutes of scoring
    result: dict = {"model": str(args.model or "shipped default"), "requests": str(args.requests),
                     **({"skipped": args.skipped} if getattr(args, "skipped", None) else {})}
    with progress_bar("evaluating", ev.n_scored(edits + forgets), enabled=not args.quiet) as advance:
        if edits:
            ref = ev.reference(base[0], tok, edits, batch_size=args.batch_size) if base else None
            result["edit"] = ev.evaluate_edits(model, tok, edits, ref, batch_size=args.batch_size, progress=advance)
        if forgets:
            result["forget"] = ev.evaluate_forgets(model, tok, forgets, exposure_samples=args.exposure_samples,
                                                   batch_size=args.batch_size, progress=advance)
    if texts:
        result["text"] = {"perplexity": ev.perplexity(model, tok, texts)}
        if base:
            result["text"]["ndcg@10"] = ev.next_token_ndcg(model, base[0], tok, texts)
    return result


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    for key, columns in (("edit", EDIT_COLUMNS), ("forget", FORGET_COLUMNS)):
        if key not in result:
            continue
        mean, ivs = result[key]["mean"], result[key].get("intervals", {})
        table = Table(title=f"{key} requests (n={result[key]['n']}); [95% interval over requests]")
        table.add_column("metric")
        table.add_column("token-level / rate")
        table.add_column("greedy exact")
        for name, label, exact in columns:
            table.add_row(label, _fmt(mean.get(name), ivs.get(name)),
                          _fmt(mean.get(exact), ivs.get(exact)) if exact else "—")
        console.print(table)
        methods = sorted({iv["method"] for iv in ivs.values()})
        if methods:
            from workbench.eval.stats import METHODS
            console.print("intervals: " + ", ".join(METHODS[m] for m in methods))
    if "text" in result:
        console.print(", ".join(f"{k}: {v:.4f}" for k, v in result["text"].items()))


def _fmt(v, iv: dict | None = None) -> str:
    from workbench.eval.stats import fmt
    return fmt(v, iv, digits=4, bound_digits=3)


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def run(args) -> int:
    result = evaluate_file(args)
    _print(result)
    if args.json is not None:
        _write_json_atomic(args.json, result)
    return 0
