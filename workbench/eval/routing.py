"""Where a routing edit sends each input: the adapter (or memory) a row reads, or none.

An edit that routes inputs (adapter retrieval today) puts a module in the model that offers
`in_force()` and `tracing()` — a context in which every forward call appends its rows' (first
choice, final choice), each a name or None. This module finds it without importing any editor.

Example:
    >>> routes(model, tok, ["Ada lives in"], ["Rome"])   # doctest: +SKIP
    [('lora0', 'lora0')]
"""
from __future__ import annotations

import torch

from workbench.core.errors import InputError
from workbench.eval.scoring import answer_rows


def router_in_force(model):
    """The routing module in force in `model`, or None."""
    for m in model.modules():
        if callable(getattr(m, "tracing", None)) and callable(getattr(m, "in_force", None)) and m.in_force():
            return m
    return None


@torch.no_grad()
def routes(model, tok, prompts: list[str], answers: list[str], batch_size: int = 32) -> list[tuple]:
    """(first choice, final choice) of each row (prompt + answer, tokenized as the evaluator scores
    it), in input order; each choice a name or None."""
    router = router_in_force(model)
    if router is None:
        raise InputError("no edit that routes inputs (such as lora-retrieve) is in force", field="routing")
    device = next(model.parameters()).device
    out: list[tuple] = []
    with router.tracing() as trace:
        for x, mask in answer_rows(tok, prompts, answers, batch_size):
            n = len(trace)
            model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False)
            out += trace[n]
    return out


KINDS = ("edits", "rephrasings", "locality")


def probes(requests, holders: list) -> dict[str, tuple[list, list, list]]:
    """{kind: (prompts, answers, where each should go)} of edit requests: each edit prompt and its
    rephrasings should reach `holders[i]` (the adapter holding request i) with the new target; each
    locality probe, with its own answer, should reach none.

    Example:
        >>> from workbench.eval.requests import EditRequest
        >>> probes([EditRequest("Ada lives in", "Rome", locality=[("Bo lives in", "Oslo")])], ["a"])["locality"]
        (['Bo lives in'], ['Oslo'], [None])
    """
    return {"edits": ([r.prompt for r in requests], [r.target_new for r in requests], list(holders)),
            "rephrasings": ([p for r in requests for p in r.rephrase_prompts],
                            [r.target_new for r in requests for _ in r.rephrase_prompts],
                            [h for r, h in zip(requests, holders) for _ in r.rephrase_prompts]),
            "locality": ([q.prompt for r in requests for q in r.locality],
                         [q.answer for r in requests for q in r.locality], [None for r in requests for _ in r.locality])}


def all_probes(requests, holders: list) -> tuple[list, list, list]:
    """`probes` of every kind in one list each: (prompts, answers, where each should go)."""
    kinds = probes(requests, holders)
    return tuple([x for k in KINDS for x in kinds[k][i]] for i in range(3))


def confusion(got: list, want: list, labels: list[str]) -> list[list[int]]:
    """Counts[i][j]: rows whose holder is labels[i] that read labels[j] (None counts as "none").

    Example:
        >>> confusion(["a", None, "a"], ["a", "b", None], ["a", "b", "none"])
        [[1, 0, 0], [0, 0, 1], [1, 0, 0]]
    """
    counts = [[0] * len(labels) for _ in labels]
    for g, w in zip(got, want):
        counts[labels.index(w or "none")][labels.index(g or "none")] += 1
    return counts
