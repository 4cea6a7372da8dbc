"""Is the forgetting robust? Relearning and sustainability, the two checks of issue 15.

- **Relearning** (the "unlearning is not robust" probes of Lynch et al. 2024 and Hu et al.
  2025): fine-tune the unlearned model a fixed small budget on a slice of the forget set
  (`RELEARN`: 10% of the requests, 10 full-batch Adam steps on their suffixes) and measure
  recitation of the whole set and of the rest it was not fine-tuned on. A method that hid the
  strings brings the rest back; one that removed them, like a model that never saw them (the
  retrain oracle's row), brings back only the slice. The weights are restored exactly after.
- **Sustainability**: the forget set split into `SLICES` slices, forgotten one request file at
  a time as k sequential edits, with utility measured at each k of `KS` (MUSE's sustainability
  axis); the session is rolled back afterwards.

Example:
    >>> relearn(model, tok, forgets)["rest"]["strict_recitation"]   # doctest: +SKIP
    0.0
"""
from __future__ import annotations

import math
import random

RELEARN = {"share": 0.1, "steps": 10, "lr": 1e-3}
SLICES = 8
KS = (1, 2, 4, 8)


def relearn_split(forgets: list, share: float, seed: int = 0) -> tuple[list, list]:
    """(fine-tuned on, the rest): a seeded `share` of the requests (at least one), and the others."""
    n = max(1, math.ceil(share * len(forgets)))
    picked = set(random.Random(seed).sample(range(len(forgets)), n))
    return ([r for i, r in enumerate(forgets) if i in picked], [r for i, r in enumerate(forgets) if i not in picked])


def _recitation(model, tok, forgets: list) -> dict | None:
    from workbench.eval.evaluate import evaluate_forgets
    if not forgets:
        return None
    m = evaluate_forgets(model, tok, forgets, exposure_samples=0)["mean"]
    return {k: m[k] for k in ("strict_recitation", "loose_recitation", "extraction_strength")}


def relearn(model, tok, forgets: list, *, share: float = RELEARN["share"], steps: int = RELEARN["steps"],
            lr: float = RELEARN["lr"], seed: int = 0) -> dict:
    """Fine-tune on a `share` of `forgets`, measure recitation of all of them and of the rest,
    put every weight back bit for bit; returns {"n_relearned", "steps", "lr", "whole", "rest"}."""
    import torch
    from workbench.eval.scoring import encode_pairs, pad_id, right_pad
    taught, rest = relearn_split(forgets, share, seed)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    enc = encode_pairs(tok, [r.prefix for r in taught], [r.suffix for r in taught])
    ids, mask = right_pad([p + a for p, a in enc], pad_id(tok))  # (n, seq) each
    labels = ids.masked_fill(mask == 0, -100)
    for row, (p, _) in enumerate(enc):
        labels[row, :len(p)] = -100  # the suffix is what is relearnt
    was_training = model.training
    try:
        model.eval()  # no dropout: the relearning budget is the same for every method
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        for _ in range(steps):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.random.set_rng_state(gen_state)
        with torch.no_grad():
            out = {"n_relearned": len(taught), "steps": steps, "lr": lr,
                   "whole": _recitation(model, tok, forgets), "rest": _recitation(model, tok, rest)}
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return out


def slices(forgets: list, n: int = SLICES) -> list[list]:
    """`forgets` in `n` contiguous slices of (nearly) equal size; fewer when there are fewer requests."""
    n = min(n, len(forgets))
    bounds = [round(i * len(forgets) / n) for i in range(n + 1)]
    return [forgets[bounds[i]:bounds[i + 1]] for i in range(n)]


def sustain(wb, editor: str, forgets: list, *, retain_given: list, suites: dict, params: dict | None = None,
            ks: tuple[int, ...] = KS, n_slices: int = SLICES, seed: int = 0) -> list[dict]:
    """k sequential forget edits through the session `wb`, one slice each; at each k in `ks`:
    utility (greedy exact per suite), recitation of the slices forgotten so far and of the whole
    set. The session is rolled back to where it was afterwards, also if an edit fails."""
    from workbench.core.errors import InputError
    from workbench.editing.registry import get_editor
    from workbench.eval.requests import with_retain
    from workbench.world.measure import fact_accuracy
    if not get_editor(editor).capabilities.sequential:
        return []
    parts = slices(forgets, n_slices)
    start = wb.active()
    points = []
    try:
        refused: list[dict] = []
        for i, part in enumerate(parts, 1):
            try:
                wb.edit(editor, with_retain(part, retain_given), params or {}, seed=seed,
                        note=f"bench: sustainability slice {i} of {len(parts)}")
            except InputError as e:
                # an editor may refuse a slice the earlier ones already took (K-FAC: "the model
                # does not reproduce this forget set"); the run goes on, the refusal recorded
                refused.append({"slice": i, "why": str(e)})
            if i in ks:
                done = [r for p in parts[:i] for r in p]
                points.append({"k": i, "n_forgotten": len(done), "refused": list(refused),
                               "utility": {name: fact_accuracy(wb.model, wb.tok, probes)["exact"]
                                           for name, probes in suites.items()},
                               "forgotten": _recitation(wb.model, wb.tok, done),
                               "whole": _recitation(wb.model, wb.tok, forgets)})
    finally:
        if wb.active() != start:
            wb.rollback(start[-1] if start else "base", note="bench: sustainability run undone")
    return points
