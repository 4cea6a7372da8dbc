"""The session API: `Workbench(model_dir, workspace)` ties model, editors, metrics and ledger.

The UI and the CLI both go through this class; neither touches weights directly.

Example:
    >>> wb = Workbench(None, "/tmp/ws")                       # the shipped model  # doctest: +SKIP
    >>> rec = wb.edit("ft", load_requests("edits.jsonl")[:1], params={"steps": "20"})  # doctest: +SKIP
    >>> wb.undo(); wb.verify()                                # doctest: +SKIP
    []
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import InputError, WorkbenchError
from workbench.core.gates import Gate, check_gates, gate_metrics
from workbench.core.ledger import Event, Ledger, LedgerError, utc_now
from workbench.core.patch import Patch, weights_hash
from workbench.editing.live import LiveModel

DEFAULT_WORKSPACE = Path(".workbench")
PROVENANCE = "workbench_edits.json"  # beside an exported checkpoint: its base and the edits it holds
PATCH_CACHE = 64  # patches held in memory by a session


class Workbench:
    """A model and the history of its edits in a workspace folder.

    Opening an existing workspace replays its active edits on the base model, so the model is
    exactly the last committed version (checked against the recorded weights hash).
    `device_map`, `max_memory`, `offload_folder`: see `workbench.core.model.load_model`; e.g.
    `Workbench(path, ws, device_map="auto", max_memory={"cpu": "200MB"})` for a model that
    does not fit.
    """

    def __init__(self, model_dir=None, workspace=DEFAULT_WORKSPACE, *, author: str | None = None,
                 device_map=None, max_memory: dict | None = None, offload_folder=None):
        from workbench.core.model import model_path
        self.model_dir = model_path(model_dir)
        # Placement across devices (accelerate): a split model hashes as the unsplit one, so it
        # opens the same workspaces; `verify` replays on a copy placed the same way.
        self._placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        self.live = LiveModel.load(self.model_dir, **self._placement)
        self.author = author or os.environ.get("WORKBENCH_AUTHOR") or _user()
        self.base_hash = self.live.hash()
        self.workspace = Path(workspace)
        self.ledger = Ledger.open(self.workspace, base_hash=self.base_hash, base_model=str(self.model_dir))
        # Recent patches kept in memory; older ones are read back from their files when needed
        # (a long lifelong run would otherwise hold every side-memory snapshot at once).
        self._patches: OrderedDict[str, Patch] = OrderedDict()
        self._restore()
        self._seq = self.ledger.last_seq()  # the event the in-memory model is at
        self._in_use = _hold_in_use(self.workspace)
        self._thread = threading.get_ident()  # its SQLite connection works on this thread only
        _OPEN.add(self)

    # The live model's parts, for readers (the UI generates with them); changes go through `live`.
    @property
    def model(self):
        return self.live.model

    @property
    def tok(self):
        return self.live.tok

    @property
    def adapter(self):
        return self.live.adapter

    # ------------------------------------------------------------------ state

    def _patch(self, event: Event) -> Patch:
        if event.id not in self._patches:
            self._keep(event.id, _load_patch(self.ledger.root / event.patch_file, event.editor))
        self._patches.move_to_end(event.id)
        return self._patches[event.id]

    def _keep(self, eid: str, patch: Patch) -> None:
        self._patches[eid] = patch
        while len(self._patches) > PATCH_CACHE:
            self._patches.popitem(last=False)

    def _restore(self) -> None:
        events = {e.id: e for e in self.ledger.events()}
        for eid in self.ledger.active():
            self.live.apply(self._patch(events[eid]))
        got, want = self.live.hash(), self.ledger.head_hash()
        if got != want:
            raise LedgerError(f"replaying the workspace {self.workspace} gives weights {got[:12]}…, "
                              f"but the ledger's last event recorded {want[:12]}…; run `workbench verify`")

    def weights_hash(self) -> str:
        """The current weights' sha256."""
        return self.live.hash()

    def active(self) -> list[str]:
        return self.ledger.active()

    def log(self) -> list[Event]:
        return self.ledger.events()

    def show(self, ref: str) -> Event:
        """The event `ref` names: an id, or a tag (the event it was put on)."""
        return self.ledger.get(self.resolve(ref))

    def resolve(self, ref: str) -> str:
        """An event id from an id, a tag name, or "base" (returned as is)."""
        if ref == "base":
            return ref
        tags = self.ledger.tags()
        if ref in tags:
            return tags[ref]
        self.ledger.get(ref)  # an unknown id is refused with the latest ids named
        return ref

    def tag(self, name: str, ref: str | None = None, *, note: str | None = None, plan: dict | None = None) -> Event:
        """Name a point of the history (`ref`: an id, another tag or "base"; default the latest
        event) so that it can be used wherever an id is. A name is given once."""
        from workbench.editing.plan import check_tag_name
        check_tag_name(name or "", lambda msg: InputError(msg, field="tag"))
        tags = self.ledger.tags()
        if name in tags:
            raise InputError(f"tag {name!r} already names {tags[name]}; a tag is given once", field="tag")
        target = self.resolve(ref) if ref is not None else (self.ledger.events()[-1].id if self.ledger.last_seq()
                                                            else "base")
        head = self.ledger.head_hash()
        self._check_writable()
        with self._commit():
            return self.ledger.append(id=self.ledger.next_id(), kind="tag", targets=[target], weights_before=head,
                                      weights_after=head, author=self.author, created_at=utc_now(),
                                      context={"tag": name, **({"plan": plan} if plan else {})},
                                      note=note or f"tag {name}")

    def patch(self, edit_id: str) -> Patch:
        """The recorded patch of edit `edit_id` (its meta holds what the editor reports, e.g.
        K-FAC's spectrum or pruning's neuron scores); read it, do not apply it."""
        event = self.ledger.get(edit_id)
        if not event.patch_file:
            raise InputError(f"event {edit_id} ({event.kind}) has no patch", field="edit_id")
        return self._patch(event)

    # ------------------------------------------------------------------ editing

    def edit(self, editor: str, requests: list, params: dict | None = None, *, gates: list[Gate] | str | None = None,
             note: str | None = None, seed: int = 0, author: str | None = None, plan: dict | None = None) -> Event:
        """Validate, measure, edit, measure again, gate, and commit (or record as rejected).

        Anything invalid (requests, hyperparameters, capabilities) raises before the model
        or the ledger changes. Returns the ledger event (kind "edit" or "rejected"); its
        `hparams` are the ones that ran (`Editor.effective_hparams`); `plan` (a plan's hash,
        step and item, `workbench.editing.plan`) goes into the event's context.
        """
        gate_list = Gate.parse_all(gates) if isinstance(gates, str) else list(gates or [])
        self._check_writable()  # a read-only workspace refuses before minutes of editing, not after
        a = self._attempt(editor, requests, params, seed=seed, gate_list=gate_list)
        try:
            h_after = self.live.hash()
            measured = gate_metrics(a.after["mean"], a.after["intervals"])
            failed = check_gates(gate_list, measured)
            context = {**({"plan": plan} if plan else {}), "seed": seed, "gates": [g.outcome(measured) for g in gate_list],
                       "intervals_before": a.before["intervals"], "intervals_after": a.after["intervals"],
                       **_changed_probes(a.after)}
            common = dict(editor=editor, hparams=a.hparams, requests=[r.to_dict() for r in a.batch],
                          metrics_before=a.before["mean"], metrics_after=a.after["mean"], weights_before=a.h_before,
                          context=context, author=author or self.author, created_at=utc_now(),
                          duration_s=round(a.duration, 4), note=note)
            if failed:
                self.live.revert(a.patch)
                self._expect_hash(a.h_before, "reverting a rejected edit")
                gate_note = "rejected by gate: " + "; ".join(failed)
                with self._commit():
                    return self.ledger.append(id=self.ledger.next_id(), kind="rejected", weights_after=a.h_before,
                                              **{**common, "note": f"{gate_note}. {note}" if note else gate_note})
            with self._commit():
                eid = self.ledger.next_id()
                rel = f"patches/{eid}.safetensors"
                digest = a.patch.save(self.ledger.root / rel)
                event = self.ledger.append(id=eid, kind="edit", weights_after=h_after, patch_file=rel,
                                           patch_sha256=digest, patch_bytes=a.patch.nbytes, **common)
            self._keep(eid, a.patch)
            return event
        except BaseException:
            # Never leave an uncommitted change in the model.
            if self.live.hash() != a.h_before:
                self.live.revert(a.patch)
            raise

    def _checked(self, editor: str, requests: list, params: dict | None):
        """The editor's instance and its checked Batch: every refusal (stale model, an editor that
        cannot stack on earlier edits, requests, hyper-parameters) before anything changes."""
        from workbench.editing.contract import context_length
        from workbench.editing.registry import get_editor
        cls = get_editor(editor)
        self._check_fresh()
        if self.active() and not cls.capabilities.sequential:
            raise InputError(f"editor {cls.name!r} cannot be applied on top of earlier edits (not sequential); "
                             f"roll back first", field="editor")
        batch = cls.check(requests, self.tok, self.adapter, context=context_length(self.model))  # the one check
        return cls(cls.prepare(self.adapter, params)), batch

    def _attempt(self, editor: str, requests: list, params: dict | None, *, seed: int,
                 gate_list: list[Gate] = (), before: tuple | None = None, checked: tuple | None = None) -> "_Attempt":
        """Check, measure, apply and measure again: the model is left edited for the caller to
        commit or revert (it is reverted here if anything fails). `before`: (reference,
        evaluation) of these requests on the current model, when the caller measured them;
        `checked`: `_checked`'s result, when the caller checked them."""
        from workbench.core.progress import step
        from workbench.editing.contract import EditContext
        instance, batch = checked or self._checked(editor, requests, params)
        if before is None:
            before = self._measure(batch.requests, None, f"measuring {len(batch)} request(s) before the edit")
        ref, ev_before = before
        known = gate_metrics(ev_before["mean"], ev_before["intervals"])
        unknown = sorted({g.metric for g in gate_list} - set(known))
        if unknown:  # a misspelt gate would reject every edit: refuse it before editing
            raise InputError(f"gate metric(s) {', '.join(unknown)} are not metrics of this edit "
                             f"(known: {', '.join(sorted(known))})", field="gate")
        h_before = self.live.hash()
        step(f"editing with {editor}")
        t0 = time.perf_counter()
        applied = instance.apply(EditContext(self.model, self.tok, self.adapter, seed), batch)
        duration = time.perf_counter() - t0
        try:
            self.live.edited(applied.patch)
            _, ev_after = self._measure(batch.requests, ref, "measuring after the edit")
        except BaseException:
            if self.live.hash() != h_before:
                self.live.revert(applied.patch)
            raise
        return _Attempt(batch, applied.patch, applied.hparams.to_dict(), ev_before, ev_after, h_before, duration)

    def compare(self, requests: list, candidates: list[tuple[str, dict | None]], *, seed: int = 0) -> list[dict]:
        """Each (editor, params) of `candidates` applied on its own to the current model, measured
        and reverted exactly: what `edit` would record, recorded nowhere. All candidates are
        checked before the first runs; the requests are measured before once. Returns one dict a
        candidate: editor, hparams, metrics and intervals before and after, seconds, the locality
        probes it changed."""
        checked = [self._checked(editor, requests, params) for editor, params in candidates]  # all, before any runs
        before = self._measure(checked[0][1].requests, None, f"measuring {len(requests)} request(s) on the current model")
        out = []
        for (editor, params), one in zip(candidates, checked):
            a = self._attempt(editor, requests, params, seed=seed, before=before, checked=one)
            try:
                self.live.revert(a.patch)
                self._expect_hash(a.h_before, f"reverting the trial of {editor}")
            except BaseException:
                self._seq = -1  # the model may not be the ledger's head: stale() says so, writes are refused
                raise
            out.append({"editor": editor, "params": dict(params or {}), "hparams": a.hparams, "seed": seed,
                        "metrics_before": a.before["mean"], "metrics_after": a.after["mean"],
                        "intervals_before": a.before["intervals"], "intervals_after": a.after["intervals"],
                        "duration_s": round(a.duration, 4), **_changed_probes(a.after)})
        return out

    def stale(self) -> bool:
        """Whether another session or process recorded events since this one last synced (its
        model is then not the workspace's head; reopen the workspace)."""
        return self.ledger.last_seq() != self._seq

    def check_each(self, editor: str, requests: list, params: dict | None = None) -> None:
        """Every request on its own, and the hyper-parameters, as `edit_each` will use them: an
        InputError naming the request before anything is edited."""
        from workbench.editing.contract import context_length
        from workbench.editing.registry import get_editor
        cls = get_editor(editor)
        for i, r in enumerate(requests):
            try:
                cls.check([r], self.tok, self.adapter, context=context_length(self.model))
            except InputError as e:
                raise InputError(f"request {i + 1}: {e.reason}", file=e.file, line=e.line, field=e.field) from None
        cls.prepare(self.adapter, params)

    def edit_each(self, editor: str, requests: list, params: dict | None = None, *,
                  gates: list[Gate] | str | None = None, note: str | None = None, seed: int = 0,
                  author: str | None = None, progress=None, plan: dict | None = None,
                  skip: set | None = None) -> list[Event]:
        """`requests` as sequential edits of one request each (for an editor that takes one at a
        time, e.g. ROME), each recorded as its own event; stops at the first rejected one (its
        event is the last returned; the edits before it stay in force). Every request is checked
        before the first edit, so a bad one late in the file changes nothing. `progress(n)` is
        called after each request. `plan`: as for `edit`, with each request's index as "item";
        `skip`: indices already recorded (a resumed plan), not edited again."""
        self.check_each(editor, requests, params)
        events = []
        for i, r in enumerate(requests):
            if skip and i in skip:
                continue
            events.append(self.edit(editor, [r], params, gates=gates, seed=seed, author=author,
                                    plan=None if plan is None else {**plan, "item": i},
                                    note=f"{note + ' ' if note else ''}(request {i + 1} of {len(requests)})"))
            if progress is not None:
                progress(1)
            if events[-1].kind != "edit":
                break
        return events

    def _measure(self, requests, ref, what: str = "measuring"):
        from workbench.core.progress import progress_bar
        from workbench.eval import evaluate as ev
        from workbench.eval.requests import EditRequest
        # no bar on the terminal (the CLI draws its own per request); a listening UI gets the count
        with progress_bar(what, ev.n_scored(requests), enabled=False) as advance:
            if isinstance(requests[0], EditRequest):
                ref = ref or ev.reference(self.model, self.tok, requests)
                return ref, ev.evaluate_edits(self.model, self.tok, requests, ref, progress=advance)
            return ref, ev.evaluate_forgets(self.model, self.tok, requests, exposure_samples=0, progress=advance)

    def evaluate(self, requests, *, reference_model=None, against_base: bool = False) -> dict:
        """Score the current model on `requests` (locality against `reference_model` if given;
        with `against_base`, against this model's base: the model is walked back to base for the
        reference predictions and forward again, exactly)."""
        from workbench.eval import evaluate as ev
        from workbench.eval.requests import EditRequest
        edits = [r for r in requests if isinstance(r, EditRequest)]
        forgets = [r for r in requests if not isinstance(r, EditRequest)]
        out = {}
        ref = None
        if edits and against_base:
            with self._walk() as goto:
                goto([])
                ref = ev.reference(self.model, self.tok, edits)
        if edits:
            ref = ev.reference(reference_model, self.tok, edits) if reference_model is not None else ref
            out["edit"] = ev.evaluate_edits(self.model, self.tok, edits, ref)
        if forgets:
            out["forget"] = ev.evaluate_forgets(self.model, self.tok, forgets)
        return out

    # ------------------------------------------------------------------ undoing

    def undo(self, *, note: str | None = None) -> Event:
        """Revert the most recent edit in force."""
        active = self.active()
        if not active:
            raise InputError("nothing to undo: no edit is in force", field="undo")
        return self._revert_many([active[-1]], "undo", note)

    def rollback(self, edit_id: str, *, note: str | None = None) -> Event:
        """Roll back every edit after `edit_id` ("base" = all of them), newest first."""
        edit_id = self.resolve(edit_id)
        active = self.active()
        if edit_id != "base" and edit_id not in active:
            raise InputError(f"{edit_id!r} is not an edit in force (in force: {', '.join(active) or 'none'}; "
                             f"or 'base')", field="edit_id")
        keep = 0 if edit_id == "base" else active.index(edit_id) + 1
        if keep == len(active):
            raise InputError(f"{edit_id!r} is already the latest state", field="edit_id")
        return self._revert_many(active[keep:][::-1], "rollback", note, target=edit_id)

    def revert(self, edit_id: str, *, note: str | None = None) -> Event:
        """Revert one edit out of the middle, where its editor allows it and no later edit
        touched the same weights (otherwise exact revert is impossible and it is refused)."""
        from workbench.editing.registry import get_editor
        edit_id = self.resolve(edit_id)
        active = self.active()
        if edit_id not in active:
            raise InputError(f"{edit_id!r} is not an edit in force (in force: {', '.join(active) or 'none'})",
                             field="edit_id")
        event = self.ledger.get(edit_id)
        later = active[active.index(edit_id) + 1:]
        if later and not get_editor(event.editor).capabilities.single_revert:
            raise InputError(f"editor {event.editor!r} does not allow reverting one edit out of the middle; "
                             f"use rollback {active[active.index(edit_id) - 1] if active.index(edit_id) else 'base'}",
                             field="edit_id")
        events = {e.id: e for e in self.ledger.events()}
        mine = _touched(self._patch(event))
        for lid in later:
            clash = mine & _touched(self._patch(events[lid]))
            if clash:
                raise InputError(f"later edit {lid} changed the same weights ({sorted(clash)[0]}); "
                                 f"reverting {edit_id} alone cannot be exact", field="edit_id")
        return self._revert_many([edit_id], "revert", note)

    def _revert_many(self, ids: list[str], kind: str, note: str | None, target: str | None = None) -> Event:
        self._check_fresh()
        self._check_writable()
        events = {e.id: e for e in self.ledger.events()}
        h_before = self.ledger.head_hash()  # the model is always at the ledger's head
        t0 = time.perf_counter()
        done = []
        try:
            for eid in ids:
                patch = self._patch(events[eid])
                self.live.revert(patch)
                done.append(patch)
            h_after = self.live.hash()
            with self._commit():
                return self.ledger.append(id=self.ledger.next_id(), kind=kind, targets=ids, weights_before=h_before,
                                          weights_after=h_after, author=self.author, created_at=utc_now(),
                                          duration_s=round(time.perf_counter() - t0, 4),
                                          note=note if target is None else f"to {target}" + (f": {note}" if note else ""))
        except BaseException:
            for patch in reversed(done):  # nothing was recorded: put the model back where it was
                self.live.apply(patch)
            raise

    # ------------------------------------------------------------------ auditing

    def verify(self, *, replay: bool = True) -> list[str]:
        """Problems found, each naming the event or file; [] = the history is intact.

        Checks the hash chain and patch files, then (with `replay`) replays every event on a
        fresh copy of the base model and compares the weights hash after each."""
        problems = self.ledger.verify_chain()
        if problems or not replay:
            return problems
        copy = LiveModel.load(self.model_dir, **self._placement)
        if weights_hash(copy.model) != self.ledger.meta()["base_hash"]:
            return [f"the base model at {self.model_dir} no longer matches the workspace's base hash"]
        events = {e.id: e for e in self.ledger.events()}
        for e in events.values():
            if e.kind == "edit":
                self._patch(e).apply(copy.model, copy.adapter)
            elif e.kind in ("undo", "rollback", "revert"):
                for t in e.targets:
                    self._patch(events[t]).revert(copy.model, copy.adapter)
            if weights_hash(copy.model) != e.weights_after:
                problems.append(f"event {e.id}: replaying it does not give its recorded weights hash")
                break
        return problems

    def state_at(self, ref: str) -> list[str]:
        """The edits in force right after event `ref` (an id, tag, or "base": none)."""
        from workbench.core.ledger import active_edits
        eid = self.resolve(ref)
        if eid == "base":
            return []
        events = self.ledger.events()
        seq = self.ledger.get(eid).seq
        return active_edits([e for e in events if e.seq <= seq])

    def diff(self, a: str, b: str, requests: list | None = None) -> dict:
        """What differs between the model after `a` and after `b` (ids, tags or "base"): the edits
        in force in only one, every weight tensor whose values differ (‖B − A‖ and its size
        relative to ‖A‖), the attachments present in only one, and with `requests` each state
        scored on them and B compared with A, paired by request
        (`workbench.eval.stats.compare_paired`). The model is walked to each state and back to
        the head exactly; nothing is recorded."""
        import torch
        from workbench.eval.stats import compare_paired
        ids_a, ids_b = self.state_at(a), self.state_at(b)
        events = {e.id: e for e in self.ledger.events()}
        only_a = [i for i in ids_a if i not in ids_b]
        only_b = [i for i in ids_b if i not in ids_a]
        names = sorted({w.name for i in only_a + only_b for w in self._patch(events[i]).weights})
        attachments = {side: [{"edit": i, "kind": att.kind, **{k: v for k, v in att.config().items()
                                                               if isinstance(v, (int, str))}}
                              for i in ids for att in self._patch(events[i]).attachments]
                       for side, ids in (("a", only_a), ("b", only_b))}
        params = dict(self.model.named_parameters())
        snaps, scores = {}, {}
        from workbench.eval import evaluate as ev
        from workbench.eval.requests import EditRequest
        edits = [r for r in requests or [] if isinstance(r, EditRequest)]
        with self._walk() as goto:
            ref = None
            if edits:  # locality of both states against the base model's predictions
                goto([])
                ref = ev.reference(self.model, self.tok, edits)
            for side, ids in (("a", ids_a), ("b", ids_b)):
                goto(ids)
                snaps[side] = {n: params[n].detach().float().clone() for n in names if n in params}
                if requests:
                    scores[side] = ({"edit": ev.evaluate_edits(self.model, self.tok, edits, ref)} if edits else
                                    {"forget": ev.evaluate_forgets(self.model, self.tok, requests)})
        tensors = []
        for n in names:
            if n not in snaps["a"] or snaps["a"][n].shape != snaps["b"][n].shape:
                tensors.append({"name": n, "shape": None, "diff_norm": None, "relative": None})
                continue
            d = float(torch.linalg.vector_norm(snaps["b"][n] - snaps["a"][n]))
            base = float(torch.linalg.vector_norm(snaps["a"][n]))
            if d > 0:
                tensors.append({"name": n, "shape": list(snaps["a"][n].shape), "diff_norm": d,
                                "relative": d / base if base else None})
        out = {"a": a, "b": b, "edits_a": ids_a, "edits_b": ids_b, "only_a": only_a, "only_b": only_b,
               "tensors": tensors, "attachments": attachments}
        if requests:
            kind = "edit" if "edit" in scores["a"] else "forget"
            ra, rb = scores["a"][kind], scores["b"][kind]
            metrics = [k for k in ra["mean"] if isinstance(ra["mean"][k], (int, float))]
            out["metrics"] = {"a": ra["mean"], "b": rb["mean"],
                              "paired": compare_paired(_units(ra), _units(rb), metrics)}
        return out

    @contextlib.contextmanager
    def _walk(self):
        """Yield `goto(ids)`: put the model in the state of exactly those edits in force (from
        base, in order); on exit, back at the ledger's head, checked by hash. A move keeps the
        longest common prefix of the edits applied and reverts and applies only the rest."""
        head_ids = self.active()
        events = {e.id: e for e in self.ledger.events()}
        head = self.live.hash()
        current = list(head_ids)

        def goto(ids: list[str]) -> None:
            keep = 0
            while keep < min(len(current), len(ids)) and current[keep] == ids[keep]:
                keep += 1
            while len(current) > keep:
                self.live.revert(self._patch(events[current.pop()]))
            for i in ids[keep:]:
                self.live.apply(self._patch(events[i]))
                current.append(i)

        try:
            yield goto
        finally:
            goto(head_ids)
            self._expect_hash(head, "returning to the head after a diff")

    def export(self, out) -> Path:
        """Save the edited model as a plain HF checkpoint; refused when an edit is an attachment."""
        from workbench.core.fsutil import atomic_dir
        events = {e.id: e for e in self.ledger.events()}
        for eid in self.active():
            if not self._patch(events[eid]).weights_only:
                raise InputError(f"edit {eid} ({events[eid].editor}) adds modules, not only weight changes; "
                                 f"a plain Hugging Face checkpoint cannot hold it", field="export")
        with atomic_dir(out) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tok.save_pretrained(tmp)
            (tmp / PROVENANCE).write_text(json.dumps(self._provenance(), indent=2, sort_keys=True) + "\n")
            _readable(tmp)
        return Path(out)

    def _provenance(self) -> dict:
        """What an exported checkpoint holds: its base and the edits in force, oldest first (names
        only, never an absolute path)."""
        events = {e.id: e for e in self.ledger.events()}
        return {"format": "workbench-export", "base_model": self.model_dir.name, "base_hash": self.base_hash,
                "weights_hash": self.live.hash(), "exported_at": utc_now(), "exported_by": self.author,
                "edits": [{"id": i, "editor": events[i].editor, "author": events[i].author,
                           "created_at": events[i].created_at, "requests": len(events[i].requests or []),
                           "note": events[i].note} for i in self.active()]}

    def bundle(self, path) -> Path:
        """Write the edits in force to one file (`workbench.editing.bundle`), each with the weights
        hashes of applying them in order on the base model: what a replay elsewhere will see."""
        from workbench.editing.bundle import write_bundle
        events = {e.id: e for e in self.ledger.events()}
        active = [events[i] for i in self.active()]
        return write_bundle(path, self.base_hash, [(e, self.ledger.root / e.patch_file, hashes)
                                                   for e, hashes in zip(active, self._chain_hashes(active))])

    def _chain_hashes(self, events: list[Event]) -> list[tuple[str, str]]:
        """(weights before, weights after) of each of `events` (the edits in force, oldest first)
        applied in order on the base model. These are the recorded hashes unless an edit was
        reverted out of the middle: the later edits were recorded on top of it, so their recorded
        hashes include it. Then the live model walks back to base and forward again, hashing each
        step (revert and apply are exact; the end is checked against the head)."""
        recorded = [(e.weights_before, e.weights_after) for e in events]
        starts = [self.base_hash] + [after for _, after in recorded[:-1]]
        if all(before == start for (before, _), start in zip(recorded, starts)):
            return recorded
        ids = [e.id for e in events]
        out = []
        with self._walk() as goto:
            goto([])
            before = self.live.hash()
            for k in range(len(ids)):
                goto(ids[:k + 1])  # one more patch on top: the walk keeps the prefix it has
                after = self.live.hash()
                out.append((before, after))
                before = after
        if before != self.ledger.head_hash() or out[0][0] != self.base_hash:
            raise WorkbenchError("replaying the edits in force from the base model does not give the current "
                                 "weights; run `workbench verify`")
        return out

    def apply_bundle(self, path) -> list[Event]:
        """Replay a bundle's edits (`bundle`) on this model and record each; all or nothing.

        The bundle must be from the same base model and start where this model is now; every
        patch file is checked against its sha256 and the weights after every edit against the
        recorded hash. If anything fails nothing is recorded and the model is restored."""
        from workbench.editing.bundle import read_bundle
        self._check_fresh()
        self._check_writable()
        with read_bundle(path, self.base_hash) as bundle:
            if self.live.hash() != bundle.weights_before:
                raise InputError("the model is not in the state the bundle starts from; roll back to base first",
                                 file=path, field="weights_before")
            applied, staged = [], []
            try:
                for i, rec in enumerate(bundle.edits):
                    tmp = self.ledger.patch_dir / f".bundle-{i:04d}.tmp"
                    bundle.extract(i, tmp)
                    staged.append(tmp)
                    patch = _load_patch(tmp, rec["editor"])
                    self.live.apply(patch)
                    applied.append(patch)
                    if self.live.hash() != rec["weights_after"]:
                        raise InputError(f"edit {i + 1} ({rec['id']}): weights after replay do not match the bundle",
                                         file=path)
                events = []
                with self._commit():  # serialized with other writers; refused if another recorded meanwhile
                    for rec, tmp, patch in zip(bundle.edits, staged, applied):
                        events.append(self._record_replayed(path, rec, tmp))
                        self._keep(events[-1].id, patch)
                return events
            except BaseException:
                for patch in reversed(applied):
                    self.live.revert(patch)
                for tmp in staged:
                    tmp.unlink(missing_ok=True)
                raise

    def _record_replayed(self, path, rec: dict, staged: Path) -> Event:
        """Move a staged bundle patch into place and append its event (under the commit lock)."""
        eid = self.ledger.next_id()
        rel = f"patches/{eid}.safetensors"
        os.replace(staged, self.ledger.root / rel)
        note = f"replayed from bundle {Path(path).name} (was {rec['id']} by {rec['author']} at {rec['created_at']})"
        fields = {k: rec[k] for k in ("editor", "hparams", "requests", "metrics_before", "metrics_after",
                                      "weights_before", "weights_after", "patch_sha256", "patch_bytes", "duration_s")}
        fields["context"] = rec.get("context")  # absent from bundles written before schema 2
        return self.ledger.append(id=eid, kind="edit", patch_file=rel, author=self.author, created_at=utc_now(),
                                  note=note + (f": {rec['note']}" if rec.get("note") else ""), **fields)

    def close(self) -> None:
        self.ledger.close()
        if self._in_use is not None:
            self._in_use.close()  # releases the shared "in use" lock
            self._in_use = None
        _OPEN.discard(self)

    @staticmethod
    def close_all() -> None:
        """Close every Workbench this thread opened (a command that is ending); sessions of other
        threads (a UI's) are theirs to close."""
        me = threading.get_ident()
        for wb in [w for w in _OPEN if w._thread == me]:
            wb.close()

    def _check_writable(self) -> None:
        """Refuse, changing nothing, where the workspace cannot be written (a read-only file system,
        no permission): the commit lock is the first file a write opens."""
        try:
            with open(self.workspace / ".lock", "a"):
                pass
            import tempfile  # a file of its own: two sessions probing at once must not race on one name
            with tempfile.NamedTemporaryFile(dir=self.workspace / "patches", prefix=".write-probe-"):
                pass
        except OSError as e:
            raise InputError(f"the workspace cannot be written ({e.strerror or type(e).__name__}); nothing was "
                             f"changed", file=self.workspace) from None

    def _check_fresh(self) -> None:
        """Refuse to work from a stale model: another session or process recorded events since
        this one last synced, so this model is not at the ledger's head."""
        last = self.ledger.last_seq()
        if last != self._seq:
            raise LedgerError(f"the workspace {self.workspace} was changed by another session or process since this "
                              f"one opened it (the ledger has {last} event(s), this session is at {self._seq}); "
                              f"nothing was recorded here; reopen the workspace and try again")

    @contextlib.contextmanager
    def _commit(self):
        """The lock, a freshness check under it, then the caller's append(s); the session then
        stands at the new head. Two writers on one workspace are serialized, never interleaved."""
        with self._locked():
            self._check_fresh()
            yield
            self._seq = self.ledger.last_seq()

    @contextlib.contextmanager
    def _locked(self):
        # One writer per workspace: an exclusive advisory lock around each commit.
        import fcntl
        with open(self.workspace / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _expect_hash(self, want: str, what: str) -> None:
        if self.live.hash() != want:
            raise WorkbenchError(f"{what} did not restore the weights exactly")


IN_USE = ".in-use"  # every open session holds a shared lock on it: a workspace in use is never removed
_OPEN: "weakref.WeakSet[Workbench]" = weakref.WeakSet()


def _hold_in_use(workspace: Path):
    """An open file holding a shared lock on the workspace's in-use marker for this session's life."""
    import fcntl
    try:
        f = open(workspace / IN_USE, "a")
    except OSError:  # a read-only workspace is still readable; nothing can remove it either
        return None
    fcntl.flock(f, fcntl.LOCK_SH)
    return f


def unused(workspace: Path) -> bool:
    """Whether no session (in any process) has `workspace` open right now."""
    import fcntl
    try:
        with open(Path(workspace) / IN_USE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True  # the lock goes with the file
    except OSError:
        return False


@dataclass
class _Attempt:
    """An edit applied and measured, not yet committed or reverted."""
    batch: object
    patch: Patch
    hparams: dict
    before: dict  # the evaluation before (mean, intervals, per_request)
    after: dict
    h_before: str
    duration: float


def _load_patch(path: Path, editor: str | None) -> Patch:
    # The editor's module registers the attachment kinds its patches hold; load it first.
    if editor:
        from workbench.editing.registry import get_editor
        get_editor(editor)
    return Patch.load(path)


CHANGED_EXAMPLES = 5  # locality probes whose prediction the edit changed, kept in the event


def _changed_probes(evaluation: dict) -> dict:
    """The first few locality probes whose greedy tokens the edit changed (for the evaluation
    card), and how many there were in all; {} for forget requests (no locality probes)."""
    changed = [c for r in evaluation["per_request"] for c in r.get("locality_changed", [])]
    if not any("locality_changed" in r for r in evaluation["per_request"]):
        return {}
    return {"locality_changed": changed[:CHANGED_EXAMPLES], "locality_changed_count": len(changed)}


def _units(evaluation: dict) -> list[dict]:
    """An evaluation's per-request rows keyed by position, for `compare_paired` (both sides
    scored the same requests in the same order)."""
    return [{**r, "id": i} for i, r in enumerate(evaluation["per_request"])]


def _touched(patch: Patch) -> set[str]:
    # Attachments are separate modules; whether one edit's attachment depends on another's is
    # the editor's to declare (single_revert). Weights clash when the same tensor was touched.
    return {w.name for w in patch.weights}


def _readable(folder: Path) -> None:
    """Give every file in `folder` the permissions an ordinary new file gets (0644 under the usual
    umask): safetensors writes its file through a private (0600) temporary."""
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.rglob("*"):
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
