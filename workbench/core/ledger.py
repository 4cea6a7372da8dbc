"""The edit ledger: an append-only, hash-chained history of a model in an SQLite database.

Every event — an applied edit, a rejected one, an undo, a rollback, a single revert, a
bundle replay — is one row, written in one transaction, never updated. Each row carries
the hash of its parent row and a hash of itself, so changing any row by hand breaks the
chain and `verify` names the row. Patch files live beside the database; a row stores the
sha256 of its patch file, so an altered file is named too.

Which edits are in force ("active") is not stored: it is derived by replaying the events,
so there is no mutable state that could disagree with the history. A tag names a point of the
history (an event, or "base") and is an event itself, so who named what, when, is chained too.
Which steps of a plan (`workbench run`) have finished is bookkeeping beside the chain
(`plan_steps`): the events those steps recorded are in the chain.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

from workbench.core.errors import InputError, WorkbenchError

SCHEMA_VERSION = 3  # 2: the `context` column (seed, gates and their outcome, intervals, changed probes); 3: tag
# events and the `plan_steps` table
EVENT_KINDS = ("edit", "rejected", "undo", "rollback", "revert", "tag")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    parent TEXT,
    editor TEXT,
    hparams TEXT,
    requests TEXT,
    metrics_before TEXT,
    metrics_after TEXT,
    weights_before TEXT NOT NULL,
    weights_after TEXT NOT NULL,
    patch_file TEXT,
    patch_sha256 TEXT,
    patch_bytes INTEGER,
    targets TEXT,
    author TEXT NOT NULL,
    created_at TEXT NOT NULL,
    duration_s REAL,
    note TEXT,
    parent_hash TEXT NOT NULL,
    record_hash TEXT NOT NULL,
    context TEXT
);
CREATE TABLE IF NOT EXISTS plan_steps (
    plan_hash TEXT NOT NULL,
    step INTEGER NOT NULL,
    action TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    summary TEXT,
    PRIMARY KEY (plan_hash, step)
);
"""
# Columns added after schema 1: a workspace made before gains them on open, and a row hashes them
# only when set, so every row written before still verifies.
_ADDED_COLUMNS = {"context": "TEXT"}


def _v1_hint(recorded_hash: str | None, given_model: str) -> str:
    """When a workspace was made on the version-1 shipped model (the default before the world
    moved to version 2) and another model is given: the model to open it with."""
    from workbench.core.paths import MODELS_V1
    if not MODELS_V1.is_dir() or Path(given_model).resolve() == MODELS_V1.resolve():
        return ""
    from workbench.core.model import load_model
    from workbench.core.patch import weights_hash
    if weights_hash(load_model(MODELS_V1)[0]) != recorded_hash:  # the only sure test: the weights
        return ""
    return ("; it was made on the version-1 shipped model (the default model is now trained on world "
            f"version 2): open it with --model {MODELS_V1.name}")


class LedgerError(WorkbenchError):
    """The ledger is inconsistent with itself, its patch files or the model."""


@dataclass(frozen=True)
class Event:
    """One row of the history. JSON columns are decoded; `targets` lists affected edit ids."""
    seq: int
    id: str
    kind: str
    parent: str | None
    editor: str | None
    hparams: dict | None
    requests: list | None
    metrics_before: dict | None
    metrics_after: dict | None
    weights_before: str
    weights_after: str
    patch_file: str | None
    patch_sha256: str | None
    patch_bytes: int | None
    targets: list | None
    author: str
    created_at: str
    duration_s: float | None
    note: str | None
    parent_hash: str
    record_hash: str
    context: dict | None = None  # how the event came about and what it measured beyond the means

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_JSON_COLUMNS = ("hparams", "requests", "metrics_before", "metrics_after", "targets", "context")
_COLUMNS = [f.name for f in fields(Event)]


