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
(gate and up, or GPT-2's c_fc) of late-middle layers, ρ = 0.6; `projections="in+out"` edits
the MLP output projection too, as the reference code can. The forget set itself is not used
to choose what to remove — only to check first that the model reproduces it at all.

`auto=true` does what the paper's appendix did by hand: it tries every run of 1..`auto_span`
adjacent layers with every ρ in `auto_rhos`, scores each on a dev split (every other forget
request; the world's dev reading and rules items, never trained on nor reported; for
perplexity, fresh prose of the held-out text's kind, none of it held out — or, with a
`corpus`, its text past the factor tokens), picks by `AUTO_RULE`, and records the whole sweep in
the patch and the chosen layers and ρ in the ledger.

Example:
    >>> wb.edit("kfac", load_requests("data/benchmarks/forget_canaries.jsonl"), {"rho": "0.6"})  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from workbench.core.cache import cache_key, cached_tensors, texts_hash
from editors.common.corpus import default_corpus, read_corpus  # noqa: F401 (default_corpus: tests patch it here)
from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, Chart, EditContext, Editor, HParams, check_bool, check_choice,
                                        check_number, resolve_layers)
from workbench.editing.registry import register_editor

FISHERS = ("sampled", "empirical")
PROJECTIONS = ("in", "in+out")
MIN_TOKENS = 20_000  # below this, factors of a 256-wide layer are poorly conditioned: warn
DEV_TOKENS = 8192  # corpus tokens past the factor corpus on which `auto` measures perplexity
AUTO_RULE = ("eligible: every guard suite's dev accuracy >= auto_guard x before and dev-text perplexity "
             "<= auto_ppl x before; chosen: the eligible candidate with the lowest dev-forget loose "
             "recitation, then extraction strength, then fewest layers, then highest rho; when none is "
             "eligible, the candidate whose worst guard share (suites, and before/after perplexity) is highest")


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
    projections: str = field(default="in", metadata={
        "help": "weights edited per layer: 'in' (MLP input projections) or 'in+out' (and the output projection)",
        "choices": PROJECTIONS})
    auto: bool = field(default=False, metadata={
        "help": "sweep layers and rho on a dev split and pick by a stated rule (layers, rho are then chosen)"})
    auto_rhos: tuple[float, ...] = field(default=(0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9), metadata={
        "help": "rho values the auto sweep tries", "applies_when": {"auto": [True]}})
    auto_span: int = field(default=2, metadata={
        "help": "the auto sweep tries every run of 1..auto_span adjacent layers", "applies_when": {"auto": [True]}})
    auto_guard: float = field(default=0.95, metadata={
        "help": "share of each dev general suite's accuracy a candidate must keep", "applies_when": {"auto": [True]}})
    auto_ppl: float = field(default=1.15, metadata={
        "help": "largest dev perplexity ratio (after / before) a candidate may cause", "applies_when": {"auto": [True]}})

    def __post_init__(self):
        check_number(self.rho, "rho", "in (0, 1]", lambda v: 0 < v <= 1)
        check_choice(self.fisher, "fisher", FISHERS)
        check_choice(self.projections, "projections", PROJECTIONS)
        check_bool(self.auto, "auto")
        for name in ("block_size", "batch_size", "auto_span"):
            check_number(getattr(self, name), name, "a positive integer", lambda v: v > 0, integer=True)
        check_number(self.max_tokens, "max_tokens", "an integer >= 1000", lambda v: v >= 1000, integer=True)
        if not self.auto_rhos:
            raise InputError("needs at least one value", field="auto_rhos")
        for v in self.auto_rhos:
            check_number(v, "auto_rhos", "values in (0, 1]", lambda x: 0 < x <= 1)
        check_number(self.auto_guard, "auto_guard", "in [0, 1]", lambda v: 0 <= v <= 1)
        check_number(self.auto_ppl, "auto_ppl", ">= 1", lambda v: v >= 1)

    def derive(self, adapter) -> "KFACHParams":
        n = adapter.num_layers
        default = range(round(0.55 * (n - 1)), round(0.8 * (n - 1)) + 1)
        return dataclasses.replace(self, layers=resolve_layers(adapter, self.layers, default=default))


def corpus_stream(tok, texts: list[str]) -> list[int]:
    """`<s> text </s>` of every text, concatenated: the token stream blocks are cut from."""
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    eos = tok.eos_token_id if tok.eos_token_id is not None else ids[0][0]
    return [t for d in ids for t in d + [eos]]


