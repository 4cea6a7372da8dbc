"""Uncertainty for every number the workbench reports: intervals, paired tests, corrections.

A rate over requests gets a 95% interval:
- **Wilson** (statsmodels' `proportion_confint`) when every request scored 0 or 1 — exact-match
  metrics with one probe per request, and token accuracies that are all 0 or 1 (a bootstrap
  would give a zero-width interval for ten requests at 1.0; Wilson gives [0.72, 1.00]);
- else a **percentile bootstrap over requests** (scipy's `bootstrap`, 2000 resamples, fixed seed):
  a request's several probes (rephrasings, locality prompts) are one resampling unit, since they
  share the edit and are not independent.

Two runs on the same requests are compared pairwise (`compare_paired`): the mean difference
with a paired-bootstrap interval, McNemar's exact test when both sides are 0/1 per request
(statsmodels), else Wilcoxon's signed-rank test (scipy), and Holm's correction across the
metrics compared (statsmodels' `multipletests`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
METHODS = {"wilson": "Wilson where every request scored 0 or 1",
           "bootstrap": "a percentile bootstrap over requests"}
RULE = f"95% intervals over the requests: {METHODS['wilson']}, else {METHODS['bootstrap']}"  # what every table says


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; `method` says how the interval was made.

    Example:
        >>> str(Interval(0.95, 0.7639, 0.9911, "wilson", 20))
        '0.950 [0.76, 0.99]'
    """
    value: float
    lo: float
    hi: float
    method: str
    n: int

    def __str__(self) -> str:
        return fmt(self.value, {"lo": self.lo, "hi": self.hi})

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "method": self.method, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        return cls(float(d["value"]), float(d["lo"]), float(d["hi"]), str(d["method"]), int(d["n"]))


def fmt(value, interval: dict | None = None, *, digits: int = 3, bound_digits: int = 2) -> str:
    """A value with its interval as every table prints it; "—" when nothing was measured.

    Example:
        >>> fmt(0.95, {"lo": 0.7639, "hi": 0.9911}), fmt(0.5), fmt(None)
        ('0.950 [0.76, 0.99]', '0.500', '—')
        >>> fmt(0.999, {"lo": 0.997, "hi": 1.0})
        '0.999 [0.99, 1.00]'
    """
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    if interval:
        scale = 10 ** bound_digits
        lo, hi = round(interval["lo"], bound_digits), round(interval["hi"], bound_digits)
        # a bound rounded past the value it bounds would print an interval without its value in it
        # ("0.999 [1.00, 1.00]"): round that bound away from the value instead
        lo = min(lo, math.floor(value * scale) / scale)
        hi = max(hi, math.ceil(value * scale) / scale)
        text += f" [{lo:.{bound_digits}f}, {hi:.{bound_digits}f}]"
    return text