def record_hash(row: dict) -> str:
    """sha256 of the canonical JSON of every column but `record_hash` (JSON columns decoded)."""
    body = {k: row.get(k) for k in _COLUMNS if k != "record_hash" and not (k in _ADDED_COLUMNS and row.get(k) is None)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Ledger:
    """The SQLite history of one workspace folder.

    Example:
        >>> led = Ledger.open("/tmp/ws", base_hash="ab12...", base_model="data/models/world-llama")  # doctest: +SKIP
        >>> led.active()  # ids of the edits in force, oldest first  # doctest: +SKIP
        []
    """

    def __init__(self, root: Path, conn: sqlite3.Connection):
        self.root, self.conn = root, conn
        self.patch_dir = root / "patches"

    @classmethod
    def open(cls, root: str | Path, *, base_hash: str, base_model: str) -> "Ledger":
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / "patches").mkdir(exist_ok=True)
        except OSError as e:  # a read-only file system, no permission, a file in the way
            raise InputError(f"cannot create the workspace here ({e.strerror or type(e).__name__})", file=root) from None
        conn = sqlite3.connect(root / "ledger.sqlite", isolation_level=None)  # explicit transactions
        conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(f"not a workbench ledger: {e}", file=root / "ledger.sqlite") from None
        have = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
        try:
            for name, sql_type in _ADDED_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE events ADD COLUMN {name} {sql_type}")
        except sqlite3.OperationalError as e:
            raise InputError(f"cannot bring the ledger to schema {SCHEMA_VERSION}: {e}",
                             file=root / "ledger.sqlite") from None
        led = cls(root, conn)
        meta = led.meta()
        if not meta:
            with led.transaction():
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("base_hash", base_hash), ("base_model", base_model)])
        elif meta.get("base_hash") != base_hash:
            raise InputError(f"this workspace belongs to another base model (weights sha256 {meta.get('base_hash')}, "
                             f"first loaded from {meta.get('base_model')}); the model given hashes to {base_hash}"
                             + _v1_hint(meta.get("base_hash"), base_model), file=root)
        return led

    def close(self) -> None:
        self.conn.close()

    def meta(self) -> dict:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def transaction(self):
        return _Transaction(self.conn)

    # ------------------------------------------------------------------ reading

    def events(self) -> list[Event]:
        rows = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events ORDER BY seq").fetchall()
        return [self._event(r) for r in rows]

    def _event(self, r) -> Event:
        d = dict(zip(_COLUMNS, r))
        for k in _JSON_COLUMNS:
            d[k] = json.loads(d[k]) if d[k] is not None else None
        return Event(**d)

    def get(self, event_id: str) -> Event:
        r = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE id = ?", (event_id,)).fetchone()
        if r is None:
            known = [e.id for e in self.events()][-5:]
            raise InputError(f"no event {event_id!r} in the ledger (latest: {', '.join(known) or 'none'})",
                             field="edit_id")
        return self._event(r)

    def active(self) -> list[str]:
        """Ids of the edits in force, oldest first, derived by replaying the events."""
        return active_edits(self.events())

    def head_hash(self) -> str:
        """The weights hash the model has after the last event (the base hash if none)."""
        last = self.conn.execute("SELECT weights_after FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return last[0] if last else self.meta()["base_hash"]

    # ------------------------------------------------------------------ writing

    def last_seq(self) -> int:
        """The sequence number of the newest event (0 when there is none)."""
        return self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def next_id(self) -> str:
        return f"e{self.last_seq() + 1:04d}"

    def append(self, **values) -> Event:
        """Append one event in one transaction, chained to the previous one."""
        with self.transaction():
            last = self.conn.execute("SELECT seq, id, record_hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq = (last[0] if last else 0) + 1
            row = {k: None for k in _COLUMNS}
            row.update(values)
            row.update(seq=seq, parent=last[1] if last else None,
                       parent_hash=last[2] if last else genesis_hash(self.meta()))
            if row["kind"] not in EVENT_KINDS:
                raise ValueError(f"unknown event kind {row['kind']!r}")
            row["record_hash"] = record_hash(row)
            stored = {k: (json.dumps(row[k], sort_keys=True) if k in _JSON_COLUMNS and row[k] is not None else row[k])
                      for k in _COLUMNS}
            self.conn.execute(f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                              [stored[k] for k in _COLUMNS])
        return self.get(row["id"])

    def tags(self) -> dict[str, str]:
        """Tag name -> the event id (or "base") it names, from the tag events."""
        return {e.context["tag"]: e.targets[0] for e in self.events() if e.kind == "tag"}

    def record_step(self, plan_hash: str, step: int, action: str, summary: dict) -> None:
        """Mark step `step` (0-based) of the plan hashing to `plan_hash` finished."""
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO plan_steps VALUES (?, ?, ?, ?, ?)",
                              (plan_hash, step, action, utc_now(), json.dumps(summary, sort_keys=True)))

    def steps_done(self, plan_hash: str) -> dict[int, dict]:
        """The finished steps of a plan: index -> {action, finished_at, summary}."""
        rows = self.conn.execute("SELECT step, action, finished_at, summary FROM plan_steps WHERE plan_hash = ? "
                                 "ORDER BY step", (plan_hash,)).fetchall()
        return {r[0]: {"action": r[1], "finished_at": r[2], "summary": json.loads(r[3]) if r[3] else {}}
                for r in rows}

    # ------------------------------------------------------------------ checking

    def verify_chain(self) -> list[str]:
        """Problems with the rows and patch files, each naming the event or file; [] = clean."""
        problems = []
        prev_hash, prev_id = genesis_hash(self.meta()), None
        for e in self.events():
            d = e.to_dict()
            if record_hash(d) != e.record_hash:
                problems.append(f"event {e.id} (seq {e.seq}): its contents do not match its record hash "
                                f"(the row was changed after it was written)")
            if e.parent_hash != prev_hash or e.parent != prev_id:
                problems.append(f"event {e.id} (seq {e.seq}): parent link broken (a row before it was changed, "
                                f"removed or inserted)")
            if e.patch_file is not None:
                path = self.root / e.patch_file
                if not path.is_file():
                    problems.append(f"event {e.id}: patch file {e.patch_file} is missing")
                elif file_sha256(path) != e.patch_sha256:
                    problems.append(f"event {e.id}: patch file {e.patch_file} was changed (sha256 mismatch)")
            prev_hash, prev_id = e.record_hash, e.id
        return problems

    def orphan_patches(self) -> list[Path]:
        """Patch files no event refers to: left by a crash between writing a patch and its row."""
        known = {e.patch_file for e in self.events() if e.patch_file}
        return [p for p in self.patch_dir.iterdir() if f"patches/{p.name}" not in known]


def _peek(root, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of a read-only query on a workspace's ledger without opening the workspace (no model
    needed: a plan's dry run checks against them); none when there is no ledger yet, or it
    predates the table asked for."""
    path = Path(root) / "ledger.sqlite"
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise InputError(f"not a workbench ledger: {e}", file=path) from None
    except sqlite3.DatabaseError as e:
        raise InputError(f"not a workbench ledger: {e}", file=path) from None


def peek_tags(root, *, plan_hash: str | None = None) -> set[str]:
    """The tag names a workspace's ledger holds (`_peek`); with `plan_hash`, only the tags that
    plan's own steps gave."""
    contexts = [json.loads(r[0]) for r in _peek(root, "SELECT context FROM events WHERE kind = 'tag'")]
    return {c["tag"] for c in contexts if plan_hash is None or (c.get("plan") or {}).get("hash") == plan_hash}


def peek_steps_done(root, plan_hash: str) -> set[int]:
    """The finished steps (0-based) of a plan in a workspace (`_peek`)."""
    return {r[0] for r in _peek(root, "SELECT step FROM plan_steps WHERE plan_hash = ?", (plan_hash,))}


def peek_summary(root) -> dict | None:
    """What a workspace holds, read without opening it (no model loaded: the UI lists sessions
    with it): its base model, how many events, the last one, the edits in force; None when the
    folder has no ledger."""
    meta = dict(_peek(root, "SELECT key, value FROM meta"))
    if not meta:
        return None
    rows = _peek(root, "SELECT id, kind, targets, editor, created_at FROM events ORDER BY seq")
    # active_edits reads only id, kind and targets
    light = [SimpleNamespace(id=r[0], kind=r[1], targets=json.loads(r[2]) if r[2] else None) for r in rows]
    last = rows[-1] if rows else None
    return {"base_model": meta.get("base_model"), "base_hash": meta.get("base_hash"), "events": len(rows),
            "active": active_edits(light), "last_event": last[0] if last else None,
            "last_kind": last[1] if last else None, "last_editor": last[3] if last else None,
            "last_at": last[4] if last else None}


def utc_now() -> str:
    """The time stamp every ledger row uses: UTC, ISO 8601, to the second."""
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def genesis_hash(meta: dict) -> str:
    """The first event's parent hash: binds the chain to the base model recorded in `meta`."""
    body = json.dumps({k: meta.get(k) for k in ("schema_version", "base_hash")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def active_edits(events: list[Event]) -> list[str]:
    """Replay the history: which edits are in force after the last event, oldest first."""
    active: list[str] = []
    for e in events:
        if e.kind == "edit":
            active.append(e.id)
        elif e.kind in ("undo", "rollback", "revert"):
            for t in e.targets or []:
                if t in active:
                    active.remove(t)
    return active


class _Transaction:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
