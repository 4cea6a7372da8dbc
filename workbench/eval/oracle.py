"""Scores that compare a model with a retrain oracle on a forget set (TOFU's forget quality,
membership inference and MUSE's PrivLeak); the formulas are in `workbench.eval.metrics`.

    stats = oracle_stats(model, tok, forgets, holdouts)      # one model's raw numbers
    compare(stats, oracle_stats(oracle, tok, forgets, holdouts))
"""
from __future__ import annotations

from workbench.eval import metrics
from workbench.eval.scoring import encode_pairs, pad_id, score_answers

ATTACKS = ("loss", "zlib", "min_k")
PRIVLEAK_ATTACK = "min_k"  # MUSE reports PrivLeak with Min-K% Prob


def truth_ratios(model, tok, requests, *, batch_size: int = 64) -> list[float]:
    """TOFU's truth ratio of each request that has wrong answers (`perturbed_suffixes`); the
    right answer is the first paraphrased suffix when given (TOFU's paraphrased answer), else
    the suffix."""
    used = [r for r in requests if r.perturbed_suffixes]
    items = [(r.prefix, (r.paraphrased_suffixes or (r.suffix,))[0]) for r in used]
    items += [(r.prefix, w) for r in used for w in r.perturbed_suffixes]
    scores = score_answers(model, encode_pairs(tok, [p for p, _ in items], [a for _, a in items]),
                           batch_size=batch_size, pad_id=pad_id(tok))
    out, k = [], len(used)
    for i, r in enumerate(used):
        wrong = scores[k:k + len(r.perturbed_suffixes)]
        k += len(r.perturbed_suffixes)
        out.append(metrics.truth_ratio(scores[i].logprobs, [w.logprobs for w in wrong]))
    return out


def member_score_lists(model, tok, requests, *, batch_size: int = 64) -> dict[str, list[float]]:
    """Each attack's member score of each request's whole text (prefix, a space, suffix): every
    token after the first is scored, as membership inference scores a document."""
    texts = [f"{r.prefix} {r.suffix}" for r in requests]
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    # score_answers scores an "answer" after a "prompt": the first token is the prompt
    scores = score_answers(model, [(t[:1], t[1:]) for t in ids], batch_size=batch_size, pad_id=pad_id(tok))
    per_item = [metrics.member_scores(s.logprobs, text) for s, text in zip(scores, texts)]
    return {a: [p[a] for p in per_item] for a in ATTACKS}


def oracle_stats(model, tok, forgets, holdouts, *, batch_size: int = 64) -> dict:
    """One model's raw material for `compare`: truth ratios on the forget set and each attack's
    AUC of forget (members) against holdout (non-members) items."""
    members = member_score_lists(model, tok, forgets, batch_size=batch_size)
    non = member_score_lists(model, tok, holdouts, batch_size=batch_size)
    return {"truth_ratios": truth_ratios(model, tok, forgets, batch_size=batch_size),
            "auc": {a: metrics.mia_auc(members[a], non[a]) for a in ATTACKS}}


def compare(stats: dict, oracle: dict) -> dict:
    """Forget quality (KS p-value of the truth ratios against the oracle's), each attack's AUC,
    PrivLeak against the oracle's AUC (None when the oracle's AUC is 1, where it is undefined),
    and the mean truth ratio."""
    ratios = stats["truth_ratios"]
    auc, auc_oracle = stats["auc"][PRIVLEAK_ATTACK], oracle["auc"][PRIVLEAK_ATTACK]
    return {"forget_quality": metrics.forget_quality(ratios, oracle["truth_ratios"]) if ratios else None,
            "truth_ratio": sum(ratios) / len(ratios) if ratios else None,
            **{f"mia_auc_{a}": stats["auc"][a] for a in ATTACKS},
            "privleak": metrics.privleak(auc, auc_oracle) if auc_oracle < 1.0 else None}
