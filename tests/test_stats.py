"""Intervals, paired tests and multiple-comparison correction against values computed by hand."""
import math

import pytest

from workbench.eval import stats


def test_wilson_matches_the_formula():
    # Wilson (1927): centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
    k, n, z = 19, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    iv = stats.wilson(k, n)
    assert iv.value == 0.95 and iv.method == "wilson" and iv.n == 20
    assert iv.lo == pytest.approx(centre - half, abs=1e-9) and iv.hi == pytest.approx(centre + half, abs=1e-9)
    assert (round(iv.lo, 4), round(iv.hi, 4)) == (0.7639, 0.9911)
    assert str(iv) == "0.950 [0.76, 0.99]"


def test_a_printed_interval_always_holds_its_printed_value():
    # bounds are rounded to 2 digits, the value to 3: a bound within 0.005 of the value rounded past it
    assert stats.fmt(0.999, {"lo": 0.9966, "hi": 1.0}) == "0.999 [0.99, 1.00]"
    assert stats.fmt(0.001, {"lo": 0.0, "hi": 0.0034}) == "0.001 [0.00, 0.01]"
    assert stats.fmt(0.5, {"lo": 0.4, "hi": 0.6}) == "0.500 [0.40, 0.60]"


def test_bounds_at_none_and_all_are_exact():
    assert stats.wilson(0, 7).lo == 0.0 and stats.wilson(7, 7).hi == 1.0
    assert stats.wilson(0, 7).hi == pytest.approx(1.959963984540054 ** 2 / (7 + 1.959963984540054 ** 2))


def test_ten_perfect_requests_are_not_certainty():
    iv = stats.interval([1.0] * 10)
    assert iv.method == "wilson" and iv.value == 1.0 and iv.hi == pytest.approx(1.0)
    assert iv.lo == pytest.approx(10 / (10 + 1.959963984540054 ** 2), abs=1e-9)  # k = n: lo = n / (n + z^2)


def test_fractional_scores_are_bootstrapped_over_requests():
    vals = [0.5, 0.75, 1.0, 0.25, 0.0, 1.0, 0.5, 0.75]
    iv = stats.interval(vals)
    assert iv.method == "bootstrap" and iv.value == pytest.approx(sum(vals) / len(vals))
    assert 0.0 <= iv.lo < iv.value < iv.hi <= 1.0
    assert stats.interval(vals) == iv  # fixed seed: the same table twice
    assert stats.interval([None, None]) is None
    same = stats.interval([0.5] * 5)
    assert (same.lo, same.hi) == (0.5, 0.5)


def test_wider_with_fewer_requests():
    small = stats.interval([0.2, 0.4, 0.6, 0.8] * 3)
    large = stats.interval([0.2, 0.4, 0.6, 0.8] * 100)
    assert large.hi - large.lo < small.hi - small.lo


def test_mcnemar_exact_is_the_binomial_on_discordant_pairs():
    # 4 requests only A gets right, 1 only B: p = 2 * P(X <= 1 | 5, 1/2) = 2 * 6/32 = 0.375.
    a = [1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 1, 1, 0]
    r = stats.mcnemar_exact(a, b)
    assert (r["a_only"], r["b_only"]) == (4, 1)
    assert r["pvalue"] == pytest.approx(0.375)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1])["pvalue"] == 1.0


def test_wilcoxon_exact_p():
    # Six positive differences, all ranks positive: exact two-sided p = 2 / 2^6.
    r = stats.wilcoxon_paired([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [0.0] * 6)
    assert r["pvalue"] == pytest.approx(2 / 64)
    assert stats.wilcoxon_paired([0.3, 0.4], [0.3, 0.4])["pvalue"] == 1.0


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04), in the input order.
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_paired_comparison_significant_on_one_metric_only():
    # 30 requests: B loses "rel" on 12 requests (McNemar p = 2/4096), "loc" differs on two requests only.
    a = [{"id": i, "rel": 1.0, "loc": 1.0} for i in range(30)]
    b = [{"id": i, "rel": 0.0 if i < 12 else 1.0, "loc": 0.0 if i in (0, 5) else 1.0} for i in range(30)]
    out = {r["metric"]: r for r in stats.compare_paired(a, list(reversed(b)), ["rel", "loc"])}
    assert out["rel"]["test"] == "mcnemar" and out["rel"]["pvalue"] == pytest.approx(2 / 2 ** 12)
    assert out["rel"]["p_holm"] == pytest.approx(2 * 2 / 2 ** 12) and out["rel"]["significant"]
    assert out["rel"]["diff"]["value"] == pytest.approx(-12 / 30)
    assert out["rel"]["diff"]["hi"] < 0
    assert out["loc"]["pvalue"] == pytest.approx(0.5) and not out["loc"]["significant"]
    assert out["loc"]["diff"]["lo"] < 0 <= out["loc"]["diff"]["hi"]


def test_paired_comparison_refuses_different_requests():
    with pytest.raises(ValueError, match="same requests"):
        stats.compare_paired([{"id": 1, "m": 1.0}], [{"id": 2, "m": 1.0}], ["m"])


def test_spread_of_timings():
    s = stats.spread([0.4, 0.1, 0.3, 0.2])
    assert s["median"] == pytest.approx(0.25) and (s["min"], s["max"], s["n"]) == (0.1, 0.4, 4)
    assert s["q1"] == pytest.approx(0.175) and s["q3"] == pytest.approx(0.325)
