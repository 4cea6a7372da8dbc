"""Admission gates: thresholds an edit's after-metrics must meet to be kept.

`--gate reliability>=0.9,locality>=0.98` — an edit that misses any gate is reverted and
recorded as rejected with its metrics (the admission thresholds of DMM Gov). A gate may name a
bound of a metric's 95% interval over the requests, `locality.lo>=0.95`, so that an edit is
admitted on evidence rather than on luck: with 10 requests all at 1.0 the lower bound is 0.72.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from workbench.core.errors import InputError

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_@]*(?:\.lo|\.hi)?)\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    """One threshold, e.g. Gate("locality", ">=", 0.98).

    Example:
        >>> Gate.parse_all("reliability>=0.9, locality>=0.98")
        [Gate(metric='reliability', op='>=', value=0.9), Gate(metric='locality', op='>=', value=0.98)]
    """
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Gate":
        m = _GATE.match(text)
        if not m:
            raise InputError(f"cannot read gate {text!r}; write METRIC>=VALUE (ops: >=, <=, >, <)", field="gate")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    @classmethod
    def parse_all(cls, text: str) -> list["Gate"]:
        return [cls.parse(part) for part in text.split(",") if part.strip()]

    def check(self, metrics: dict) -> str | None:
        """None if met, else a sentence saying why not."""
        if self.metric not in metrics:
            return f"{self.metric} is not a metric of this edit (known: {', '.join(sorted(metrics))})"
        got = metrics[self.metric]
        if got is None:
            return f"{self.metric} was not measured (no probes for it)"
        if not _OPS[self.op](got, self.value):
            return f"{self.metric} = {got:.4f}, gate {self.op} {self.value:g}"
        return None


    def outcome(self, metrics: dict) -> dict:
        """What the gate saw, for the record: the value measured, whether it passed and by what
        margin (positive = inside the gate, negative = short of it).

        Example:
            >>> Gate("locality.lo", ">=", 0.9).outcome({"locality.lo": 0.95})["margin"]
            0.05
        """
        got = metrics.get(self.metric)
        margin = None if got is None else round(got - self.value if self.op in (">=", ">") else self.value - got, 12)
        return {"gate": f"{self.metric}{self.op}{self.value:g}", "measured": got, "passed": self.check(metrics) is None,
                "margin": margin}


def gate_metrics(means: dict, intervals: dict | None = None) -> dict:
    """The values a gate can name: each mean, and `M.lo` / `M.hi` for each metric with an
    interval (`intervals`: metric -> {lo, hi, ...}).

    Example:
        >>> gate_metrics({"locality": 1.0}, {"locality": {"lo": 0.72, "hi": 1.0}})
        {'locality': 1.0, 'locality.lo': 0.72, 'locality.hi': 1.0}
    """
    out = dict(means)
    for m, iv in (intervals or {}).items():
        out[f"{m}.lo"], out[f"{m}.hi"] = iv["lo"], iv["hi"]
    return out


def check_gates(gates: list[Gate], metrics: dict) -> list[str]:
    """The failures, one sentence each; [] = admitted."""
    return [msg for g in gates if (msg := g.check(metrics)) is not None]
