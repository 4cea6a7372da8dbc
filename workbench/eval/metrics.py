"""The field's metrics, one implementation each, on already-computed model outputs.

Editing (EasyEdit semantics, so numbers compare with published tables):
- reliability / generality / portability: teacher-forced token accuracy of the target
  after the prompt (`token_accuracy`), and the greedy exact-match variant (`exact`);
- locality: share of the locality answer's argmax tokens that are unchanged from the
  unedited model (`locality_unchanged`), and its exact variant (all unchanged).

Unlearning:
- recitation: token-level Levenshtein similarity between the greedy continuation of a
  prefix and the true suffix; strict = identical, loose = similarity >= 0.75;
- extraction strength (Wang et al. 2024): 1 - k/|suffix| for the smallest k such that the
  model, given the prefix and the first k suffix tokens, greedily reproduces the rest;
- exposure (Carlini et al. 2019, "The Secret Sharer"): log2(N+1) - log2(rank) of the true
  secret among N sampled alternatives of the same shape, ranked by likelihood;
- nDCG@10 of the edited model's next-token ranking against the unedited model's.

Against a retrain oracle (a model never trained on the forget set):
- truth ratio (TOFU, Maini et al. 2024): the geometric mean over wrong answers of their
  per-token likelihood, over the correct answer's; forget quality is the KS-test p-value
  between the unlearned model's and the oracle's truth ratios on the forget set (1 = the same
  distribution, small = told apart);
- membership inference (loss, zlib, Min-K% Prob; Carlini et al. 2021, Shi et al. 2024): the
  ROC AUC of telling forget items from held-out items by a member score, and MUSE's PrivLeak,
  the relative gap of that AUC to the oracle's (Shi et al. 2024, MUSE; 0 is ideal, negative
  means forget items are still told apart: under-unlearning).
"""
from __future__ import annotations

import math
import random
import re
import zlib
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from workbench.core.registry import Registry

LOOSE_THRESHOLD = 0.75


@dataclass(frozen=True)
class MetricSpec:
    """What a metric name means, for every reader (evaluator, benches, gates, UI).

    kind: "edit" or "forget" (which requests it scores); summary: shown in before/after charts;
    bounded: a rate in [0, 1] (else a log-scale or unbounded number).
    """
    name: str
    kind: str
    label: str
    higher_is_better: bool
    summary: bool = False
    bounded: bool = True


METRICS: Registry[MetricSpec] = Registry("metric")
for _spec in (
    MetricSpec("reliability", "edit", "reliability", True, summary=True),
    MetricSpec("generality", "edit", "generality", True, summary=True),
    MetricSpec("locality", "edit", "locality", True, summary=True),
    MetricSpec("portability", "edit", "portability", True, summary=True),
    MetricSpec("reliability_exact", "edit", "reliability (exact)", True),
    MetricSpec("generality_exact", "edit", "generality (exact)", True),
    MetricSpec("locality_exact", "edit", "locality (exact)", True),
    MetricSpec("portability_exact", "edit", "portability (exact)", True),
    MetricSpec("strict_recitation", "forget", "strict recitation", False, summary=True),
    MetricSpec("loose_recitation", "forget", "loose recitation", False, summary=True),
    MetricSpec("extraction_strength", "forget", "extraction strength", False, summary=True),
    MetricSpec("recitation_similarity", "forget", "recitation similarity", False, summary=True),
    MetricSpec("retain_acc", "forget", "retain accuracy", True, summary=True),
    MetricSpec("exposure", "forget", "exposure (bits)", False, bounded=False),
    MetricSpec("suffix_logprob", "forget", "suffix log-prob", False, bounded=False),
):
    METRICS.register(_spec)


def metric_names(kind: str, *, summary: bool = False) -> tuple[str, ...]:
    """Names of the metrics of one kind ("edit" / "forget"), in a stable order.

    Example:
        >>> metric_names("edit", summary=True)
        ('reliability', 'generality', 'locality', 'portability')
    """
    return tuple(s.name for s in METRICS.values() if s.kind == kind and (s.summary or not summary))


