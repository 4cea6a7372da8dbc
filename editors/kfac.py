"""`kfac`: memorization removal in the spectrum of loss curvature (Merullo et al., 2025).

"From Memorization to Reasoning in the Spectrum of Loss Curvature": for a linear layer W
(out × in), K-FAC approximates the loss curvature with two factors, A = E[a aᵀ] over the
layer's inputs and G = E[g gᵀ] over the gradients at its outputs. In the eigenbases of A
and G the weight becomes C = U_Gᵀ W U_A, and component (i, j) carries curvature mass
λ_G[i]·λ_A[j]. Directions the whole corpus relies on have high curvature; a string that was
memorized verbatim lives in directions almost nothing else uses — low curvature. So the
method *keeps* the components making up the top ρ of the total mass and zeroes the rest,
then rotates back: W' = U_G (C ⊙ M) U_Aᵀ.

Faithful to the paper: factors from a clean corpus (by default the world's training text
without its canaries), gradients from labels sampled from the model's own distribution
(true Fisher; `fisher="empirical"` uses the real next tokens), the MLP input projections
(gate and up, or GPT-2's c_fc) of late-middle layers, ρ = 0.6. The forget set itself is not
used to choose what to remove — only to check first that the model reproduces it at all.

Example:
    >>> wb.edit("kfac", load_requests("data/benchmarks/forget_canaries.jsonl"), {"rho": "0.6"})  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from editors.common.cache import cache_key, cached_tensors, texts_hash
from editors.common.corpus import default_corpus, read_corpus  # noqa: F401 (default_corpus: tests patch it here)
from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, Chart, EditContext, Editor, HParams, check_choice, check_number,
                                        resolve_layers)
from workbench.editing.registry import register_editor

FISHERS = ("sampled", "empirical")
MIN_TOKENS = 20_000  # below this, factors of a 256-wide layer are poorly conditioned: warn


@dataclass
class KFACHParams(HParams):
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "MLP layers whose input projections are edited (default: late-middle, ~55-80% depth)"})
    rho: float = field(default=0.6, metadata={"help": "share of curvature mass kept, in (0, 1]"})
    fisher: str = field(default="sampled", metadata={
        "help": "gradient labels: 'sampled' from the model (true Fisher) or 'empirical' (real next tokens)",
        "choices": FISHERS})
    corpus: str | None = field(default=None, metadata={
        "help": "JSONL of {text} or a .txt file to collect factors on (default: the world's clean text)"})
    max_tokens: int = field(default=120_000, metadata={"help": "corpus tokens to collect factors on (>= 1000)"})
    block_size: int = field(default=128, metadata={"help": "tokens per sequence during collection"})
    batch_size: int = field(default=16, metadata={"help": "sequences per collection step"})

    def __post_init__(self):
        check_number(self.rho, "rho", "in (0, 1]", lambda v: 0 < v <= 1)
        check_choice(self.fisher, "fisher", FISHERS)
        for name in ("block_size", "batch_size"):
            check_number(getattr(self, name), name, "a positive integer", lambda v: v > 0, integer=True)
        check_number(self.max_tokens, "max_tokens", "an integer >= 1000", lambda v: v >= 1000, integer=True)

    def derive(self, adapter) -> "KFACHParams":
        n = adapter.num_layers
        default = range(round(0.55 * (n - 1)), round(0.8 * (n - 1)) + 1)
        return dataclasses.replace(self, layers=resolve_layers(adapter, self.layers, default=default))


def corpus_blocks(tok, texts: list[str], block_size: int, max_tokens: int) -> torch.Tensor:
    """Pack `<s> text </s>` streams into (n_blocks, block_size) rows: no padding to mask."""
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    eos = tok.eos_token_id if tok.eos_token_id is not None else ids[0][0]
    stream = [t for d in ids for t in d + [eos]][:max_tokens]
    n = len(stream) // block_size
    if n == 0:
        raise InputError(f"the corpus has only {len(stream)} tokens, fewer than one block of {block_size}",
                         field="corpus")
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


def collect_factors(model, adapter, blocks: torch.Tensor, layers: tuple[int, ...], *, fisher: str,
                    batch_size: int, seed: int, progress=None) -> dict[str, torch.Tensor]:
    """K-FAC factors, fp32, streaming: A per layer (shared by its input projections, which
    read the same input) and G per input projection. Keys: "A.{layer}", "G.{layer}.{k}"."""
    factors: dict[str, torch.Tensor] = {}
    hooks = []

    def fwd(layer: int, k: int):
        def hook(_mod, args, out):
            a = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, d_in)
            if k == 0:
                factors[f"A.{layer}"] = factors.get(f"A.{layer}", 0) + a.T @ a  # (d_in, d_in)

            def grad_hook(g):
                g = g.detach().float().reshape(-1, g.shape[-1])  # (tokens, d_out)
                factors[f"G.{layer}.{k}"] = factors.get(f"G.{layer}.{k}", 0) + g.T @ g  # (d_out, d_out)
            out.register_hook(grad_hook)
        return hook

    for layer in layers:
        for k, mod in enumerate(adapter.mlp_in(layer)):
            hooks.append(mod.register_forward_hook(fwd(layer, k)))
    # Gradients are needed at the hooked outputs only, not for any parameter: make the
    # embedding output a leaf that requires grad, so the graph above it is built, nothing else.
    emb = adapter.embeddings()
    hooks.append(emb.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True)))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    n_tokens = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for s in range(0, len(blocks), batch_size):
            x = blocks[s:s + batch_size]  # (batch, block)
            logits = model(input_ids=x).logits[:, :-1].float()  # (batch, block-1, vocab)
            flat = logits.reshape(-1, logits.shape[-1])
            if fisher == "sampled":
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(flat, -1), 1, generator=gen)[:, 0]
            else:
                labels = x[:, 1:].reshape(-1)
            # Summed per-token losses: each position's gradient is that token's own loss gradient.
            torch.nn.functional.cross_entropy(flat, labels, reduction="sum").backward()
            n_tokens += x.numel()
            if progress is not None:
                progress(len(x))
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    return {k: v / n_tokens for k, v in factors.items()}


def keep_top_curvature(W: torch.Tensor, A: torch.Tensor, G: torch.Tensor, rho: float) -> tuple[torch.Tensor, dict]:
    """W (out, in) with only the components carrying the top `rho` of curvature mass.

    Returns the new weight and a summary of the spectrum (for the UI's cut plot)."""
    lam_a, U_a = torch.linalg.eigh(A.double())  # (in,), (in, in)
    lam_g, U_g = torch.linalg.eigh(G.double())  # (out,), (out, out)
    C = U_g.T @ W.double() @ U_a  # (out, in): W in the eigenbasis
    mass = lam_g.clamp_min(0)[:, None] * lam_a.clamp_min(0)[None, :]  # (out, in)
    order = mass.flatten().argsort(descending=True)
    cum = mass.flatten()[order].cumsum(0) / mass.sum()
    n_keep = int(torch.searchsorted(cum, torch.tensor(rho, dtype=cum.dtype)).item()) + 1
    mask = torch.zeros(mass.numel(), dtype=torch.bool)
    mask[order[:n_keep]] = True
    W_new = U_g @ (C * mask.view_as(C)) @ U_a.T  # (out, in)
    sorted_mass = mass.flatten()[order]
    step = max(1, len(sorted_mass) // 512)
    info = {"components": mass.numel(), "kept": n_keep, "kept_fraction": n_keep / mass.numel(),
            "mass_sorted": sorted_mass[::step].tolist(), "mass_sorted_stride": step,
            "cut_mass": sorted_mass[n_keep - 1].item()}
    return W_new.to(W.dtype), info


@register_editor
class KFACEditor(Editor):
    """Remove memorized strings by keeping only high-curvature weight components (K-FAC, Merullo et al. 2025)."""
    name = "kfac"
    capabilities = Capabilities(batch=True, sequential=True, forget=True, single_revert=False)
    hparams_class = KFACHParams

    def factors(self, ctx, progress=None) -> tuple[dict[str, torch.Tensor], bool]:
        """K-FAC factors for this model, corpus and layers (from the cache when present)."""
        from workbench.core.patch import weights_hash
        hp = self.hparams
        texts = read_corpus(hp.corpus) if hp.corpus else default_corpus()
        blocks = corpus_blocks(ctx.tokenizer, texts, hp.block_size, hp.max_tokens)
        if blocks.numel() < MIN_TOKENS:
            import warnings
            warnings.warn(f"K-FAC factors from only {blocks.numel()} tokens (< {MIN_TOKENS}) may be unstable")
        # Factors of every layer come from one pass and are cached together, so trying other
        # layers or another rho costs no second collection.
        all_layers = tuple(range(ctx.adapter.num_layers))
        key = cache_key(model=weights_hash(ctx.model), corpus=texts_hash(texts), fisher=hp.fisher,
                        max_tokens=hp.max_tokens, block=hp.block_size, batch=hp.batch_size, seed=ctx.seed)
        return cached_tensors("kfac", key, lambda: collect_factors(
            ctx.model, ctx.adapter, blocks, all_layers, fisher=hp.fisher, batch_size=hp.batch_size,
            seed=ctx.seed, progress=progress))

    @classmethod
    def charts(cls, patch) -> list[Chart]:
        """The sorted curvature mass λ_G·λ_A of each edited weight, with the ρ cut: everything
        right of the line (low curvature, where memorized strings live) was removed."""
        return [Chart(title=name, kind="line", series={"mass": s["mass_sorted"]}, x_stride=s.get("mass_sorted_stride", 1),
                      x_label="component (by curvature mass)", y_label="λ_G·λ_A", log_y=True,
                      marker=(s["kept"], f"ρ cut: {s['kept']:,} of {s['components']:,} kept"))
                for name, s in patch.meta.get("spectra", {}).items()]

    def run(self, ctx: EditContext, batch: Batch, hp: KFACHParams) -> Patch:
        from workbench.eval.evaluate import evaluate_forgets
        before = evaluate_forgets(ctx.model, ctx.tokenizer, list(batch), exposure_samples=0)["mean"]
        if before["loose_recitation"] == 0 and before["extraction_strength"] == 0:
            raise InputError(f"the model does not reproduce this forget set (strict recitation "
                             f"{before['strict_recitation']:.2f}, loose {before['loose_recitation']:.2f}); "
                             f"nothing to remove", field="requests")
        factors, _ = self.factors(ctx)
        names = [ctx.adapter.param_name(m) for layer in hp.layers for m in ctx.adapter.mlp_in(layer)]
        rec = ctx.recorder(names)
        spectra = {}
        with torch.no_grad():
            for layer in hp.layers:
                for k, mod in enumerate(ctx.adapter.mlp_in(layer)):
                    W = ctx.adapter.weight(mod)  # (out, in) view
                    W_new, info = keep_top_curvature(W, factors[f"A.{layer}"], factors[f"G.{layer}.{k}"], hp.rho)
                    W.copy_(W_new)
                    spectra[ctx.adapter.param_name(mod)] = info
        return rec.patch(meta={"spectra": spectra, "recitation_before": before})
