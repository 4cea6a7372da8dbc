"""Bundles: a history's edits in one file, to replay on another copy of the same base model.

A bundle is a zip holding `manifest.json` (base weights hash and each edit's ledger record)
and one patch file per edit. Replaying checks the model's current weights hash against the
bundle's starting hash, every patch file against its sha256, and the weights after every
edit against the recorded hash; if any check fails nothing is recorded and the model is
restored.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from workbench.core.errors import InputError
from workbench.core.ledger import utc_now

FORMAT = "workbench-bundle"
VERSION = 1


def write_bundle(path, base_hash: str, edits: list) -> Path:
    """`edits`: (ledger Event, patch file path) pairs, oldest first. Written atomically."""
    path = Path(path)
    if not edits:
        raise InputError("no edit is in force: nothing to bundle", field="bundle")
    manifest = {"format": FORMAT, "version": VERSION, "base_hash": base_hash, "edits": []}
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for i, (event, patch_path) in enumerate(edits):
            name = f"patches/{i:04d}.safetensors"
            z.write(patch_path, name)
            rec = {k: v for k, v in event.to_dict().items() if k not in ("seq", "parent", "parent_hash")}
            manifest["edits"].append({**rec, "bundle_file": name})
        z.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_manifest(path) -> tuple[zipfile.ZipFile, dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError("bundle not found", file=path)
    try:
        z = zipfile.ZipFile(path)
        manifest = json.loads(z.read("manifest.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise InputError(f"not a workbench bundle: {e}", file=path) from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise InputError(f"not a {FORMAT} version {VERSION}", file=path, field="format")
    return z, manifest


def replay_bundle(wb, path) -> list:
    """Apply a bundle's edits to the session `wb` and record each; all or nothing."""
    from workbench.core.patch import Patch
    wb._check_fresh()
    z, manifest = read_manifest(path)
    edits = manifest["edits"]
    if manifest["base_hash"] != wb.base_hash:
        raise InputError(f"the bundle was made on another base model (weights sha256 {manifest['base_hash'][:12]}…, "
                         f"this one is {wb.base_hash[:12]}…)", file=path, field="base_hash")
    if wb.weights_hash() != edits[0]["weights_before"]:
        raise InputError("the model is not in the state the bundle starts from; roll back to base first",
                         file=path, field="weights_before")
    applied, staged = [], []
    try:
        for i, rec in enumerate(edits):
            data = z.read(rec["bundle_file"])
            if hashlib.sha256(data).hexdigest() != rec["patch_sha256"]:
                raise InputError(f"edit {i + 1} ({rec['id']}): patch file was changed (sha256 mismatch)", file=path)
            tmp = wb.ledger.patch_dir / f".bundle-{i:04d}.tmp"
            tmp.write_bytes(data)
            staged.append(tmp)
            wb._load_editor_module(rec["editor"])
            patch = Patch.load(tmp)
            patch.apply(wb.model, wb.adapter)
            applied.append(patch)
            if wb.weights_hash(patch) != rec["weights_after"]:
                raise InputError(f"edit {i + 1} ({rec['id']}): weights after replay do not match the bundle",
                                 file=path)
        events: list = []
        with wb._commit():  # serialized with other writers; refused if another recorded meanwhile
            _record(wb, path, edits, staged, applied, events)
        return events
    except BaseException:
        for patch in reversed(applied):
            patch.revert(wb.model, wb.adapter)
            wb._forget(patch)
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        z.close()


def _record(wb, path, edits, staged, applied, events: list) -> None:
    """Move each staged patch into place and append its ledger event (under the caller's lock)."""
    for rec, tmp, patch in zip(edits, staged, applied):
        eid = wb.ledger.next_id()
        rel = f"patches/{eid}.safetensors"
        os.replace(tmp, wb.ledger.root / rel)
        note = f"replayed from bundle {Path(path).name} (was {rec['id']} by {rec['author']} at {rec['created_at']})"
        fields = {k: rec[k] for k in ("editor", "hparams", "requests", "metrics_before", "metrics_after",
                                      "weights_before", "weights_after", "patch_sha256", "patch_bytes",
                                      "duration_s")}
        events.append(wb.ledger.append(id=eid, kind="edit", patch_file=rel, author=wb.author,
                                       created_at=utc_now(), note=note + (f": {rec['note']}" if rec.get("note") else ""),
                                       **fields))
        wb._patches[eid] = patch