def corpus_blocks(tok, texts: list[str], block_size: int, max_tokens: int, *, skip: int = 0,
                  stream: list[int] | None = None) -> torch.Tensor:
    """Pack the corpus stream, from token `skip` on, into (n_blocks, block_size) rows: no padding to mask."""
    stream = (corpus_stream(tok, texts) if stream is None else stream)[skip: skip + max_tokens]
    n = len(stream) // block_size
    if n == 0:
        raise InputError(f"the corpus has only {len(stream)} tokens, fewer than one block of {block_size}",
                         field="corpus")
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


def targets(adapter, layer: int, projections: str = "in") -> list[tuple]:
    """(module, A key, G key) of each weight K-FAC edits in `layer`."""
    out = [(m, f"A.{layer}", f"G.{layer}.{k}") for k, m in enumerate(adapter.mlp_in(layer))]
    if projections == "in+out":
        out.append((adapter.mlp_out(layer), f"A.{layer}.out", f"G.{layer}.out"))
    return out


def collect_factors(model, adapter, blocks: torch.Tensor, layers: tuple[int, ...], *, fisher: str,
                    batch_size: int, seed: int, projections: str = "in", bos_id: int | None = None,
                    progress=None) -> dict[str, torch.Tensor]:
    """K-FAC factors, fp32, streaming: A per layer (shared by its input projections, which
    read the same input) and G per input projection, keyed as `targets` names them; with
    `projections="in+out"` also the output projection's. With `bos_id`, "Abos.{layer}" holds
    the share of A that BOS positions contribute (the same normalisation, BOS rows only)."""
    factors: dict[str, torch.Tensor] = {}
    hooks = []
    is_bos: list[torch.Tensor] = []  # the current batch's (tokens,) BOS mask

    def add(key: str, x: torch.Tensor) -> None:
        factors[key] = factors.get(key, 0) + x.T @ x  # (d, d)

    def fwd(a_key: str | None, g_key: str, bos_key: str | None):
        def hook(_mod, args, out):
            a = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, d_in)
            if a_key is not None:
                add(a_key, a)
                if bos_key is not None:
                    add(bos_key, a[is_bos[0]])
            out.register_hook(lambda g: add(g_key, g.detach().float().reshape(-1, g.shape[-1])))  # (tokens, d_out)
        return hook

    for layer in layers:
        for k, (mod, a_key, g_key) in enumerate(targets(adapter, layer, projections)):
            first_in = k == 0
            shared = a_key == f"A.{layer}" and not first_in  # gate and up read one input: A once
            bos_key = f"Abos.{layer}" if first_in and bos_id is not None else None
            hooks.append(mod.register_forward_hook(fwd(None if shared else a_key, g_key, bos_key)))
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
            is_bos[:] = [(x == bos_id).reshape(-1) if bos_id is not None else None]
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


@dataclass
class Spectrum:
    """A weight in the eigenbases of its K-FAC factors, with its components ordered by mass."""
    U_g: torch.Tensor  # (out, out)
    U_a: torch.Tensor  # (in, in)
    C: torch.Tensor  # (out, in): U_gᵀ W U_a
    order: torch.Tensor  # (out*in,) component indices, highest curvature mass first
    cum: torch.Tensor  # (out*in,) cumulative share of the mass in that order
    mass_sorted: torch.Tensor  # (out*in,)


def spectrum(W: torch.Tensor, A: torch.Tensor, G: torch.Tensor) -> Spectrum:
    lam_a, U_a = torch.linalg.eigh(A.double())  # (in,), (in, in)
    lam_g, U_g = torch.linalg.eigh(G.double())  # (out,), (out, out)
    mass = (lam_g.clamp_min(0)[:, None] * lam_a.clamp_min(0)[None, :]).flatten()  # (out*in,)
    order = mass.argsort(descending=True)
    return Spectrum(U_g, U_a, U_g.T @ W.double() @ U_a, order, mass[order].cumsum(0) / mass.sum(), mass[order])


