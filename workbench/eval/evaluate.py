"""Batched evaluation of edit and forget requests with the field's metrics.

Every (prompt, answer) probe of every request goes into one list, is scored in length-sorted
batches by `scoring.score_answers` (one forward pass per batch), and the results are mapped
back to their requests. Locality needs the unedited model's argmax tokens: take a
`Reference` of the unedited model first (`reference(model, tok, requests)`), then evaluate
the edited model against it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from statistics import mean

from workbench.eval import metrics
from workbench.eval.requests import EditRequest, ForgetRequest
from workbench.eval.scoring import encode_pairs, greedy_continuations, pad_id, score_answers

EDIT_METRICS = metrics.metric_names("edit", summary=True)  # each also has an "_exact" variant


@dataclass
class Reference:
    """The unedited model's locality predictions: request index -> one token list per probe."""
    locality: dict[int, list[list[int]]] = field(default_factory=dict)


def _pairs_checked(tok, items: list[tuple[str, str]], owners: list, fields: list[str]):
    pairs = encode_pairs(tok, [p for p, _ in items], [a for _, a in items])
    for (_, a_ids), req, fld in zip(pairs, owners, fields):
        if not a_ids:
            raise req.input_error("tokenizes to nothing", field=fld)
    return pairs


def _edit_items(requests: list[EditRequest]):
    """Flatten every probe: (request index, metric, prompt, answer, field name)."""
    items = []
    for i, r in enumerate(requests):
        items.append((i, "reliability", r.prompt, r.target_new, "target_new"))
        items += [(i, "generality", p, r.target_new, "target_new") for p in r.rephrase_prompts]
        items += [(i, "locality", p.prompt, p.answer, "locality") for p in r.locality]
        items += [(i, "portability", p.prompt, p.answer, "portability") for p in r.portability]
    return items


def _score_items(model, tok, requests, items, batch_size, progress):
    pairs = _pairs_checked(tok, [(p, a) for _, _, p, a, _ in items], [requests[i] for i, *_ in items],
                           [f for *_, f in items])
    return score_answers(model, pairs, batch_size=batch_size, pad_id=pad_id(tok), progress=progress)


def reference(model, tok, requests: list[EditRequest], *, batch_size: int = 64) -> Reference:
    """The unedited model's argmax tokens on each locality answer (teacher-forced)."""
    items = [it for it in _edit_items(requests) if it[1] == "locality"]
    scores = _score_items(model, tok, requests, items, batch_size, None)
    ref = Reference()
    for (i, *_), s in zip(items, scores):
        ref.locality.setdefault(i, []).append(s.predicted)
    return ref


def evaluate_edits(model, tok, requests: list[EditRequest], ref: Reference | None = None, *,
                   batch_size: int = 64, progress=None) -> dict:
    """Per-request and mean scores, each mean with its 95% interval (`intervals`). Without `ref`,
    locality is reported as the model's accuracy on the locality answers (`locality_answer_acc`)
    and `locality` is None.

    Example:
        >>> ref = reference(base, tok, reqs); edit(...)  # doctest: +SKIP
        >>> evaluate_edits(model, tok, reqs, ref)["mean"]["reliability"]  # doctest: +SKIP
    """
    items = _edit_items(requests)
    scores = _score_items(model, tok, requests, items, batch_size, progress)
    per = [{"id": r.id, **{m: [] for m in EDIT_METRICS}, "locality_answer": []} for r in requests]
    changed: list[list[dict]] = [[] for _ in requests]  # locality probes whose greedy tokens moved
    loc_seen: dict[int, int] = {}
    for (i, metric, prompt, answer, _), s in zip(items, scores):
        if metric == "locality":
            per[i]["locality_answer"].append((s.token_accuracy, s.exact))
            if ref is not None:
                before = ref.locality[i][loc_seen.get(i, 0)]
                loc_seen[i] = loc_seen.get(i, 0) + 1
                share = metrics.locality_unchanged(before, s.predicted)
                per[i]["locality"].append((share, share == 1.0))
                if share < 1.0:
                    changed[i].append({"request": requests[i].id, "prompt": prompt, "answer": answer,
                                       "before": tok.decode(before), "after": tok.decode(s.predicted),
                                       "unchanged": share})
        else:
            per[i][metric].append((s.token_accuracy, s.exact))
    rows = [_summarize(p) for p in per]
    if ref is not None:
        for row, ch in zip(rows, changed):
            row["locality_changed"] = ch
    return {"per_request": rows, "mean": _mean_rows(rows), "intervals": _interval_rows(rows), "n": len(rows)}


