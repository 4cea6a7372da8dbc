"""Admission gates: thresholds an edit's after-metrics must meet to be kept.

`--gate reliability>=0.9,locality>=0.98` — an edit that misses any gate is reverted and
recorded as rejected with its metrics (the admission thresholds of DMM Gov).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from workbench.core.errors import InputError

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_@]*)\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


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


def check_gates(gates: list[Gate], metrics: dict) -> list[str]:
    """The failures, one sentence each; [] = admitted."""
    return [msg for g in gates if (msg := g.check(metrics)) is not None]
