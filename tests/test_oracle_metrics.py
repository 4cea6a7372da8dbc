"""Metrics against a retrain oracle (TOFU's truth ratio and forget quality, membership
inference AUCs and MUSE's PrivLeak), each checked against values computed by hand."""
import math
import zlib
from math import comb

import pytest

from workbench.eval.metrics import forget_quality, member_scores, mia_auc, privleak, truth_ratio


def test_truth_ratio_is_the_geometric_mean_of_wrong_over_correct_per_token_likelihoods():
    # correct: P = e^-1 per token; wrong answers e^-2 and e^-3 per token -> geometric mean e^-2.5
    assert truth_ratio([-1.0, -1.0, -1.0], [[-2.0, -2.0], [-3.0]]) == pytest.approx(math.exp(-1.5))
    assert truth_ratio([-2.0], [[-2.0]]) == pytest.approx(1.0)  # cannot tell right from wrong
    with pytest.raises(ValueError):
        truth_ratio([-1.0], [])
    with pytest.raises(ValueError):
        truth_ratio([-1.0], [[]])


def test_forget_quality_is_the_ks_p_value():
    same = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert forget_quality(same, same) == 1.0
    # two samples of 10 that do not overlap: D = 1, exact p = 2 / C(20, 10)
    assert forget_quality([i / 100 for i in range(10)], [1 + i / 100 for i in range(10)]) == \
        pytest.approx(2 / comb(20, 10))
    with pytest.raises(ValueError):
        forget_quality([], same)


def test_member_scores_by_hand():
    lp = [-0.1, -2.0, -0.3, -4.0, -0.6]  # mean NLL 1.4
    s = member_scores(lp, "the secret is 4 8 1")
    assert s["loss"] == pytest.approx(-1.4)
    assert s["zlib"] == pytest.approx(-1.4 / len(zlib.compress(b"the secret is 4 8 1")))
    assert s["min_k"] == pytest.approx((-4.0 - 2.0) / 2)  # 40% of 5 tokens: the 2 lowest
    assert member_scores(lp, "x", k=0.2)["min_k"] == pytest.approx(-4.0)
    assert member_scores([-1.0], "x", k=0.1)["min_k"] == -1.0  # at least one token
    with pytest.raises(ValueError):
        member_scores([], "x")


def test_mia_auc_counts_pairs_ordered_right():
    # members 0.9, 0.8 vs non-members 0.1, 0.85: 3 of 4 pairs ordered right
    assert mia_auc([0.9, 0.8], [0.1, 0.85]) == 0.75
    assert mia_auc([1.0, 2.0], [1.0, 2.0]) == 0.5
    assert mia_auc([3.0], [1.0, 2.0]) == 1.0 and mia_auc([0.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError):
        mia_auc([], [1.0])


def test_privleak_sign_follows_muse():
    # a model that still tells its forget set apart (AUC 0.95) against an oracle at chance:
    # MUSE's held-out-positive AUC is 0.05, so PrivLeak = (0.05 - 0.5) / 0.5 = -90%
    assert privleak(0.95, 0.5) == pytest.approx(-90.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.2, 0.5) == pytest.approx(60.0)  # over-unlearned: forget items look less seen
    with pytest.raises(ValueError):
        privleak(0.9, 1.0)


def test_truth_ratios_and_membership_on_the_shipped_model(shipped_model):
    """The default model memorized the forget canaries and never saw their holdout twins: its
    truth ratios sit near 0 on the first and near 1 on the second, and every attack tells
    them apart. Against itself as the oracle, forget quality is 1 and PrivLeak 0."""
    from workbench.core.paths import BENCHMARKS
    from workbench.eval.oracle import ATTACKS, compare, oracle_stats, truth_ratios
    from workbench.eval.requests import load_requests
    from workbench.eval.scoring import encode_pairs, score_answers
    model, tok = shipped_model
    forgets = load_requests(BENCHMARKS / "forget_canaries.jsonl")[-10:]  # repeats 16-32: always recited
    holdouts = load_requests(BENCHMARKS / "holdout_canaries.jsonl")[:10]
    r = forgets[0]  # one truth ratio by hand
    right, *wrong = score_answers(model, encode_pairs(tok, [r.prefix] * 6, [r.suffix, *r.perturbed_suffixes]))
    assert truth_ratios(model, tok, [r])[0] == pytest.approx(truth_ratio(right.logprobs, [w.logprobs for w in wrong]))
    stats = oracle_stats(model, tok, forgets, holdouts)
    assert max(stats["truth_ratios"]) < 0.2  # per-token: the spaces between digits are easy either way
    unseen = truth_ratios(model, tok, holdouts)
    assert 0.2 < sum(unseen) / len(unseen) < 5.0  # a secret never seen is no likelier than a wrong one
    assert all(stats["auc"][a] >= 0.9 for a in ATTACKS), stats["auc"]
    same = compare(stats, stats)
    assert same["forget_quality"] == 1.0 and same["privleak"] is None  # undefined at an oracle AUC of 1
    leak = compare(stats, {**stats, "auc": {"min_k": 0.5}})["privleak"]  # an oracle at chance
    assert leak == pytest.approx(privleak(stats["auc"]["min_k"], 0.5)) and leak < -80
    # the same model judged against an "oracle" that saw none of it: the holdout set as forget set
    never = oracle_stats(model, tok, holdouts, forgets)
    judged = compare(stats, {"truth_ratios": unseen, "auc": never["auc"]})
    assert judged["forget_quality"] < 1e-3