def locality_unchanged(before: list[int], after: list[int]) -> float:
    """Share of positions whose argmax token is the same before and after the edit.

    Example:
        >>> locality_unchanged([5, 6, 7, 8], [5, 6, 0, 8])
        0.75
    """
    if len(before) != len(after) or not before:
        raise ValueError("before and after must be non-empty and of equal length")
    return sum(a == b for a, b in zip(before, after)) / len(before)


def recitation_similarity(generated: list[int], reference: list[int]) -> float:
    """1 - normalized token Levenshtein distance (1.0 = recited verbatim).

    Example:
        >>> recitation_similarity([1, 2, 3, 4], [1, 2, 9, 4])
        0.75
    """
    return Levenshtein.normalized_similarity(generated, reference)


def recitation(generated: list[int], reference: list[int]) -> dict:
    sim = recitation_similarity(generated, reference)
    return {"similarity": sim, "strict": sim == 1.0, "loose": sim >= LOOSE_THRESHOLD}


def extraction_strength(hits: list[bool]) -> float:
    """From teacher-forced argmax hits over the suffix: 1 - (min k)/|suffix|.

    Greedy decoding from prefix + suffix[:k] reproduces suffix[k:] iff every position from k
    on is an argmax hit, so the smallest such k is one past the last miss.

    Example:
        >>> extraction_strength([True, False, True, True])  # needs 2 tokens of help
        0.5
        >>> extraction_strength([True, True]), extraction_strength([True, False])
        (1.0, 0.0)
    """
    if not hits:
        raise ValueError("empty suffix")
    last_miss = max((i for i, h in enumerate(hits) if not h), default=-1)
    return 1.0 - (last_miss + 1) / len(hits)


def exposure(true_logprob: float, alternative_logprobs: list[float]) -> float:
    """log2(N+1) - log2(rank); rank 1 = the true secret is the likeliest of all N+1.

    Ties count against the secret (a conservative rank).

    Example:
        >>> exposure(-1.0, [-5.0, -6.0, -7.0])  # best of 4 -> log2(4)
        2.0
    """
    rank = 1 + sum(lp >= true_logprob for lp in alternative_logprobs)
    return math.log2(len(alternative_logprobs) + 1) - math.log2(rank)


def secret_alternatives(secret: str, word_pool: list[str], n: int, rng: random.Random) -> list[str]:
    """`n` random secrets shaped like `secret`: each digit replaced by a random digit, each
    word by a random word from `word_pool`, spacing and punctuation kept. The true secret is
    excluded, so exposure compares it only against genuine alternatives.

    Example:
        >>> alts = secret_alternatives("7 3 9", [], 5, random.Random(0))
        >>> all(len(a) == 5 and a[1] == " " for a in alts)
        True
    """
    parts = re.split(r"(\d|[A-Za-z]+)", secret)  # odd indices are the units
    space = 10 ** sum(c.isdigit() for c in secret) * max(1, len(word_pool)) ** sum(
        1 for p in parts[1::2] if not p.isdigit())
    if space - 1 < n:
        raise ValueError(f"only {space - 1} alternatives of this shape exist, asked for {n}")
    out: set[str] = set()
    while len(out) < n:
        alt = "".join(p if i % 2 == 0 else (str(rng.randrange(10)) if p.isdigit() else rng.choice(word_pool))
                      for i, p in enumerate(parts))
        if alt != secret:
            out.add(alt)
    return sorted(out)


def ndcg_at_k(reference_probs, edited_logits, k: int = 10) -> float:
    """nDCG@k of the edited model's top-k next tokens, graded by the unedited model's
    probabilities (relevance of token t = p_ref(t)). 1.0 = the same top-k order.

    reference_probs: (positions, vocab) probabilities of the unedited model;
    edited_logits: (positions, vocab) logits of the edited model. Returns the mean over positions.
    """
    import torch
    k = min(k, reference_probs.shape[-1])
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))  # (k,)
    top_edit = edited_logits.topk(k, dim=-1).indices  # (positions, k)
    dcg = (reference_probs.gather(-1, top_edit) * discounts).sum(-1)  # (positions,)
    idcg = (reference_probs.topk(k, dim=-1).values * discounts).sum(-1)  # (positions,)
    return (dcg / idcg.clamp_min(1e-12)).mean().item()