def fmt_paired(result: dict) -> str:
    """One metric of `compare_paired` as the paired tables print it: the difference [95%
    interval], Holm-adjusted p, and * where significant; "—" when nothing was paired.

    Example:
        >>> fmt_paired({"pvalue": 0.01, "p_holm": 0.02, "significant": True,
        ...             "diff": {"value": -0.5, "lo": -0.7, "hi": -0.3}})
        '-0.500 [-0.70, -0.30] p=0.02 *'
    """
    if result.get("pvalue") is None:
        return "—"
    d = result["diff"]
    return (f"{d['value']:+.3f} [{d['lo']:+.2f}, {d['hi']:+.2f}] p={result['p_holm']:.3g}"
            + (" *" if result["significant"] else ""))


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _binary(values: list[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def wilson(successes: int, n: int, *, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion.

    Example:
        >>> str(wilson(19, 20))
        '0.950 [0.76, 0.99]'
    """
    from statsmodels.stats.proportion import proportion_confint
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    lo, hi = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    # The formula's bounds at 0 of n and n of n are 0 and 1 up to rounding (2.8e-17): make them
    # exact, so that an interval always holds its own estimate.
    lo = 0.0 if successes == 0 else max(0.0, float(lo))
    hi = 1.0 if successes == n else min(1.0, float(hi))
    return Interval(successes / n, lo, hi, "wilson", n)


def bootstrap_mean(values, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = SEED) -> Interval:
    """Percentile-bootstrap interval of the mean over the given units (requests).

    Example:
        >>> iv = bootstrap_mean([0.5, 0.75, 1.0, 0.25])
        >>> iv.value, iv.lo <= iv.value <= iv.hi, iv.method
        (0.625, True, 'bootstrap')
    """
    import numpy as np
    from scipy.stats import bootstrap
    vals = np.asarray(_clean(values), dtype=float)  # (n,)
    if vals.size == 0:
        raise ValueError("no values to bootstrap")
    m = float(vals.mean())
    if vals.size == 1 or np.all(vals == vals[0]):
        return Interval(m, m, m, "bootstrap", int(vals.size))  # every resample has this mean
    res = bootstrap((vals,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=True)
    return Interval(m, float(res.confidence_interval.low), float(res.confidence_interval.high), "bootstrap",
                    int(vals.size))


def bootstrap_ratio(numerators, denominators, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                    seed: int = SEED) -> Interval:
    """Percentile-bootstrap interval of sum(numerators) / sum(denominators), each unit's pair
    resampled together: a held-out text's summed NLL over its token count (the NLL per token a
    perplexity exponentiates), or an item's exact match after an edit over before (a share of
    before on the same items).

    Example:
        >>> iv = bootstrap_ratio([1, 1, 0, 1], [1, 1, 1, 1])
        >>> iv.value, iv.lo <= iv.value <= iv.hi
        (0.75, True)
    """
    import numpy as np
    from scipy.stats import bootstrap
    num = np.asarray(numerators, dtype=float)  # (n,)
    den = np.asarray(denominators, dtype=float)  # (n,)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(f"need two equally long non-empty lists, got {num.shape} and {den.shape}")
    if den.sum() == 0:
        raise ValueError("the denominators sum to 0: no ratio to estimate")
    value = float(num.sum() / den.sum())
    if num.size == 1 or np.allclose(num * den.sum(), den * num.sum()):
        return Interval(value, value, value, "bootstrap", int(num.size))  # every resample has this ratio

    def ratio(a, b, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):  # a resample may draw only zero denominators
            return a.sum(axis=axis) / b.sum(axis=axis)

    res = bootstrap((num, den), ratio, paired=True, confidence_level=confidence, n_resamples=resamples,
                    method="percentile", rng=np.random.default_rng(seed), vectorized=True)
    return Interval(value, float(res.confidence_interval.low), float(res.confidence_interval.high), "bootstrap",
                    int(num.size))


def interval(values, *, confidence: float = CONFIDENCE) -> Interval | None:
    """The interval of a mean over requests, by the module's rule (Wilson if all 0/1, else
    bootstrap); None when nothing was measured.

    Example:
        >>> interval([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]).method, round(interval([1] * 10).lo, 3)
        ('wilson', 0.722)
    """
    vals = _clean(values)
    if not vals:
        return None
    if _binary(vals):
        return wilson(int(sum(vals)), len(vals), confidence=confidence)
    return bootstrap_mean(vals, confidence=confidence)


def spread(values) -> dict:
    """Median and spread of repeated measurements (timings): median, quartiles, min, max, count.

    Example:
        >>> spread([1.0, 2.0, 3.0, 10.0])["median"]
        2.5
    """
    vals = sorted(_clean(values))
    if not vals:
        raise ValueError("no measurements")
    q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
    return {"median": statistics.median(vals), "q1": q[0], "q3": q[2], "min": vals[0], "max": vals[-1],
            "n": len(vals)}


def mcnemar_exact(a, b) -> dict:
    """McNemar's exact test on paired 0/1 outcomes (statsmodels): `a_only` requests where only
    `a` succeeded, `b_only` where only `b` did, and the two-sided p-value.

    Example:
        >>> mcnemar_exact([1, 1, 1, 1, 0], [0, 0, 0, 0, 0])["pvalue"]  # 4 discordant, all one way
        0.125
    """
    from statsmodels.stats.contingency_tables import mcnemar
    a, b = _paired(a, b)
    a_only = sum(1 for x, y in zip(a, b) if x == 1.0 and y == 0.0)
    b_only = sum(1 for x, y in zip(a, b) if x == 0.0 and y == 1.0)
    both = sum(1 for x, y in zip(a, b) if x == 1.0 and y == 1.0)
    neither = len(a) - a_only - b_only - both
    p = 1.0 if a_only + b_only == 0 else float(mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
    return {"test": "mcnemar", "a_only": a_only, "b_only": b_only, "pvalue": p}


def wilcoxon_paired(a, b) -> dict:
    """Wilcoxon's signed-rank test on paired scores (scipy); p = 1 when every pair is equal.

    Example:
        >>> round(wilcoxon_paired([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [0.0] * 6)["pvalue"], 5)
        0.03125
    """
    from scipy.stats import wilcoxon
    a, b = _paired(a, b)
    if all(x == y for x, y in zip(a, b)):
        return {"test": "wilcoxon", "pvalue": 1.0}
    return {"test": "wilcoxon", "pvalue": float(wilcoxon(a, b).pvalue)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (statsmodels), in the order given.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    from statsmodels.stats.multitest import multipletests
    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, method="holm")[1]]


def _paired(a, b) -> tuple[list[float], list[float]]:
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    keep = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not keep:
        raise ValueError("no pair has both outcomes measured")
    return [x for x, _ in keep], [y for _, y in keep]


def compare_paired(rows_a: list[dict], rows_b: list[dict], metrics: list[str], *, alpha: float = 0.05) -> list[dict]:
    """B against A on the same requests, matched by each row's "id": per metric the means, the
    mean difference B − A with a paired-bootstrap interval, the test (McNemar for 0/1 outcomes,
    else Wilcoxon), its p-value, Holm's adjusted p across `metrics`, and whether that is < alpha.

    Example:
        >>> a = [{"id": i, "m": 1.0} for i in range(10)]
        >>> b = [{"id": i, "m": 0.0} for i in range(10)]
        >>> r = compare_paired(a, b, ["m"])[0]
        >>> r["diff"]["value"], r["test"], r["significant"]
        (-1.0, 'mcnemar', True)
    """
    by_id = {r["id"]: r for r in rows_b}
    missing = [r["id"] for r in rows_a if r["id"] not in by_id]
    if missing or len(rows_a) != len(rows_b):
        raise ValueError(f"the two runs must score the same requests; {len(missing)} of A's are not in B "
                         f"(first: {missing[:3]}), {len(rows_a)} vs {len(rows_b)} rows")
    out = []
    for m in metrics:
        pairs = [(r.get(m), by_id[r["id"]].get(m)) for r in rows_a]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if not pairs:
            out.append({"metric": m, "n": 0, "pvalue": None})
            continue
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
        test = mcnemar_exact(a, b) if _binary(a) and _binary(b) else wilcoxon_paired(a, b)
        diff = bootstrap_mean([y - x for x, y in pairs])
        out.append({"metric": m, "n": len(pairs), "a": statistics.fmean(a), "b": statistics.fmean(b),
                    "diff": diff.as_dict(), **test})
    tested = [r for r in out if r["pvalue"] is not None]
    for r, p in zip(tested, holm([r["pvalue"] for r in tested])):
        r["p_holm"] = p
        r["significant"] = p < alpha
    return out