def _summarize(p: dict) -> dict:
    row = {"id": p["id"]}
    for m in (*EDIT_METRICS, "locality_answer"):
        vals = p[m]
        row[f"{m}_acc" if m == "locality_answer" else m] = mean(v for v, _ in vals) if vals else None
        row[f"{m}_exact"] = mean(float(e) for _, e in vals) if vals else None
    return row


_NOT_SCORES = ("id", "kind", "locality_changed")  # per-request fields that are not numbers to average


def _score_keys(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k not in _NOT_SCORES] if rows else []


def _mean_rows(rows: list[dict]) -> dict:
    keys = _score_keys(rows)
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = mean(vals) if vals else None
    return out


def _interval_rows(rows: list[dict]) -> dict:
    """Each mean's 95% interval over the requests (`workbench.eval.stats.interval`: Wilson when
    every request scored 0 or 1, else a bootstrap over requests), as JSON-ready dicts."""
    from workbench.eval.stats import interval
    out = {}
    for k in _score_keys(rows):
        iv = interval([r[k] for r in rows])
        if iv is not None:
            out[k] = iv.as_dict()
    return out


def _scored_texts(r) -> list[tuple[str | None, str, str]]:
    """(field, prompt, answer) of everything a request is scored on; field None: the request's
    own prompt and answer (which of the two is named depends on which is long)."""
    if isinstance(r, EditRequest):
        return ([(None, r.prompt, r.target_new)] + [("rephrase_prompts", q, r.target_new) for q in r.rephrase_prompts]
                + [("locality", q.prompt, q.answer) for q in r.locality]
                + [("portability", q.prompt, q.answer) for q in r.portability])
    return ([(None, r.prefix, r.suffix)] + [("paraphrased_prefixes", q, r.suffix) for q in r.paraphrased_prefixes]
            + [("paraphrased_suffixes", r.prefix, q) for q in r.paraphrased_suffixes]
            + [("perturbed_suffixes", r.prefix, q) for q in r.perturbed_suffixes]
            + [("retain", q.prompt, q.answer) for q in r.retain])


def check_context(tok, requests: list, context: int | None) -> None:
    """Refuse a request any of whose scored texts (prompt and answer, rephrasings, locality,
    portability, paraphrases, retain items) is longer than the model's `context`, naming the
    request, the field and its file and line, before anything is scored: such a text would
    run for minutes and then fail out of memory, or be scored past what the model can read."""
    if not context:
        return
    rows = [(i, r, *t) for i, r in enumerate(requests) for t in _scored_texts(r)]
    pairs = encode_pairs(tok, [row[3] for row in rows], [row[4] for row in rows])
    for (i, r, fld, _, _), (p_ids, a_ids) in zip(rows, pairs):
        n = len(p_ids) + len(a_ids)
        if n > context:
            if fld is None:
                fld = r.prompt_field if len(p_ids) >= len(a_ids) else r.answer_field
            raise r.input_error(f"request {i + 1}: {n} tokens with its answer, longer than the model's context "
                                f"of {context}", field=fld)


def n_scored(requests: list) -> int:
    """How many answers `evaluate_edits` / `evaluate_forgets` score for these requests: the total
    their `progress` callback counts up to."""
    return sum(1 + len(r.rephrase_prompts) + len(r.locality) + len(r.portability) if isinstance(r, EditRequest)
               else 2 for r in requests)


def evaluate_forgets(model, tok, requests: list[ForgetRequest], *, exposure_samples: int = 200, seed: int = 0,
                     batch_size: int = 64, progress=None) -> dict:
    """Recitation (strict/loose), extraction strength, exposure (canaries) and retain accuracy."""
    pairs = _pairs_checked(tok, [(r.prefix, r.suffix) for r in requests], requests, ["suffix"] * len(requests))
    scores = score_answers(model, pairs, batch_size=batch_size, pad_id=pad_id(tok), progress=progress)
    gens = greedy_continuations(model, [p for p, _ in pairs], [len(a) for _, a in pairs], batch_size=batch_size,
                                pad_id=pad_id(tok), progress=progress)
    rows = []
    for r, (_, suffix_ids), s, g in zip(requests, pairs, scores, gens):
        rec = metrics.recitation(g, suffix_ids)
        rows.append({"id": r.id, "kind": r.kind, "recitation_similarity": rec["similarity"],
                     "strict_recitation": float(rec["strict"]), "loose_recitation": float(rec["loose"]),
                     "extraction_strength": metrics.extraction_strength(s.hits),
                     "suffix_logprob": sum(s.logprobs), "exposure": None, "retain_acc": None})
    _add_exposure(model, tok, requests, rows, exposure_samples, seed, batch_size)
    _add_retain(model, tok, requests, rows, batch_size)
    return {"per_request": rows, "mean": _mean_rows(rows), "intervals": _interval_rows(rows), "n": len(rows)}