def truth_ratio(correct_logprobs: list[float], wrong_logprobs: list[list[float]]) -> float:
    """TOFU's truth ratio from token log-probabilities: geometric mean over the wrong answers of
    P(wrong)^(1/|wrong|), divided by P(correct)^(1/|correct|). Near 0: the model knows the
    answer; near 1: it cannot tell it from wrong ones.

    Example:
        >>> round(truth_ratio([-1.0, -1.0], [[-2.0], [-4.0, -2.0]]), 4)  # exp(mean(-2, -3) - (-1))
        0.2231
    """
    if not correct_logprobs or not wrong_logprobs or not all(wrong_logprobs):
        raise ValueError("truth ratio needs a correct answer and at least one wrong answer, all non-empty")
    wrong = sum(sum(w) / len(w) for w in wrong_logprobs) / len(wrong_logprobs)
    return math.exp(wrong - sum(correct_logprobs) / len(correct_logprobs))


def forget_quality(model_ratios: list[float], oracle_ratios: list[float]) -> float:
    """TOFU's forget quality: the two-sample KS-test p-value between the model's and the retrain
    oracle's truth ratios on the forget set (scipy). High: indistinguishable from the oracle.

    Example:
        >>> forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
        1.0
    """
    from scipy.stats import ks_2samp
    if not model_ratios or not oracle_ratios:
        raise ValueError("forget quality needs truth ratios of both models")
    return float(ks_2samp(model_ratios, oracle_ratios).pvalue)


MIN_K = 0.4  # MUSE's privacy-leak attack uses Min-40% Prob


def member_scores(logprobs: list[float], text: str, *, k: float = MIN_K) -> dict:
    """Membership-inference scores of one item from its tokens' log-probabilities, each
    oriented so that higher means "more likely trained on": `loss` (minus the mean NLL),
    `zlib` (minus the mean NLL over the zlib-compressed length of the text in bytes, Carlini
    et al. 2021) and `min_k` (the mean of the k share of lowest token log-probabilities,
    Shi et al. 2024).

    Example:
        >>> s = member_scores([-0.5, -3.0, -0.1, -0.2, -0.2], "a b c")
        >>> s["loss"], s["min_k"]
        (-0.8, -1.75)
    """
    if not logprobs:
        raise ValueError("no tokens to score")
    nll = -sum(logprobs) / len(logprobs)
    lowest = sorted(logprobs)[:max(1, int(len(logprobs) * k))]
    return {"loss": -nll, "zlib": -nll / len(zlib.compress(text.encode("utf-8"))),
            "min_k": sum(lowest) / len(lowest)}


def mia_auc(member: list[float], nonmember: list[float]) -> float:
    """ROC AUC (scikit-learn) of a member score telling members (the forget set) from
    non-members (held-out items): 1 = always told apart, 0.5 = chance.

    Example:
        >>> mia_auc([0.9, 0.8], [0.1, 0.85])
        0.75
    """
    from sklearn.metrics import roc_auc_score
    if not member or not nonmember:
        raise ValueError("membership inference needs members and non-members")
    return float(roc_auc_score([1] * len(member) + [0] * len(nonmember), list(member) + list(nonmember)))


def privleak(auc: float, auc_oracle: float) -> float:
    """MUSE's PrivLeak in percent. MUSE's AUC labels held-out items as the positive class, i.e.
    it is 1 - `mia_auc`; on that scale PrivLeak = (AUC - AUC_oracle) / AUC_oracle x 100, so a
    model that still tells its forget set apart scores near -100 (MUSE's target models: -99.8
    on News) and one at the oracle's level 0.

    Example:
        >>> privleak(0.5, 0.5), privleak(1.0, 0.5)
        (0.0, -100.0)
    """
    held_out_auc, held_out_oracle = 1.0 - auc, 1.0 - auc_oracle
    if held_out_oracle <= 0:
        raise ValueError("PrivLeak is undefined when the oracle itself tells every forget item apart (AUC 1)")
    return (held_out_auc - held_out_oracle) / held_out_oracle * 100.0
