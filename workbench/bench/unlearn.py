"""The unlearning benchmark: forget editors on the world's canaries and forget-split people.

For each (editor, forget set) the model is measured, edited once with the whole forget set (the
retain set attached, for editors that use one) through a session in a scratch workspace, as a
user would, measured again, and the edit undone (exactly) before the next editor:

- strict / loose recitation and extraction strength of each forget suffix from its prefix,
  canary exposure (log2 rank among same-shaped alternative secrets; canaries only);
- forget-set fact recall: greedy exact match of the suffix after the prefix, and (facts)
  after each of its paraphrased prefixes;
- held-out perplexity on the world's held-out clean texts, and nDCG@10 of the next-token
  ranking on them against the unedited model;
- retain fact recall (greedy exact) on retain-split people the editor never saw: the retain
  file is split by person, the first half goes to the editor, the second half is scored; the
  editor's retain set also holds trained items of every skill (`retain_skills.jsonl`), so a
  method that protects its retain set is told what "everything else" is;
- utility: greedy exact accuracy on each version-2 general suite (held-out reading, rules,
  arithmetic) and on the memorized items no forget set names (`retain_memorized.jsonl`); the
  table shows the worst suite's accuracy as a share of before;
- strict recitation per training-repetition count (`by_repeats`, for requests whose meta
  says how often the string was trained on: canaries and quotes);
- seconds the edit took (K-FAC factor collection included when its cache was cold); with
  `repeats`, the median and quartiles over that many applications of the same edit;
- with `baseline`, every row against the baseline's (an editor, the retrain oracle, or each
  row's own "before") paired by request and item (`paired_table`);
- with `relearn`, relearning; with `sustain`, utility as k forget requests accumulate
  (`workbench.bench.robustness`).

A capability set (`arithmetic`: trained arithmetic items, the selective-pruning paper's setting)
is forgotten against the other skills (its own suite's items are left out of the retain set);
its success is the held-out arithmetic utility falling while the others stay.

Each string set also gets a row for the retrain oracle (`--oracle`, by default the shipped
`world-llama-oracle` when the default model is benched): the same measures on a model trained
identically but never on the forget sets, the "after" an exact unlearning method would reach.
With an oracle, every row also gets (`workbench.eval.oracle`): forget quality (TOFU: KS-test
p-value of the truth ratios against the oracle's), the mean truth ratio, membership-inference
AUCs (loss, zlib, Min-K%) of the forget set against its never-seen holdout twin, and MUSE's
PrivLeak against the oracle's AUC.

    workbench bench unlearn --editors kfac,prune,ga,npo --sets canaries,people
"""
from __future__ import annotations


from workbench.core.errors import InputError

from workbench.core.paths import (BENCHMARKS, CAPABILITY_SETS, FORGET_SETS, HOLDOUT_SETS, ORACLE_MODEL, RETAIN,
                                  RETAIN_SKILLS, WORLD)
SETS = {**FORGET_SETS, **CAPABILITY_SETS}
ORACLE_ROW = "retrain oracle"
UTILITY_SETS = {"reading": BENCHMARKS / "skills_reading.jsonl", "rules": BENCHMARKS / "skills_rules.jsonl",
                "arithmetic": BENCHMARKS / "skills_arithmetic.jsonl",
                "memorized_kept": BENCHMARKS / "retain_memorized.jsonl"}
# (metric key, column title) of the table; each cell shows before → after.
COLUMNS = (("strict_recitation", "strict"), ("loose_recitation", "loose"), ("extraction_strength", "extraction"),
           ("exposure", "exposure"), ("forget_recall", "forget recall"),
           ("forget_recall_paraphrased", "paraphrased recall"), ("perplexity", "held-out ppl"),
           ("retain_recall", "retain recall"), ("forget_quality", "forget quality"), ("privleak", "PrivLeak"))


