"""Scale check: a ~1B-parameter Llama-shaped model (random init, from a config) on this machine.

    python bench/scale_check.py [--layers 16] [--hidden 2048] [--ffn 8192] [--out DIR]

Builds the model with the shipped tokenizer, saves it as a Hugging Face folder, then through
the session API: opens a workspace on it (load + base hash), applies one WISE edit with its
defaults, evaluates the edit, rolls back to base (checked bit for bit by weights hash) and
evaluates again. Prints each step's seconds and the process's peak resident memory (issue 9:
within 24 GB of RAM).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--out", default=None, help="folder for the model and workspace (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.eval.evaluate import evaluate_edits, reference
    from workbench.core.model import DEFAULT_MODEL
    from workbench.eval.requests import load_requests
    from workbench.editing.session import Workbench
    torch.set_num_threads(args.threads)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="scale-check-"))
    steps: list[tuple[str, float]] = []

    def step(name, t0):
        steps.append((name, time.perf_counter() - t0))
        print(f"{name:<28} {steps[-1][1]:8.1f} s   peak RSS {peak_gib():5.1f} GiB", flush=True)

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                      num_key_value_heads=args.hidden // 128, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    del model
    step(f"build+save {n_params / 1e9:.2f}B params", t0)

    t0 = time.perf_counter()
    wb = Workbench(root / "model", root / "ws")
    step("open workspace (load+hash)", t0)
    reqs = load_requests(Path(DEFAULT_MODEL).parent.parent / "benchmarks" / "edits_counterfactual.jsonl")[:1]
    t0 = time.perf_counter()
    ref = reference(wb.model, wb.tok, reqs)
    before = evaluate_edits(wb.model, wb.tok, reqs, ref)["mean"]
    step("evaluate before", t0)
    t0 = time.perf_counter()
    event = wb.edit("wise", reqs)
    step(f"wise edit ({event.kind})", t0)
    after = event.metrics_after
    t0 = time.perf_counter()
    wb.rollback("base")
    assert wb.weights_hash() == wb.base_hash, "rollback did not restore the base weights"
    step("rollback to base (exact)", t0)
    t0 = time.perf_counter()
    again = evaluate_edits(wb.model, wb.tok, reqs, ref)["mean"]
    step("evaluate after rollback", t0)
    wb.close()
    print(f"reliability before {before['reliability']:.3f}, after edit {after['reliability']:.3f}, "
          f"after rollback {again['reliability']:.3f}; peak RSS {peak_gib():.1f} GiB")
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
