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
import os
import time
from collections import OrderedDict
from pathlib import Path

from workbench.core.errors import InputError, WorkbenchError
from workbench.core.gates import Gate, check_gates, gate_metrics
from workbench.core.ledger import Event, Ledger, LedgerError, utc_now
from workbench.core.patch import Patch, weights_hash
from workbench.editing.live import LiveModel

DEFAULT_WORKSPACE = Path(".workbench")
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

    def show(self, edit_id: str) -> Event:
        return self.ledger.get(edit_id)

    def patch(self, edit_id: str) -> Patch:
        """The recorded patch of edit `edit_id` (its meta holds what the editor reports, e.g.
        K-FAC's spectrum or pruning's neuron scores); read it, do not apply it."""
        event = self.ledger.get(edit_id)
        if not event.patch_file:
            raise InputError(f"event {edit_id} ({event.kind}) has no patch", field="edit_id")
        return self._patch(event)

    # ------------------------------------------------------------------ editing

    def edit(self, editor: str, requests: list, params: dict | None = None, *, gates: list[Gate] | str | None = None,
              note: str | None = None, seed: int = 0, author: str | None = None) -> Event:
        """Validate, measure, edit, measure again, gate, and commit (or record as rejected).

        Anything invalid (requests, hyperparameters, capabilities) raises before the model
        or the ledger changes. Returns the ledger event (kind "edit" or "rejected"); its
        `hparams` are the ones that ran (`Editor.effective_hparams`).
        """
        from workbench.editing.contract import EditContext, context_length
        from workbench.editing.registry import get_editor
        cls = get_editor(editor)
        self._check_fresh()
        if self.active() and not cls.capabilities.sequential:
            raise InputError(f"editor {cls.name!r} cannot be applied on top of earlier edits (not sequential); "
                             f"roll back first", field="editor")
        batch = cls.check(requests, self.tok, self.adapter, context=context_length(self.model))  # the one check
        gate_list = Gate.parse_all(gates) if isinstance(gates, str) else list(gates or [])
        instance = cls(cls.prepare(self.adapter, params))
        ref, ev_before = self._measure(batch.requests, None)
        before = ev_before["mean"]
        known = gate_metrics(before, ev_before["intervals"])
        unknown = sorted({g.metric for g in gate_list} - set(known))
        if unknown:  # a misspelt gate would reject every edit: refuse it before editing
            raise InputError(f"gate metric(s) {', '.join(unknown)} are not metrics of this edit "
                             f"(known: {', '.join(sorted(known))})", field="gate")
        h_before = self.live.hash()
        t0 = time.perf_counter()
        applied = instance.apply(EditContext(self.model, self.tok, self.adapter, seed), batch)
        duration = time.perf_counter() - t0
        patch = applied.patch
        try:
            self.live.edited(patch)
            _, ev_after = self._measure(batch.requests, ref)
            after = ev_after["mean"]
            h_after = self.live.hash()
            measured = gate_metrics(after, ev_after["intervals"])
            failed = check_gates(gate_list, measured)
            context = {"seed": seed, "gates": [g.outcome(measured) for g in gate_list],
                       "intervals_before": ev_before["intervals"], "intervals_after": ev_after["intervals"],
                       **_changed_probes(ev_after)}
            common = dict(editor=editor, hparams=applied.hparams.to_dict(), requests=[r.to_dict() for r in batch],
                          metrics_before=before, metrics_after=after, weights_before=h_before, context=context,
                          author=author or self.author, created_at=utc_now(), duration_s=round(duration, 4), note=note)
            if failed:
                self.live.revert(patch)
                self._expect_hash(h_before, "reverting a rejected edit")
                gate_note = "rejected by gate: " + "; ".join(failed)
                with self._commit():
                    return self.ledger.append(id=self.ledger.next_id(), kind="rejected", weights_after=h_before,
                                              **{**common, "note": f"{gate_note}. {note}" if note else gate_note})
            with self._commit():
                eid = self.ledger.next_id()
                rel = f"patches/{eid}.safetensors"
                digest = patch.save(self.ledger.root / rel)
                event = self.ledger.append(id=eid, kind="edit", weights_after=h_after, patch_file=rel,
                                           patch_sha256=digest, patch_bytes=patch.nbytes, **common)
            self._keep(eid, patch)
            return event
        except BaseException:
            # Never leave an uncommitted change in the model.
            if self.live.hash() != h_before:
                self.live.revert(patch)
            raise

    def _measure(self, requests, ref):
        from workbench.eval import evaluate as ev
        from workbench.eval.requests import EditRequest
        if isinstance(requests[0], EditRequest):
            ref = ref or ev.reference(self.model, self.tok, requests)
            return ref, ev.evaluate_edits(self.model, self.tok, requests, ref)
        return ref, ev.evaluate_forgets(self.model, self.tok, requests, exposure_samples=0)

    def evaluate(self, requests, *, reference_model=None) -> dict:
        """Score the current model on `requests` (locality against `reference_model` if given)."""
        from workbench.eval import evaluate as ev
        from workbench.eval.requests import EditRequest
        edits = [r for r in requests if isinstance(r, EditRequest)]
        forgets = [r for r in requests if not isinstance(r, EditRequest)]
        out = {}
        if edits:
            ref = ev.reference(reference_model, self.tok, edits) if reference_model is not None else None
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
        return Path(out)

    def bundle(self, path) -> Path:
        from workbench.editing.bundle import write_bundle
        events = {e.id: e for e in self.ledger.events()}
        return write_bundle(path, self.base_hash, [(events[i], self.ledger.root / events[i].patch_file)
                                                    for i in self.active()])

    def apply_bundle(self, path) -> list[Event]:
        """Replay a bundle's edits (`bundle`) on this model and record each; all or nothing.

        The bundle must be from the same base model and start where this model is now; every
        patch file is checked against its sha256 and the weights after every edit against the
        recorded hash. If anything fails nothing is recorded and the model is restored."""
        from workbench.editing.bundle import read_bundle
        self._check_fresh()
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


def _touched(patch: Patch) -> set[str]:
    # Attachments are separate modules; whether one edit's attachment depends on another's is
    # the editor's to declare (single_revert). Weights clash when the same tensor was touched.
    return {w.name for w in patch.weights}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