def _add_exposure(model, tok, requests, rows, n_samples, seed, batch_size):
    canaries = [i for i, r in enumerate(requests) if r.kind == "canary"]
    if not canaries or n_samples <= 0:
        return
    rng = random.Random(seed)
    # Alternative words come from the secrets themselves, so they share the secrets' vocabulary.
    pool = sorted({w for i in canaries for w in requests[i].suffix.split() if w.isalpha()})
    alts = {i: metrics.secret_alternatives(requests[i].suffix, pool, n_samples, rng) for i in canaries}
    flat = [(requests[i].prefix, a) for i in canaries for a in alts[i]]
    scores = score_answers(model, encode_pairs(tok, [p for p, _ in flat], [a for _, a in flat]),
                           batch_size=batch_size, pad_id=pad_id(tok))
    for k, i in enumerate(canaries):
        alt_lp = [sum(s.logprobs) for s in scores[k * n_samples:(k + 1) * n_samples]]
        rows[i]["exposure"] = metrics.exposure(rows[i]["suffix_logprob"], alt_lp)


def _add_retain(model, tok, requests, rows, batch_size):
    # A retain set is often shared by every request (`with_retain`): score each distinct
    # probe once, then average per request.
    unique = sorted({(p.prompt, p.answer) for r in requests for p in r.retain})
    if not unique:
        return
    scores = score_answers(model, encode_pairs(tok, [p for p, _ in unique], [a for _, a in unique]),
                           batch_size=batch_size, pad_id=pad_id(tok))
    acc = {key: s.token_accuracy for key, s in zip(unique, scores)}
    for r, row in zip(requests, rows):
        if r.retain:
            row["retain_acc"] = mean(acc[(p.prompt, p.answer)] for p in r.retain)


def perplexity(model, tok, texts: list[str], *, batch_size: int = 32) -> float:
    """Perplexity over the tokens of `texts` (each after its first)."""
    return perplexity_interval(model, tok, texts, batch_size=batch_size).value


def perplexity_interval(model, tok, texts: list[str], *, batch_size: int = 32):
    """Perplexity with its 95% interval (`workbench.eval.stats.Interval`): a bootstrap over the
    texts of the NLL per token, exponentiated (exp is monotone, so the bounds carry over)."""
    import math
    from workbench.eval.scoring import text_nll
    from workbench.eval.stats import Interval, bootstrap_ratio
    nll, count = text_nll(model, tok(texts, add_special_tokens=True)["input_ids"], batch_size=batch_size,
                          pad_id=pad_id(tok))
    iv = bootstrap_ratio(nll, count)
    return Interval(math.exp(iv.value), math.exp(iv.lo), math.exp(iv.hi), iv.method, iv.n)


def next_token_ndcg(model, base, tok, texts: list[str], *, k: int = 10, batch_size: int = 32) -> float:
    """Mean nDCG@k of `model`'s next-token ranking against the unedited `base` model's, over
    every position of `texts` (1.0 = the edit left these rankings untouched)."""
    import torch
    from workbench.eval.scoring import right_pad
    ids_all = tok(texts, add_special_tokens=True)["input_ids"]
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids_all), batch_size):
            ids, mask = right_pad(ids_all[s:s + batch_size], pad_id(tok))
            keep = mask.bool()  # (batch, seq)
            ref = torch.softmax(base(input_ids=ids, attention_mask=mask).logits.float()[keep], -1)  # (n, vocab)
            new = model(input_ids=ids, attention_mask=mask).logits.float()[keep]  # (n, vocab)
            n = int(keep.sum())
            total += metrics.ndcg_at_k(ref, new, k) * n
            count += n
    return total / count