def split_retain(probes: list, world) -> tuple[list, list]:
    """(given to the editor, scored): the retain probes of the first / second half of the
    retain-split people, matched by name; probes naming no retain person are scored only."""
    people = [world.by_id[pid] for pid in world.splits["retain"]]
    first = {p["name"] for p in people[: len(people) // 2]}
    # Longest names first, so a name that contains another is matched as itself.
    names = sorted((p["name"] for p in people), key=len, reverse=True)
    given, scored = [], []
    for pr in probes:
        owner = next((n for n in names if n in pr.prompt), None)
        (given if owner in first else scored).append(pr)
    return given, scored


FORGET_METRICS = ("strict_recitation", "loose_recitation", "extraction_strength", "exposure", "forget_recall",
                  "forget_recall_paraphrased")


def measure(model, tok, base, forgets: list, heldout: list[str], retain: list, *, exposure_samples: int,
            holdouts: list | None = None, oracle: dict | None = None, suites: dict | None = None,
            stats: dict | None = None) -> dict:
    """Every metric of the module docstring for `model` (`base`: the unedited model, for nDCG;
    `oracle`: the oracle's `oracle_stats` on `forgets` against `holdouts`, else no oracle columns;
    `suites`: name -> probes, each scored greedy exact under "utility"; `stats`: this model's
    `oracle_stats` when already computed, e.g. the oracle's own). Besides the means: their 95%
    intervals, each forget request's scores (`per_request`) and each retain / utility item's
    exact match (`per_item`, a string of 0s and 1s), so that two rows on the same set pair up."""
    from workbench.eval.evaluate import evaluate_forgets, next_token_ndcg, perplexity_interval
    from workbench.eval.oracle import compare, oracle_stats
    from workbench.eval.requests import Probe
    from workbench.eval.stats import bootstrap_ratio, interval
    from workbench.world.measure import fact_accuracy
    ev = evaluate_forgets(model, tok, forgets, exposure_samples=exposure_samples)
    f = ev["mean"]
    by_repeats: dict[str, list[float]] = {}
    for r, row in zip(forgets, ev["per_request"]):
        if isinstance(r.meta.get("repeats"), int):
            by_repeats.setdefault(str(r.meta["repeats"]), []).append(row["strict_recitation"])
    against = {"forget_quality": None, "privleak": None} if oracle is None else \
        compare(stats if stats is not None else oracle_stats(model, tok, forgets, holdouts), oracle)
    recall = fact_accuracy(model, tok, [Probe(r.prefix, r.suffix) for r in forgets], each=True)["each"]
    # a fact's paraphrased prefixes are scored together; the request is the resampling unit
    owners = [k for k, r in enumerate(forgets) if r.kind == "fact" for _ in r.paraphrased_prefixes]
    paraphrased = [Probe(p, r.suffix) for r in forgets if r.kind == "fact" for p in r.paraphrased_prefixes]
    hits = fact_accuracy(model, tok, paraphrased, each=True)["each"] if paraphrased else []
    para_hits, para_n = [0] * len(forgets), [0] * len(forgets)
    for k, h in zip(owners, hits):
        para_hits[k] += h
        para_n[k] += 1
    retain_each = fact_accuracy(model, tok, retain, each=True)["each"] if retain else None
    per_request = {"id": [r.id or f"#{k}" for k, r in enumerate(forgets)],
                   **{m: [None if row[m] is None else round(row[m], 6) for row in ev["per_request"]]
                      for m in ("strict_recitation", "loose_recitation", "extraction_strength", "exposure")},
                   "forget_recall": recall,
                   "forget_recall_paraphrased": [round(h / n, 6) if n else None for h, n in zip(para_hits, para_n)]}
    intervals = {k: v for k, v in ev["intervals"].items()
                 if k in ("strict_recitation", "loose_recitation", "extraction_strength", "exposure")}
    intervals["forget_recall"] = interval(recall).as_dict()
    if paraphrased:
        units = [k for k, n in enumerate(para_n) if n]
        intervals["forget_recall_paraphrased"] = bootstrap_ratio([para_hits[k] for k in units],
                                                                 [para_n[k] for k in units]).as_dict()
    if retain_each:
        intervals["retain_recall"] = interval(retain_each).as_dict()
    ppl = perplexity_interval(model, tok, heldout)
    intervals["perplexity"] = ppl.as_dict()
    utility, utility_each = _utility(model, tok, suites or {})
    for name, bits in utility_each.items():
        intervals[f"utility.{name}"] = interval(bits).as_dict()
    per_item = {**({"retain_recall": _bits(retain_each)} if retain_each else {}),
                **{f"utility.{name}": _bits(v) for name, v in utility_each.items()}}
    return {**against, "strict_recitation": f["strict_recitation"], "loose_recitation": f["loose_recitation"],
            "extraction_strength": f["extraction_strength"], "exposure": f.get("exposure"),
            "forget_recall": sum(recall) / len(recall),
            "forget_recall_paraphrased": sum(hits) / len(hits) if hits else None,
            "retain_recall": sum(retain_each) / len(retain_each) if retain_each else None,
            "intervals": intervals, "per_request": per_request, "per_item": per_item, "perplexity": ppl.value,
            "ndcg10": 1.0 if model is base else next_token_ndcg(model, base, tok, heldout),
            "by_repeats": {k: sum(v) / len(v) for k, v in sorted(by_repeats.items(), key=lambda kv: int(kv[0]))},
            **utility}


def _bits(values: list[int]) -> str:
    """0/1 outcomes as one compact string ("0110…"): thousands of items per row stay one JSON line."""
    return "".join("1" if v else "0" for v in values)


def _unbits(text: str) -> list[int]:
    return [1 if c == "1" else 0 for c in text]


def _utility(model, tok, suites: dict) -> tuple[dict, dict]:
    """Greedy exact accuracy of each suite and, for a suite of several kinds (rules: boolean,
    compare, copy, reverse), of each kind: a capability removal can take one kind with it; and
    each suite's items' exact matches."""
    from workbench.world.measure import fact_accuracy
    utility, by_group, each = {}, {}, {}
    for name, probes in suites.items():
        acc = fact_accuracy(model, tok, probes, by_group=True, each=True)
        utility[name] = acc["exact"]
        each[name] = acc["each"]
        if len(acc["by_group"]) > 1:
            by_group[name] = acc["by_group"]
    return {"utility": utility, "utility_by_group": by_group}, each


def run_one(wb, editor: str, set_name: str, forgets: list, *, base, heldout, retain_given, retain_scored,
            before: dict, params: dict | None = None, exposure_samples: int = 100, seed: int = 0,
            holdouts: list | None = None, oracle: dict | None = None, suites: dict | None = None,
            relearn: bool = False, sustain: bool = False, repeats: int = 1) -> dict:
    """Apply `editor` to `forgets` through the session `wb` (at base), measure, undo; the row
    holds before and after (and with `relearn` / `sustain`, those checks). With `repeats` > 1
    the same edit is applied and undone that many times in all, for the spread of its seconds."""
    from workbench.bench import robustness
    from workbench.editing.registry import get_editor
    from workbench.eval.requests import with_retain
    from workbench.eval.stats import spread
    if not get_editor(editor).capabilities.forget:
        return {"editor": editor, "set": set_name, "skipped": "not a forget editor"}
    requests = with_retain(forgets, retain_given)
    event = wb.edit(editor, requests, params or {}, seed=seed)
    extra = {}
    try:
        after = measure(wb.model, wb.tok, base, forgets, heldout, retain_scored, exposure_samples=exposure_samples,
                        holdouts=holdouts, oracle=oracle, suites=suites)
        if relearn:
            extra["relearn"] = robustness.relearn(wb.model, wb.tok, forgets, seed=seed)
    finally:
        wb.undo(note="bench: back to base for the next editor")
    times = [event.duration_s]
    for _ in range(repeats - 1):  # timing only: the same edit, same seed, undone at once
        times.append(wb.edit(editor, requests, params or {}, seed=seed).duration_s)
        wb.undo(note="bench: timing repeat undone")
    extra["edit_s"] = spread(times)
    if sustain:
        extra["sustain"] = robustness.sustain(wb, editor, forgets, retain_given=retain_given, suites=suites or {},
                                              params=params, seed=seed)
    return {"editor": editor, "set": set_name, "n": len(forgets), "before": before, "after": after,
            "seconds": event.duration_s, "hparams": event.hparams, **extra}


def default_oracle(model_dir):
    """The shipped oracle when the shipped default model is benched and the oracle is there, else None."""
    from workbench.core.model import model_path
    from workbench.core.paths import DEFAULT_MODEL
    if model_path(model_dir).resolve() == DEFAULT_MODEL.resolve() and ORACLE_MODEL.is_dir():
        return ORACLE_MODEL
    return None


def load_oracle(oracle_dir, tok):
    """The oracle model; refused unless it shares the benched model's tokenizer (nDCG and every
    score compare token by token)."""
    from workbench.core.model import load_model, model_path
    oracle, otok = load_model(oracle_dir)
    if otok.get_vocab() != tok.get_vocab():
        raise InputError(f"{model_path(oracle_dir)} has a different tokenizer from the benched model; "
                         "a retrain oracle shares its model's tokenizer", field="--oracle")
    return oracle


def run(editors: list[str], sets: list[str], *, model_dir=None, params: dict[str, dict] | None = None,
        limit: int | None = None, heldout_limit: int | None = None, exposure_samples: int = 100,
        oracle_dir="default", relearn: bool = False, sustain: bool = False, progress: bool = True,
        repeats: int = 1) -> list[dict]:
    """Every (editor, forget set) pair; `limit` keeps the first N requests of each set,
    `heldout_limit` the first N held-out texts (for perplexity and nDCG) and the first N items
    of each utility suite. `oracle_dir`: a retrain
    oracle's folder or shipped name, measured as one more row per set ("default": the shipped
    oracle when the default model is benched; None: no oracle row). `relearn`, `sustain`: the
    robustness checks (`workbench.bench.robustness`) for every row (relearning for the oracle too).
    `repeats`: times each edit is applied (and undone) for the spread of its seconds; the first
    application is the one measured, and K-FAC's first includes its factor collection when the
    cache was cold."""
    from workbench.bench import robustness
    from workbench.bench.scratch import scratch_session
    from workbench.core.model import load_model, model_path
    from workbench.core.progress import progress_bar
    from workbench.editing.registry import get_editor
    from workbench.eval.oracle import oracle_stats
    from workbench.eval.requests import ForgetRequest, load_probes, load_requests
    from workbench.world import World
    from workbench.world.benchmarks import in_turn
    for name in editors:
        get_editor(name)  # unknown names fail before any work
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        raise InputError(f"unknown forget set(s) {unknown or sets}; choose from {', '.join(SETS)}", field="--sets")
    for flag, value in (("--limit", limit), ("--heldout", heldout_limit), ("--repeats", repeats)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{flag} must be a positive integer, got {value}", field=flag)
    world = World.load(WORLD)
    heldout = [t["text"] for t in world.heldout_text][:heldout_limit]
    retain_given, retain_scored = split_retain(load_probes(RETAIN), world)
    # a version-2 world's general skills and the memorized items no forget set names
    # a limit takes each suite's kinds in turn: the files store them kind by kind
    suites = {name: in_turn(load_probes(path), lambda p: p.group)[:heldout_limit]
              for name, path in UTILITY_SETS.items() if path.is_file()}
    if oracle_dir == "default":
        oracle_dir = default_oracle(model_dir)
    elif oracle_dir is not None and not model_path(oracle_dir).is_dir():
        raise InputError(f"no model folder at {model_path(oracle_dir)}", field="--oracle")
    base, tok = load_model(model_dir)  # the unedited reference (nDCG, "before"); edits go to the session's copy
    oracle = load_oracle(oracle_dir, tok) if oracle_dir is not None else None
    rows = []
    with scratch_session(model_dir) as wb, \
            progress_bar("unlearning", len(editors) * len(sets), enabled=progress) as advance:
        for set_name in sets:
            forgets = [r for r in load_requests(SETS[set_name]) if isinstance(r, ForgetRequest)][:limit]
            capability = set_name in CAPABILITY_SETS  # no holdout twin, and the oracle learnt it too
            skills = load_probes(RETAIN_SKILLS) if RETAIN_SKILLS.is_file() else []
            given = retain_given + [p for p in skills if not (capability and p.group == set_name)]
            holdouts, against = None, None
            if oracle is not None and not capability:
                holdouts = [r for r in load_requests(HOLDOUT_SETS[set_name]) if isinstance(r, ForgetRequest)][:limit]
                against = oracle_stats(oracle, tok, forgets, holdouts)
            scores = dict(heldout=heldout, exposure_samples=exposure_samples, holdouts=holdouts, oracle=against,
                          suites=suites)
            before = measure(base, tok, base, forgets, retain=retain_scored, **scores)
            for name in editors:
                rows.append(run_one(wb, name, set_name, forgets, base=base, retain_given=given,
                                    retain_scored=retain_scored, before=before, params=(params or {}).get(name),
                                    relearn=relearn, sustain=sustain, repeats=repeats, **scores))
                advance(1)
            if against is not None:
                ref = {"editor": ORACLE_ROW, "set": set_name, "n": len(forgets), "before": before,
                       "after": measure(oracle, tok, base, forgets, retain=retain_scored, stats=against, **scores),
                       "seconds": None, "oracle": model_path(oracle_dir).name}
                if relearn:
                    ref["relearn"] = robustness.relearn(oracle, tok, forgets)
                for r in rows:
                    if r["set"] == set_name and "after" in r:
                        r["utility_vs_oracle"] = utility_shares(r, ref["after"])
                rows.append(ref)
    return rows


def load_rows(path) -> list[dict]:
    """The rows a `workbench bench unlearn --json` run wrote; anything else is refused with the
    file and the first bad row named."""
    from pathlib import Path
    from workbench.bench.rows import read_rows
    p = Path(path)
    rows = read_rows(p, "unlearn", ("editor", "set"))
    for i, r in enumerate(rows):
        if "skipped" not in r and not (isinstance(r.get("before"), dict) and isinstance(r.get("after"), dict)):
            raise InputError(f"row {i}: expected before and after measurements", file=p, field="after")
        for side in ("before", "after"):
            if isinstance(r.get(side), dict):
                _check_units(r[side], f"row {i}", p, side)
    return rows


def _check_units(m: dict, where: str, path, side: str) -> None:
    """The optional per-request and per-item fields of a measurement, each refused with its name
    when malformed (a hand-edited file must not pair the wrong requests)."""
    per, items = m.get("per_request"), m.get("per_item")
    if per is not None:
        ids = per.get("id") if isinstance(per, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{where}: expected a list of request ids", file=path, field=f"{side}.per_request.id")
        for k in FORGET_METRICS:
            vals = per.get(k)
            if vals is not None and (not isinstance(vals, list) or len(vals) != len(ids) or not all(
                    v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in vals)):
                raise InputError(f"{where}: expected {len(ids)} numbers or nulls", file=path,
                                 field=f"{side}.per_request.{k}")
    if items is not None:
        for k, bits in (items.items() if isinstance(items, dict) else [("", None)]):
            if not isinstance(bits, str) or set(bits) - {"0", "1"}:
                raise InputError(f"{where}: expected a string of 0s and 1s", file=path, field=f"{side}.per_item.{k}")


def _cell(key: str, before: dict, after: dict) -> str:
    """before → after, each with its 95% interval when the row carries one."""
    if after.get(key) is None:
        return "—"
    # p-values span orders of magnitude; PrivLeak is a percentage
    fmt = {"forget_quality": ".2g", "privleak": ".1f"}.get(key, ".3f")

    def one(m: dict) -> str:
        if m.get(key) is None:
            return "—"
        iv = (m.get("intervals") or {}).get(key)
        return format(m[key], fmt) + (f" [{iv['lo']:.2f}, {iv['hi']:.2f}]" if iv else "")

    return f"{one(before)} → {one(after)}"


def utility_shares(row: dict, ref: dict | None = None) -> dict:
    """Each utility suite's accuracy after the edit as a share of before (or of `ref`, e.g. the
    oracle's measurements)."""
    before, after = (ref if ref is not None else row["before"]).get("utility", {}), row["after"].get("utility", {})
    return {k: after[k] / before[k] for k in after if before.get(k)}


def _worst_suite(row: dict) -> str:
    """The suite whose accuracy fell most, as a share of before, with a paired bootstrap interval
    over its items when the row carries them."""
    from workbench.eval.stats import bootstrap_ratio
    shares = utility_shares(row)
    if not shares:
        return "—"
    name = min(shares, key=shares.get)
    key = f"utility.{name}"
    b, a = (row["before"].get("per_item") or {}).get(key), (row["after"].get("per_item") or {}).get(key)
    bounds = ""
    if a and b and len(a) == len(b):
        iv = bootstrap_ratio(_unbits(a), _unbits(b))
        bounds = f" [{iv.lo:.2f}, {iv.hi:.2f}]"
    return f"{shares[name]:.2f}{bounds} ({name})"


def _seconds(row: dict) -> str:
    """Median seconds of the edit over its repeats [quartiles when repeated]."""
    if row["seconds"] is None:
        return "—"
    s = row.get("edit_s")
    if not s or s["n"] < 2:
        return f"{row['seconds']:.1f}"
    return f"{s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}]"


def _relearned(row: dict) -> str:
    rl = row.get("relearn")
    if not rl or rl["rest"] is None:
        return "—"
    return f"{rl['rest']['strict_recitation']:.3f}"


def _sustained(row: dict) -> str:
    points = row.get("sustain")
    if not points:
        return "—"
    last = points[-1]["utility"]
    shares = [last[k] / row["before"]["utility"][k] for k in last if row["before"]["utility"].get(k)]
    return f"{min(shares):.2f} (k={points[-1]['k']})" if shares else "—"


def table(rows: list[dict]) -> str:
    """A Markdown table (the README's): each cell is before → after, each with its 95% interval
    (Wilson for exact-match shares, else a bootstrap over the requests; perplexity: over the
    held-out texts); the worst suite's share with a paired bootstrap over its items; seconds as
    the median [quartiles] over `repeats` edits. Rows with robustness checks
    add a column each: strict recitation of the requests not relearned after relearning on the
    others, and the worst utility share after the last of k sequential forget requests."""
    extra = [(title, fn) for key, title, fn in (("relearn", "relearned: rest strict", _relearned),
                                                 ("sustain", "sustained: worst utility", _sustained))
             if any(key in r for r in rows)]
    head = ("| editor | set | " + " | ".join(t for _, t in COLUMNS) + " | utility (worst suite) | nDCG@10 | seconds |"
            + "".join(f" {t} |" for t, _ in extra))
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5 + len(extra))]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['editor']} | {r['set']} | {r['skipped']} |" + " |" * (len(COLUMNS) + 2 + len(extra)))
            continue
        cells = " | ".join(_cell(k, r["before"], r["after"]) for k, _ in COLUMNS)
        seconds = _seconds(r)
        more = "".join(f" {fn(r)} |" for _, fn in extra)
        lines.append(f"| {r['editor']} | {r['set']} | {cells} | {_worst_suite(r)} | {r['after']['ndcg10']:.3f} | "
                     f"{seconds} |{more}")
    return "\n".join(lines)


PAIRED_BASELINES = ("before", ORACLE_ROW)


def paired_units(m: dict) -> list[dict]:
    """One measurement's units for `workbench.eval.stats.compare_paired`: each forget request
    with its forget metrics, each retain probe and each utility item with its exact match."""
    per = m.get("per_request")
    if not isinstance(per, dict):
        raise InputError("a row without per-request scores (written before they were recorded); re-run it with "
                         "this version of `workbench bench unlearn`", field="per_request")
    units = [{"id": f"forget:{i}", **{k: per[k][n] for k in FORGET_METRICS if k in per}}
             for n, i in enumerate(per["id"])]
    for key, bits in (m.get("per_item") or {}).items():
        units += [{"id": f"{key}:{n}", key: v} for n, v in enumerate(_unbits(bits))]
    return units


def paired(base: dict, other: dict, *, alpha: float = 0.05) -> list[dict]:
    """Measurement `other` against `base` on the same forget set: per metric (the forget metrics,
    retain recall, each utility suite) the paired difference with its interval, McNemar or
    Wilcoxon, Holm-corrected across the metrics."""
    from workbench.eval.stats import compare_paired
    a, b = paired_units(base), paired_units(other)
    metrics = [k for k in FORGET_METRICS if k in (base.get("per_request") or {})] + \
        sorted(set(base.get("per_item") or {}) & set(other.get("per_item") or {}))
    try:
        return compare_paired(a, b, metrics, alpha=alpha)
    except ValueError as e:
        raise InputError(str(e), field="per_request") from None


def paired_table(rows: list[dict], baseline: str, *, alpha: float = 0.05) -> str:
    """A Markdown table of every row against `baseline` on the same set: an editor's name, the
    retrain oracle ("oracle") — is the unlearned model told apart from one never trained on the
    set? — or "before" (each row against the unedited model: which changes are beyond noise).
    Each cell: the difference (row − baseline) [95% interval], Holm-adjusted p, * where < alpha."""
    from workbench.eval.stats import fmt_paired
    baseline = ORACLE_ROW if baseline == "oracle" else baseline
    scored = [r for r in rows if "skipped" not in r]

    def label(r):
        return r.get("label", r["editor"])

    if baseline == "before":
        base = {r["set"]: r["before"] for r in scored}
    else:
        base = {r["set"]: r["after"] for r in scored if label(r) == baseline}
        if not base:
            raise InputError(f"no scored rows of {baseline!r} among {sorted({label(r) for r in rows})} "
                             "(or 'before')", field="--baseline")
    out = []
    for set_name in dict.fromkeys(r["set"] for r in scored):
        if set_name not in base:
            continue
        results = [(label(r), paired(base[set_name], r["after"], alpha=alpha)) for r in scored
                   if r["set"] == set_name and label(r) != baseline]
        if not results:
            continue
        metrics = [c["metric"] for c in results[0][1]]
        out += [f"| {set_name}: vs {baseline} | " + " | ".join(metrics) + " |", "|" + "---|" * (1 + len(metrics))]
        out += [f"| {name} | " + " | ".join(fmt_paired(c) for c in cells) + " |" for name, cells in results]
        out.append("")
    return "\n".join(out).rstrip("\n")


def load_runs(paths) -> list[dict]:
    """The rows of one or more `--json` files for paired comparison; with several files each
    row's label names its file, so the same editor in two runs stays apart."""
    from pathlib import Path
    paths = [Path(p) for p in paths]
    return [{**r, "label": r["editor"] if len(paths) == 1 else f"{r['editor']} ({p.stem})"}
            for p in paths for r in load_rows(p)]
