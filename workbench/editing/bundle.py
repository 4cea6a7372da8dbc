"""Bundles: a history's edits in one file, to replay on another copy of the same base model.

A bundle is a zip holding `manifest.json` (base weights hash and each edit's ledger record)
and one patch file per edit. Replaying checks the model's current weights hash against the
bundle's starting hash, every patch file against its sha256, and the weights after every
edit against the recorded hash; if any check fails nothing is recorded and the model is
restored.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path

from workbench.core.errors import InputError

FORMAT = "workbench-bundle"
VERSION = 1


def write_bundle(path, base_hash: str, edits: list) -> Path:
    """`edits`: (ledger Event, patch file path, (weights before, weights after)) triples, oldest
    first, the hashes those of applying the edits in order on the base model (`Workbench.bundle`:
    after a revert out of the middle they differ from the recorded ones, which are kept as
    `recorded_weights_before` / `recorded_weights_after`). Written atomically."""
    path = Path(path)
    if not edits:
        raise InputError("no edit is in force: nothing to bundle", field="bundle")
    manifest = {"format": FORMAT, "version": VERSION, "base_hash": base_hash, "edits": []}
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for i, (event, patch_path, (before, after)) in enumerate(edits):
            name = f"patches/{i:04d}.safetensors"
            z.write(patch_path, name)
            rec = {k: v for k, v in event.to_dict().items() if k not in ("seq", "parent", "parent_hash")}
            if (before, after) != (event.weights_before, event.weights_after):
                rec.update(recorded_weights_before=event.weights_before, recorded_weights_after=event.weights_after)
            manifest["edits"].append({**rec, "weights_before": before, "weights_after": after, "bundle_file": name})
        z.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_manifest(path) -> tuple[zipfile.ZipFile, dict]:
    """The open zip and its manifest; InputError naming the file when it is not a bundle."""
    path = Path(path)
    if not path.is_file():
        raise InputError("bundle not found", file=path)
    from workbench.core.jsonio import loads
    try:
        z = zipfile.ZipFile(path)
        manifest = loads(z.read("manifest.json").decode("utf-8"), path)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not a workbench bundle: {e}", file=path) from None
    if not isinstance(manifest, dict):
        raise InputError(f"not a workbench bundle: its manifest is a JSON {type(manifest).__name__}, not an object",
                         file=path)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise InputError(f"not a {FORMAT} version {VERSION}", file=path, field="format")
    return z, manifest


class Bundle:
    """An open bundle checked against a base model: its edit records, oldest first, and
    `extract(i, dest)` writing edit i's patch file after checking its sha256."""

    def __init__(self, path, z: zipfile.ZipFile, manifest: dict):
        self.path, self._zip, self.edits = Path(path), z, manifest["edits"]
        self.weights_before = self.edits[0]["weights_before"]

    def extract(self, i: int, dest: Path) -> None:
        rec = self.edits[i]
        data = self._zip.read(rec["bundle_file"])
        if hashlib.sha256(data).hexdigest() != rec["patch_sha256"]:
            raise InputError(f"edit {i + 1} ({rec['id']}): patch file was changed (sha256 mismatch)", file=self.path)
        dest.write_bytes(data)


@contextlib.contextmanager
def read_bundle(path, base_hash: str):
    """Open a bundle for replay on a model whose base weights hash is `base_hash`.

    Example:
        >>> with read_bundle("h.wbbundle", wb.base_hash) as b: len(b.edits)   # doctest: +SKIP
        2
    """
    z, manifest = read_manifest(path)
    try:
        if manifest["base_hash"] != base_hash:
            raise InputError(f"the bundle was made on another base model (weights sha256 "
                             f"{manifest['base_hash'][:12]}…, this one is {base_hash[:12]}…)",
                             file=path, field="base_hash")
        yield Bundle(path, z, manifest)
    finally:
        z.close()
