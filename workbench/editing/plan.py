"""Plans: an ordered list of steps (edit, forget, merge, eval, gate, tag, export, bundle) run
in one process on one loaded model — `workbench run PLAN.toml`.

A plan is a TOML file:

    [plan]                          # optional; the command line's --model/--workspace win
    model = "world-llama"           # a model folder (relative to the plan) or shipped name
    workspace = "ws"                # relative to the plan file
    author = "alice"

    [[step]]
    action = "edit"                 # edit | forget | merge | eval | gate | tag | export | bundle
    editor = "memit"
    requests = "edits.jsonl"        # relative to the plan file
    start = 0                       # the requests used: [start, start + count)
    count = 50
    params = { layers = "1,2" }
    gate = "reliability>=0.9,locality.lo>=0.9"

    [[step]]
    action = "tag"
    name = "after-memit"

`load_plan` reads and checks every step — action, fields, request files, editors,
hyper-parameters, gates, tag names, output paths — before any model loads (`--dry-run` stops
there). `run_plan` executes the steps through one `Workbench`; a failing step stops the plan
with the workspace at the last committed edit. Each finished step is recorded in the ledger's
`plan_steps` under the plan's hash (the plan file and every file it reads), and every edit a
step records carries `context.plan` {hash, step, item}; running the same plan again skips
finished steps and, inside a one-request-at-a-time step, the requests already recorded.
"""
from __future__ import annotations

import hashlib
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.errors import InputError

ACTIONS = ("edit", "forget", "merge", "eval", "gate", "tag", "export", "bundle")
_EDIT_FIELDS = {"editor", "requests", "format", "start", "count", "params", "gate", "note", "seed", "one_by_one"}
FIELDS = {"edit": _EDIT_FIELDS, "forget": _EDIT_FIELDS, "merge": _EDIT_FIELDS,
          "eval": {"requests", "format", "start", "count", "out"},
          "gate": {"requests", "format", "start", "count", "gate"},
          "tag": {"name", "ref"}, "export": {"out"}, "bundle": {"out"}}
REQUIRED = {"edit": {"editor", "requests"}, "forget": {"editor", "requests"}, "merge": {"editor", "requests"},
            "eval": {"requests"}, "gate": {"requests", "gate"}, "tag": {"name"}, "export": {"out"},
            "bundle": {"out"}}
HEADER_FIELDS = {"model", "workspace", "author"}


@dataclass
class Step:
    """One checked step: its action, fields (paths resolved), and the requests it uses."""
    index: int
    action: str
    spec: dict
    requests: list = field(default_factory=list)
    gates: list = field(default_factory=list)

    def describe(self) -> str:
        s = self.spec
        if self.action in ("edit", "forget", "merge"):
            return f"{s['editor']} on {len(self.requests)} request(s) of {Path(s['requests']).name}"
        if self.action in ("eval", "gate"):
            return f"{len(self.requests)} request(s) of {Path(s['requests']).name}" + (
                f", {s['gate']}" if self.action == "gate" else "")
        if self.action == "tag":
            return f"{s['name']}" + (f" on {s['ref']}" if s.get("ref") else "")
        return str(Path(s["out"]).name)


def short(step: "Step") -> str:
    """A few words for the summary table's narrow column."""
    s = step.spec
    if step.action in ("edit", "forget", "merge"):
        return f"{s['editor']} ×{len(step.requests)}"
    if step.action in ("eval", "gate"):
        return f"×{len(step.requests)}" + (f" {s['gate']}" if step.action == "gate" else "")
    if step.action == "tag":
        return s["name"]
    return Path(s["out"]).name


@dataclass
class Plan:
    path: Path
    hash: str
    header: dict
    steps: list[Step]

    def check_tags(self, existing: set[str]) -> None:
        """Refuse a tag step whose name the workspace already has (`existing`: its tags less those
        this plan's own finished steps gave; a resumed plan meets its own tags again)."""
        for step in self.steps:
            if step.action == "tag" and step.spec["name"] in existing:
                raise InputError(f"step {step.index + 1}: tag {step.spec['name']!r} is given in the workspace; a tag "
                                 "is given once", file=self.path, field="name")

    def check_outputs(self, done: set[int]) -> None:
        """Refuse an export into an existing folder, unless that step already finished (a
        resumed plan meets its own export)."""
        for step in self.steps:
            if step.action == "export" and step.index not in done and Path(step.spec["out"]).exists():
                raise InputError(f"step {step.index + 1}: {step.spec['out']} already exists; an export writes a "
                                 "new folder", file=self.path, field="out")


