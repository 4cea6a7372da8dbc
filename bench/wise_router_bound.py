"""How well could a WISE router separate edits from other people's facts on the shipped model?

    python bench/wise_router_bound.py [--T 1000] [--layer 2] [--route mean|max] [--steps 800]

WISE routes a query to its side memory when the activation score ||Δ a|| (Δ: the side
memory minus the MLP output projection, (out, in); a: that projection's input, per token;
mean or max over the row's tokens) clears a threshold. This script asks what the *best*
such Δ could do, ignoring what it must also store: Δ is fitted directly on the routing
hinge (edit rows above β = 2, irrelevant rows below α = 0.5) jointly over the first T edits
of the world's counterfactual set and ~3,500 sentences of the world corpus that name no
edited person (an oracle: a real editor sees one edit at a time and cannot know later
subjects), with Adam. It then reports the share of edit prompts, rephrasings (generality)
and locality probes (each with its answer, as the evaluator scores them) that would be
routed, at WISE's threshold rule (act_ratio 0.88 × a low edit score: the 5th percentile)
and at the threshold that routes 95% of the rephrasings. A trained WISE memory has to do
this *and* carry the edits; its measured routing is in `editors/wise/measure.py`.
"""
from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def packed_acts(model, tok, adapter, layer: int, rows: list[list[int]], chunk: int = 256):
    """`Packed` MLP-out inputs at `layer` of token-id rows, computed in chunks."""
    from editors.wise.train import Packed, _activations
    from workbench.eval.scoring import right_pad
    proj = adapter.mlp_out(layer)
    weight, bias = adapter.weight(proj).detach(), getattr(proj, "bias", None)
    out = None
    for i in range(0, len(rows), chunk):
        ids, mask = right_pad(rows[i:i + chunk], tok.pad_token_id)  # (rows, seq)
        p = Packed(_activations(model, adapter, layer, ids, mask), mask, weight, bias)
        out = p if out is None else out.cat(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--layer", type=int, default=None, help="default: WISE's (~80%% depth)")
    ap.add_argument("--route", choices=("mean", "max"), default="mean")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--negatives", type=int, default=6000, help="corpus sentences drawn before filtering")
    args = ap.parse_args()

    from workbench.core.arch import get_adapter
    from editors.common.corpus import default_corpus
    from workbench.core.model import load_model
    from workbench.eval.requests import load_requests
    from workbench.eval.scoring import encode_pairs

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok = load_model()
    adapter = get_adapter(model)
    layer = adapter.default_layer(0.8) if args.layer is None else args.layer
    reqs = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:args.T]
    edited = {r.subject for r in reqs}

    def pairs(items):
        return [p + a for p, a in encode_pairs(tok, [p for p, _ in items], [a for _, a in items])]

    sets = {
        "edit": pairs([(r.prompt, r.target_new) for r in reqs]),
        "generality": pairs([(q, r.target_new) for r in reqs for q in r.rephrase_prompts]),
        "locality": pairs([(x.prompt, x.answer) for r in reqs for x in r.locality]),
    }
    sentences = [s.strip() for doc in default_corpus() for s in re.split(r"(?<=\.)\s", doc) if s.strip()]
    random.Random(0).shuffle(sentences)
    negatives = [s for s in sentences[:args.negatives] if not any(e in s for e in edited)]
    sets["negatives"] = [ids[:32] for ids in tok(negatives, add_special_tokens=True)["input_ids"]]
    acts = {k: packed_acts(model, tok, adapter, layer, v) for k, v in sets.items()}

    d_out, d_in = adapter.weight(adapter.mlp_out(layer)).shape
    from editors.wise.memory import WISEMemory
    mem = WISEMemory(layer, d_out, d_in, score="linear")  # the paper's ||Δ a||, as measured in the README
    delta = (0.01 * torch.randn(d_out, d_in)).requires_grad_(True)  # (out, in)
    opt = torch.optim.Adam([delta], lr=1e-3)
    for _ in range(args.steps):
        loss = (torch.relu(2.0 - acts["edit"].scores(mem, delta, args.route)).mean()
                + torch.relu(acts["negatives"].scores(mem, delta, args.route) - 0.5).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        s = {k: a.scores(mem, delta, args.route) for k, a in acts.items()}  # (rows,) each
        wise_thr = 0.88 * torch.quantile(s["edit"], 0.05)
        gen_thr = torch.quantile(s["generality"], 0.05)
    print(f"layer {layer}, route {args.route}, T={args.T}, {len(negatives)} negative sentences, "
          f"{args.steps} Adam steps, final hinge loss {loss.item():.3f}, {time.perf_counter() - t0:.0f} s")
    print("| threshold | edit routed | generality routed | locality routed | negatives routed |")
    print("|---|---|---|---|---|")
    for name, thr in (("0.88 x 5th pct. of edit scores", wise_thr), ("95% of rephrasings routed", gen_thr)):
        cells = " | ".join(f"{float((s[k] > thr).float().mean()):.3f}"
                           for k in ("edit", "generality", "locality", "negatives"))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