def truncate(spec: Spectrum, rho: float, dtype=torch.float32) -> tuple[torch.Tensor, dict]:
    """The weight with only its top-`rho`-mass components, and a summary for the cut plot."""
    n_keep = int(torch.searchsorted(spec.cum, torch.tensor(rho, dtype=spec.cum.dtype)).item()) + 1
    n_keep = min(n_keep, spec.order.numel())
    mask = torch.zeros(spec.order.numel(), dtype=torch.bool)
    mask[spec.order[:n_keep]] = True
    W_new = spec.U_g @ (spec.C * mask.view_as(spec.C)) @ spec.U_a.T  # (out, in)
    step = max(1, len(spec.mass_sorted) // 512)
    info = {"components": spec.order.numel(), "kept": n_keep, "kept_fraction": n_keep / spec.order.numel(),
            "mass_sorted": spec.mass_sorted[::step].tolist(), "mass_sorted_stride": step,
            "cut_mass": spec.mass_sorted[n_keep - 1].item()}
    return W_new.to(dtype), info


def keep_top_curvature(W: torch.Tensor, A: torch.Tensor, G: torch.Tensor, rho: float) -> tuple[torch.Tensor, dict]:
    """W (out, in) with only the components carrying the top `rho` of curvature mass.

    Returns the new weight and a summary of the spectrum (for the UI's cut plot)."""
    return truncate(spectrum(W, A, G), rho, W.dtype)


def bos_share(A: torch.Tensor, A_bos: torch.Tensor, top: int = 8) -> float:
    """Share of A's top-`top` eigen-directions' mass that BOS positions contribute: near 1
    would mean the factor's leading directions describe BOS, not text."""
    lam, U = torch.linalg.eigh(A.double())  # ascending
    U_top = U[:, -top:]  # (d, top)
    return float(torch.trace(U_top.T @ A_bos.double() @ U_top) / lam[-top:].sum())


def choose_candidate(before: dict, candidates: list[dict], guard: float, ppl_ratio: float) -> tuple[int, bool]:
    """Index of the candidate `AUTO_RULE` picks, and whether it was eligible. Each score dict
    has "loose_recitation", "extraction_strength", "suites" ({name: accuracy}) and "perplexity";
    each candidate also "layers" and "rho"."""
    def shares(c: dict) -> list[float]:
        out = [c["suites"][n] / before["suites"][n] for n in before["suites"] if before["suites"][n] > 0]
        return out + [before["perplexity"] / c["perplexity"]]

    def eligible(c: dict) -> bool:
        ok_suites = all(c["suites"][n] >= guard * before["suites"][n] for n in before["suites"])
        return ok_suites and c["perplexity"] <= ppl_ratio * before["perplexity"]

    ok = [i for i, c in enumerate(candidates) if eligible(c)]
    if ok:
        best = min(ok, key=lambda i: (candidates[i]["loose_recitation"], candidates[i]["extraction_strength"],
                                      len(candidates[i]["layers"]), -candidates[i]["rho"]))
        return best, True
    return max(range(len(candidates)), key=lambda i: min(shares(candidates[i]))), False


def dev_scores(model, tok, forgets: list, suites: dict[str, list], ppl_on: torch.Tensor | list[str]) -> dict:
    """What the auto sweep compares: dev-forget recitation, dev-suite exact accuracy, perplexity
    (of texts one by one, or of packed (n, block) token rows)."""
    from workbench.eval.evaluate import evaluate_forgets, perplexity
    from workbench.eval.scoring import encode_pairs, pad_id, score_answers
    f = evaluate_forgets(model, tok, forgets, exposure_samples=0)["mean"]
    acc = {}
    for name, probes in suites.items():
        scores = score_answers(model, encode_pairs(tok, [p.prompt for p in probes], [p.answer for p in probes]),
                               pad_id=pad_id(tok))
        acc[name] = sum(s.exact for s in scores) / len(scores)
    if isinstance(ppl_on, list):
        ppl = perplexity(model, tok, ppl_on)
    else:
        with torch.no_grad():
            nll = sum(model(input_ids=ppl_on[i:i + 16], labels=ppl_on[i:i + 16]).loss.item()
                      * len(ppl_on[i:i + 16]) for i in range(0, len(ppl_on), 16)) / len(ppl_on)
        ppl = math.exp(nll)
    return {"strict_recitation": f["strict_recitation"], "loose_recitation": f["loose_recitation"],
            "extraction_strength": f["extraction_strength"], "suites": acc, "perplexity": ppl}


def candidate_layers(n_layers: int, span: int) -> list[tuple[int, ...]]:
    """Every run of 1..`span` adjacent layers of an `n_layers` model, shortest first."""
    return [tuple(range(s, s + w)) for w in range(1, min(span, n_layers) + 1) for s in range(n_layers - w + 1)]


@register_editor
class KFACEditor(Editor):
    """Remove memorized strings by keeping only high-curvature weight components (K-FAC, Merullo et al. 2025)."""
    name = "kfac"
    capabilities = Capabilities(batch=True, sequential=True, forget=True, single_revert=False)
    hparams_class = KFACHParams

    def _texts(self) -> list[str]:
        return read_corpus(self.hparams.corpus) if self.hparams.corpus else default_corpus()

    def factors(self, ctx, progress=None) -> tuple[dict[str, torch.Tensor], bool]:
        """K-FAC factors for this model, corpus and layers (from the cache when present)."""
        from workbench.core.patch import weights_hash
        hp = self.hparams
        texts = self._texts()
        blocks = corpus_blocks(ctx.tokenizer, texts, hp.block_size, hp.max_tokens)
        if blocks.numel() < MIN_TOKENS:
            import warnings
            warnings.warn(f"K-FAC factors from only {blocks.numel()} tokens (< {MIN_TOKENS}) may be unstable")
        # Factors of every layer come from one pass and are cached together, so trying other
        # layers or another rho costs no second collection.
        all_layers = tuple(range(ctx.adapter.num_layers))
        bos = ctx.tokenizer.bos_token_id
        key = cache_key(model=weights_hash(ctx.model), corpus=texts_hash(texts), fisher=hp.fisher,
                        max_tokens=hp.max_tokens, block=hp.block_size, batch=hp.batch_size, seed=ctx.seed,
                        projections=hp.projections, bos=bos)

        def collect(advance):
            def both(n):  # the terminal's bar and the caller's (the UI's), when it passed one
                advance(n)
                if progress is not None:
                    progress(n)
            return collect_factors(ctx.model, ctx.adapter, blocks, all_layers, fisher=hp.fisher,
                                   batch_size=hp.batch_size, seed=ctx.seed, projections=hp.projections, bos_id=bos,
                                   progress=both)

        return cached_tensors("kfac", key, collect, what="collecting K-FAC factors", total=int(blocks.shape[0]))

    @classmethod
    def charts(cls, patch) -> list[Chart]:
        """The sorted curvature mass λ_G·λ_A of each edited weight, with the ρ cut: everything
        right of the line (low curvature, where memorized strings live) was removed."""
        return [Chart(title=name, kind="line", series={"mass": s["mass_sorted"]}, x_stride=s.get("mass_sorted_stride", 1),
                      x_label="component (by curvature mass)", y_label="λ_G·λ_A", log_y=True,
                      marker=(s["kept"], f"ρ cut: {s['kept']:,} of {s['components']:,} kept"))
                for name, s in patch.meta.get("spectra", {}).items()]

    def sweep(self, ctx: EditContext, batch: Batch, hp: KFACHParams, factors: dict) -> tuple[KFACHParams, dict, dict]:
        """The `auto` sweep: every candidate applied in turn, scored on the dev split, undone;
        returns the chosen hyper-parameters, the record of the sweep and each weight's spectrum
        (by module id), so the chosen edit needs no second eigendecomposition."""
        import warnings
        from editors.common.corpus import default_dev_prose, default_dev_suites
        forgets = list(batch)
        dev = forgets[::2]  # the other half is left for whoever judges the edit
        suites = default_dev_suites() if not hp.corpus else {}
        prose = default_dev_prose() if not hp.corpus else []
        overlap = False
        if prose:
            # General prose, not the factor corpus's remainder: that mixes in biographies, whose
            # facts K-FAC is known to lose (reported, not guarded), and a guard on it refused the
            # cut held-out prose perplexity would have accepted (canaries: x1.16 on corpus text
            # where held-out prose and this text both moved x1.13). Scored text by text, as the
            # benches score held-out perplexity (packed blocks read x1.150 where the same texts
            # one by one read x1.158).
            ppl_texts, dev_text = prose, "world dev prose"
        else:
            texts = self._texts()
            stream = corpus_stream(ctx.tokenizer, texts)
            overlap = len(stream) < hp.max_tokens + DEV_TOKENS
            start = len(stream) - DEV_TOKENS if overlap else hp.max_tokens  # corpus text the factors did not see, if any
            ppl_texts = corpus_blocks(ctx.tokenizer, texts, hp.block_size, DEV_TOKENS, skip=max(0, start),
                                      stream=stream)
            dev_text = "corpus past the factor tokens"
        model, ad = ctx.model, ctx.adapter
        # keyed by module: gate and up share an A key, so (layer, A key) would not tell them apart
        spectra = {}
        for layer in range(ad.num_layers):
            for mod, a, g in targets(ad, layer, hp.projections):
                spectra[id(mod)] = (ad.weight(mod), spectrum(ad.weight(mod), factors[a], factors[g]))
        before = dev_scores(model, ctx.tokenizer, dev, suites, ppl_texts)
        candidates = []
        with torch.no_grad():
            for layers in candidate_layers(ad.num_layers, hp.auto_span):
                mods = [m for layer in layers for m, _, _ in targets(ad, layer, hp.projections)]
                saved = [spectra[id(m)][0].clone() for m in mods]
                for rho in hp.auto_rhos:
                    try:
                        for m in mods:
                            W, spec = spectra[id(m)]
                            W.copy_(truncate(spec, rho, W.dtype)[0])
                        scores = dev_scores(model, ctx.tokenizer, dev, suites, ppl_texts)
                    finally:
                        for m, w in zip(mods, saved):
                            spectra[id(m)][0].copy_(w)
                    candidates.append({"layers": list(layers), "rho": rho, **scores})
        i, ok = choose_candidate(before, candidates, hp.auto_guard, hp.auto_ppl)
        if not ok:
            warnings.warn("K-FAC auto: no candidate kept the general dev suites within the guard; "
                          "took the least damaging one (see the sweep in the patch)")
        chosen = candidates[i]
        record = {"rule": AUTO_RULE, "dev_forget_ids": [r.id for r in dev],
                  "guard_suites": {n: len(p) for n, p in suites.items()}, "dev_text": dev_text,
                  "dev_text_tokens": ppl_texts.numel() if torch.is_tensor(ppl_texts) else
                  sum(len(t) for t in ctx.tokenizer(ppl_texts)["input_ids"]),
                  "dev_text_overlaps_factor_corpus": overlap, "before": before, "candidates": candidates,
                  "chosen": i, "eligible": ok}
        return (dataclasses.replace(hp, layers=tuple(chosen["layers"]), rho=chosen["rho"]), record,
                {k: spec for k, (_, spec) in spectra.items()})

    def run(self, ctx: EditContext, batch: Batch, hp: KFACHParams) -> Patch:
        from workbench.eval.evaluate import evaluate_forgets
        before = evaluate_forgets(ctx.model, ctx.tokenizer, list(batch), exposure_samples=0)["mean"]
        if before["loose_recitation"] == 0 and before["extraction_strength"] == 0:
            raise InputError(f"the model does not reproduce this forget set (strict recitation "
                             f"{before['strict_recitation']:.2f}, loose {before['loose_recitation']:.2f}); "
                             f"nothing to remove", field="requests")
        factors, _ = self.factors(ctx)
        meta: dict = {"recitation_before": before}
        spectra_by_module: dict = {}
        if hp.auto:
            hp, meta["auto"], spectra_by_module = self.sweep(ctx, batch, hp, factors)
            ctx.choose(hp)
        mods = [m for layer in hp.layers for m, _, _ in targets(ctx.adapter, layer, hp.projections)]
        rec = ctx.recorder([ctx.adapter.param_name(m) for m in mods])
        spectra = {}
        with torch.no_grad():
            for layer in hp.layers:
                for mod, a, g in targets(ctx.adapter, layer, hp.projections):
                    W = ctx.adapter.weight(mod)  # (out, in) view
                    spec = spectra_by_module.get(id(mod)) or spectrum(W, factors[a], factors[g])
                    W_new, info = truncate(spec, hp.rho, W.dtype)
                    W.copy_(W_new)
                    spectra[ctx.adapter.param_name(mod)] = info
        meta["bos_top_share"] = {str(layer): bos_share(factors[f"A.{layer}"], factors[f"Abos.{layer}"])
                                 for layer in hp.layers if f"Abos.{layer}" in factors}
        return rec.patch(meta={"spectra": spectra, **meta})