def load_plan(path) -> Plan:
    """Read and check a plan file; every problem is an InputError naming the file, the step
    (1-based) and the field. What depends on the workspace is checked against it by
    `Plan.check_tags` and `Plan.check_outputs`."""
    from workbench.core.gates import Gate
    from workbench.editing.registry import get_editor, UnknownEditor
    from workbench.eval.requests import load_requests
    path = Path(path)
    if not path.is_file():
        raise InputError("plan file not found", file=path)
    raw = path.read_bytes()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not a TOML plan: {e}", file=path) from None
    unknown = sorted(set(doc) - {"plan", "step"})
    if unknown:
        raise InputError(f"unknown top-level key(s) {unknown}; a plan has [plan] and [[step]] tables", file=path,
                         field=unknown[0])
    header = doc.get("plan", {})
    if not isinstance(header, dict) or set(header) - HEADER_FIELDS:
        raise InputError(f"[plan] takes {sorted(HEADER_FIELDS)}", file=path, field="plan")
    for k, v in header.items():
        if not isinstance(v, str):
            raise InputError("expected a string", file=path, field=f"plan.{k}")
    steps_raw = doc.get("step")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise InputError("no [[step]] tables: nothing to run", file=path, field="step")
    digest = hashlib.sha256(raw)
    steps, tags, outs = [], set(), set()
    for i, spec in enumerate(steps_raw):
        where = f"step {i + 1}"

        def bad(msg, key, _where=where):
            return InputError(f"{_where}: {msg}", file=path, field=key)

        if not isinstance(spec, dict):
            raise bad("expected a table: [[step]] followed by its keys", "step")
        action = spec.get("action")
        if action not in ACTIONS:
            raise bad(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", "action")
        extra = sorted(set(spec) - FIELDS[action] - {"action"})
        if extra:
            raise bad(f"{action} takes {', '.join(sorted(FIELDS[action]))}; not {', '.join(extra)}", extra[0])
        missing = sorted(REQUIRED[action] - set(spec))
        if missing:
            raise bad(f"{action} needs {', '.join(missing)}", missing[0])
        spec = dict(spec)
        for key in ("editor", "requests", "format", "gate", "note", "name", "ref", "out"):
            if key in spec and not isinstance(spec[key], str):
                raise bad("expected a string", key)
        for key in ("start", "count", "seed"):
            if key in spec and (isinstance(spec[key], bool) or not isinstance(spec[key], int) or spec[key] < 0
                                or (key == "count" and spec[key] == 0)):
                raise bad("expected a non-negative integer" + (" above 0" if key == "count" else ""), key)
        if "one_by_one" in spec and not isinstance(spec["one_by_one"], bool):
            raise bad("expected true or false", "one_by_one")
        if "params" in spec and not (isinstance(spec["params"], dict) and all(
                isinstance(v, (str, int, float, bool)) for v in spec["params"].values())):
            raise bad("expected a table of hyper-parameter values, e.g. { steps = 20 }", "params")
        step = Step(i, action, spec)
        if "requests" in spec:
            spec["requests"] = str(path.parent / spec["requests"])
            try:
                reqs = load_requests(spec["requests"], spec.get("format"))
            except InputError as e:
                raise bad(f"requests: {e}", "requests") from None
            digest.update(hashlib.sha256(Path(spec["requests"]).read_bytes()).digest())
            start = spec.get("start", 0)
            step.requests = reqs[start:start + spec["count"]] if "count" in spec else reqs[start:]
            if not step.requests:
                raise bad(f"no requests in [{start}, {start + spec.get('count', len(reqs))}) of the file's "
                          f"{len(reqs)}", "start")
        if "editor" in spec:
            try:
                cls = get_editor(spec["editor"])
            except UnknownEditor as e:
                raise bad(str(e), "editor") from None
            if action == "forget" and not cls.capabilities.forget:
                raise bad(f"{cls.name!r} is not a forget editor", "editor")
            if action == "edit" and (cls.capabilities.forget or cls.capabilities.composes):
                raise bad(f"{cls.name!r} is a {'forget' if cls.capabilities.forget else 'merge'} editor: "
                          f"use action = \"{'forget' if cls.capabilities.forget else 'merge'}\"", "action")
            if action == "merge" and not cls.capabilities.composes:
                raise bad(f"{cls.name!r} does not merge or switch adapters", "editor")
            try:
                cls.prepare(None, _params(spec))
            except InputError as e:
                raise bad(f"params: {e}", "params") from None
            if spec.get("one_by_one") is False and len(step.requests) > 1 and not cls.capabilities.batch:
                raise bad(f"{cls.name!r} edits one request at a time; leave one_by_one out or set it true",
                          "one_by_one")
            if len(step.requests) == 1 or not cls.capabilities.batch:
                spec.setdefault("one_by_one", len(step.requests) > 1)
            from workbench.eval.requests import EditRequest, ForgetRequest
            want = ForgetRequest if cls.capabilities.forget else EditRequest
            wrong = next((k for k, r in enumerate(step.requests) if not isinstance(r, want)), None)
            if wrong is not None:
                raise bad(f"request {spec.get('start', 0) + wrong + 1} is a {type(step.requests[wrong]).__name__}; "
                          f"{cls.name!r} takes {want.__name__}s", "requests")
        if "gate" in spec:
            try:
                step.gates = Gate.parse_all(spec["gate"])
            except InputError as e:
                raise bad(f"gate: {e}", "gate") from None
        if action == "tag":
            name = spec["name"]
            if name in tags:
                raise bad(f"tag {name!r} is given earlier in this plan; a tag is given once", "name")
            check_tag_name(name, lambda msg: bad(msg, "name"))
            tags.add(name)
        if "out" in spec:
            spec["out"] = str(path.parent / spec["out"])
            out = Path(spec["out"])
            if spec["out"] in outs:
                raise bad("an earlier step writes the same path", "out")
            outs.add(spec["out"])
            if not out.parent.is_dir():
                raise bad(f"no folder {out.parent} to write into", "out")
        steps.append(step)
    return Plan(path, digest.hexdigest(), header, steps)


def _params(spec: dict) -> dict[str, str]:
    """A step's `params` table as the CLI's K=V strings (TOML's true/false as "true"/"false")."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spec.get("params", {}).items()}


def check_tag_name(name: str, error) -> None:
    """Raise `error(message)` unless `name` can be a tag (the rule `Workbench.tag` applies)."""
    import re
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,63}", name) or re.fullmatch(r"e\d+", name) or name == "base":
        raise error(f"{name!r}: a tag starts with a letter, holds letters, digits, '.', '_' or '-' (at most 64), "
                    "and is not 'base' or an event id like e0001")


class StepFailed(Exception):
    """A step stopped the plan: a gate said no (`rejected`) or the step raised."""

    def __init__(self, step: Step, message: str, rejected: bool):
        super().__init__(message)
        self.step, self.rejected = step, rejected


def run_plan(wb, plan: Plan, *, progress=None, collect: list | None = None) -> list[dict]:
    """Execute `plan` on the session `wb`, skipping steps (and items of a one-request-at-a-time
    step) this plan already recorded. Returns one summary dict per step; raises StepFailed
    (after recording nothing more) when a step fails. `progress`: an object with
    `start_step(step, total)`, `advance(n)`, `end_step()` (`PlanProgress`), or None; `collect`:
    a list the summaries are appended to as steps finish (what finished before a failure)."""
    done = wb.ledger.steps_done(plan.hash)
    summaries = collect if collect is not None else []
    for step in plan.steps:
        if step.index in done:
            summaries.append({**done[step.index]["summary"], "step": step.index + 1, "action": step.action,
                              "status": "done before"})
            if progress is not None:
                progress.skip_step(step)
            continue
        t0 = time.perf_counter()
        total = len(step.requests) if step.spec.get("one_by_one") else 1
        if progress is not None:
            progress.start_step(step, total)
        try:
            result = _run_step(wb, plan, step, progress)
        except StepFailed:
            raise
        except InputError as e:
            raise StepFailed(step, str(e), rejected=False) from e
        finally:
            if progress is not None:
                progress.end_step()
        result.update(step=step.index + 1, action=step.action, what=short(step),
                      seconds=round(time.perf_counter() - t0, 2), status="ok")
        wb.ledger.record_step(plan.hash, step.index, step.action, result)
        summaries.append(result)
    return summaries


def _run_step(wb, plan: Plan, step: Step, progress) -> dict:
    s = step.spec
    if step.action in ("edit", "forget", "merge"):
        return _edit_step(wb, plan, step, progress)
    if step.action in ("eval", "gate"):
        from workbench.core.gates import check_gates, gate_metrics
        out = wb.evaluate(step.requests, against_base=True)
        ev = out.get("edit") or out.get("forget")
        result = {"metrics": ev["mean"]}
        if step.action == "gate":
            failed = check_gates(step.gates, gate_metrics(ev["mean"], ev["intervals"]))
            if failed:
                raise StepFailed(step, "gate failed: " + "; ".join(failed), rejected=True)
        if s.get("out"):
            import json
            Path(s["out"]).write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n")
        if progress is not None:
            progress.advance(1)
        return result
    if step.action == "tag":
        e = wb.tag(s["name"], s.get("ref"), note=f"tag {s['name']} (plan {plan.path.name}, step {step.index + 1})",
                   plan={"hash": plan.hash, "step": step.index + 1, "file": plan.path.name})
        return {"events": [e.id], "tag": s["name"], "on": e.targets[0]}
    if step.action == "export":
        wb.export(s["out"])
        return {"out": Path(s["out"]).name, "edits": len(wb.active())}
    wb.bundle(s["out"])  # bundle
    return {"out": Path(s["out"]).name, "edits": len(wb.active())}


def _edit_step(wb, plan: Plan, step: Step, progress) -> dict:
    s = step.spec
    params = _params(s)
    ctx = {"hash": plan.hash, "step": step.index + 1, "file": plan.path.name}
    kwargs = dict(gates=step.gates, note=s.get("note"), seed=s.get("seed", 0))
    if not s.get("one_by_one"):
        e = wb.edit(s["editor"], step.requests, params, plan=ctx, **kwargs)
        if progress is not None:
            progress.advance(1)
        events = [e]
    else:
        # items of this step already recorded by an earlier run of the same plan
        seen = {(e.context or {}).get("plan", {}).get("item") for e in wb.log()
                if ((e.context or {}).get("plan") or {}).get("hash") == plan.hash
                and e.context["plan"].get("step") == step.index + 1 and e.kind == "edit"}
        if progress is not None and seen:
            progress.advance(len(seen))
        events = wb.edit_each(s["editor"], step.requests, params, plan=ctx, skip=seen,
                              progress=None if progress is None else progress.advance, **kwargs)
    summary = {"events": [e.id for e in events], "edits": sum(e.kind == "edit" for e in events),
               "metrics": events[-1].metrics_after if events else {}}
    if events and events[-1].kind == "rejected":
        raise StepFailed(step, f"{events[-1].id} rejected: {events[-1].note}", rejected=True)
    return summary


class PlanProgress:
    """Two bars on a terminal (rich, stderr): the plan's steps, and the current step's items."""

    def __init__(self, plan: Plan, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             disable=not enabled, console=Console(stderr=True))
        self._plan = self._bar.add_task(f"plan {plan.path.name}", total=len(plan.steps))
        self._step = None

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def skip_step(self, step: Step) -> None:
        self._bar.update(self._plan, advance=1)

    def start_step(self, step: Step, total: int) -> None:
        self._step = self._bar.add_task(f"  {step.index + 1}. {step.action} {step.describe()}", total=total)

    def advance(self, n: int = 1) -> None:
        if self._step is not None:
            self._bar.update(self._step, advance=n)

    def end_step(self) -> None:
        self._bar.update(self._plan, advance=1)
        self._step = None
