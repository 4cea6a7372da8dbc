"""Ledger costs: rollback time of a one-layer edit as the model gets 8x deeper, and the
storage one FT edit takes in the workspace.

    python bench/ledger_bench.py [--layers 4] [--repeats 5]

Rollback should follow the edit, not the model: reverting a one-layer patch copies that
layer's tensor back and re-hashes only what changed (per-tensor hash cache), so the time
stays nearly flat when the model has 8x more layers.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from workbench.core.model import DEFAULT_MODEL, load_model
from workbench.eval.requests import load_requests
from workbench.editing.session import Workbench

REPO = Path(__file__).resolve().parent.parent


def make_model(n_layers: int, out: Path) -> Path:
    """A randomly initialised copy of the shipped model's architecture with `n_layers` blocks."""
    from transformers import LlamaForCausalLM
    base, tok = load_model(DEFAULT_MODEL)
    cfg = base.config
    cfg.num_hidden_layers = n_layers
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def measure(n_layers: int, repeats: int, tmp: Path) -> dict:
    model_dir = make_model(n_layers, tmp / f"model-{n_layers}")
    wb = Workbench(model_dir, tmp / f"ws-{n_layers}", author="bench")
    req = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:1]
    times, event = [], None
    for _ in range(repeats):
        event = wb.edit("ft", req, {"layer": "1", "steps": "5"})
        t0 = time.perf_counter()
        wb.rollback("base")
        times.append(time.perf_counter() - t0)
    patch_file = wb.workspace / event.patch_file
    n_params = sum(p.numel() for p in wb.model.parameters())
    touched = event.patch_bytes // 2  # the patch holds before and after of the touched tensor
    return {"layers": n_layers, "params": n_params, "rollback_s": statistics.median(times),
            "patch_file_bytes": patch_file.stat().st_size, "touched_bytes": touched,
            "db_bytes": (wb.workspace / "ledger.sqlite").stat().st_size, "edits": 2 * repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = [measure(n, args.repeats, Path(d)) for n in (args.layers, 8 * args.layers)]
    print("| layers | parameters | rollback, median (ms) | patch file (KB) | touched tensor (KB) | patch / touched | ledger db (KB) for events |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['params']:,} | {1000 * r['rollback_s']:.1f} | {r['patch_file_bytes'] / 1024:.0f} | "
              f"{r['touched_bytes'] / 1024:.0f} | {r['patch_file_bytes'] / r['touched_bytes']:.2f} | "
              f"{r['db_bytes'] / 1024:.0f} for {r['edits']} |")
    print(f"rollback time ratio ({8 * args.layers} vs {args.layers} layers): "
          f"{rows[1]['rollback_s'] / rows[0]['rollback_s']:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
