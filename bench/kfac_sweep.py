"""K-FAC memorization removal on the shipped model's canaries, over layers and rho.

    python bench/kfac_sweep.py [--configs "1,2:0.6 1,2,3:0.6 2,3:0.6"] [--cache DIR]

For each configuration: a fresh copy of the model, the `kfac` editor on the 120 canaries
(factors collected once for all layers and cached), then strict/loose recitation, held-out
perplexity and retain-set fact recall (greedy exact). Targets (issue 6): strict <= 3%,
perplexity up <= 10%, retain >= 90% of before.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="1,2:0.6 1,2,3:0.6 0,1,2,3:0.6 2,3:0.6 1,2:0.4 1,2,3:0.8")
    ap.add_argument("--cache", default=None, help="factor cache folder (default: $WORKBENCH_CACHE or ~/.cache)")
    args = ap.parse_args()
    if args.cache:
        os.environ["WORKBENCH_CACHE"] = args.cache
    import editors.kfac as K
    from workbench.core.arch import get_adapter
    from workbench.editing.contract import EditContext
    from workbench.eval.evaluate import evaluate_forgets, perplexity
    from workbench.core.model import load_model
    from workbench.eval.requests import load_probes, load_requests
    from workbench.world import World
    from workbench.world.measure import fact_accuracy

    model, tok = load_model()
    canaries = load_requests(REPO / "data" / "benchmarks" / "forget_canaries.jsonl")
    heldout = [t["text"] for t in World.load(REPO / "data" / "world").heldout_text]
    retain = load_probes(REPO / "data" / "benchmarks" / "retain.jsonl")  # (prompt, answer) probes

    def row(m) -> dict:
        f = evaluate_forgets(m, tok, canaries, exposure_samples=0)["mean"]
        return {"strict": f["strict_recitation"], "loose": f["loose_recitation"],
                "ppl": perplexity(m, tok, heldout), "retain": fact_accuracy(m, tok, retain)["exact"]}

    base = row(model)
    print("| layers | rho | strict | loose | perplexity | retain recall | kept components |")
    print("|---|---|---|---|---|---|---|")
    print(f"| (before) | | {base['strict']:.3f} | {base['loose']:.3f} | {base['ppl']:.3f} | {base['retain']:.3f} | |")
    t0 = time.perf_counter()
    K.KFACEditor(K.KFACHParams().derive(get_adapter(model))).factors(EditContext(model, tok, get_adapter(model)))
    collect = time.perf_counter() - t0
    for cfg in args.configs.split():
        layers, rho = cfg.split(":")
        m = copy.deepcopy(model)
        ad = get_adapter(m)
        hp = K.KFACHParams(layers=tuple(int(x) for x in layers.split(",")), rho=float(rho)).derive(ad)
        patch = K.KFACEditor(hp).edit(EditContext(m, tok, ad), canaries)
        r = row(m)
        kept = sum(v["kept"] for v in patch.meta["spectra"].values()) / sum(
            v["components"] for v in patch.meta["spectra"].values())
        print(f"| {layers} | {rho} | {r['strict']:.3f} | {r['loose']:.3f} | {r['ppl']:.3f} | {r['retain']:.3f} | "
              f"{kept:.3f} |", flush=True)
    print(f"factor collection (or cache read): {collect:.1f} s")


if __name__ == "__main__":
    main()
