"""Per-browser-session state: one `Workbench` per session, in its own workspace folder.

Streamlit reruns the page script on every interaction, so anything expensive (the model)
must live in `st.session_state`, which Streamlit keeps per browser session. Each new session
gets a fresh uuid subfolder of the workspace root: two people with the page open never see
(or undo) each other's edits, and neither touches the root itself.

The session's folder name is in the page's URL (`?session=session-…`), so a reload, a bookmark
or a second tab reopens it (the edits in force replayed from its ledger); the Model page lists
every session of the workspace root. Two tabs on one session each hold a model: the
workspace lock serializes their edits, and a tab whose model fell behind the ledger is
reopened at the head before it draws, never editing from a stale model.

The launcher passes its options through environment variables (read here) rather than
script arguments, so an AppTest configures the app the same way (monkeypatch.setenv).

Example:
    >>> wb = get_workbench()        # inside a page script  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import streamlit as st

ENV_MODEL = "WORKBENCH_UI_MODEL"
ENV_WORKSPACE = "WORKBENCH_UI_WORKSPACE"
KEY = "wb"
PARAM = "session"  # the URL's query parameter naming the session folder
SESSION_NAME = re.compile(r"session-[0-9a-f]{12}")
SHOW_PROGRESS_AFTER_S = 2.0  # an action shorter than this gets no bar (it would only flicker)


def workspace_root() -> Path:
    root = os.environ.get(ENV_WORKSPACE)
    return Path(root) if root else Path(tempfile.gettempdir()) / "workbench-ui"


def configured_model() -> str | None:
    return os.environ.get(ENV_MODEL) or None


class SessionWorkbench:
    """A `Workbench` whose every method runs on one thread of its own.

    Streamlit runs each rerun of a page on a new thread, but the ledger's SQLite connection
    may only be used by the thread that opened it. So the Workbench is opened on a private
    single-thread executor and every method call is handed to that thread; attributes
    (model, tokenizer, adapter, paths) are read directly. This also serialises the calls of
    one browser session, so two quick clicks never edit the model at the same time.
    """

    def __init__(self, model_dir, workspace):
        from concurrent.futures import ThreadPoolExecutor

        from workbench.editing.session import Workbench
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-session")
        try:
            self._wb = self._pool.submit(Workbench, model_dir, workspace).result()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def __getattr__(self, name):
        import inspect
        value = getattr(self._wb, name)
        if not inspect.ismethod(value):  # the model and tokenizer are callable too: only methods move
            return value

        def on_session_thread(*args, **kwargs):
            return self.run(value, *args, **kwargs)
        return on_session_thread

    def run(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on the session's thread. Past two seconds a progress bar shows its
        step (the `workbench.core.progress` steps and bars of the work), elapsed time and, where
        the step has a count, an estimate of what is left."""
        from concurrent.futures import wait

        from workbench.core.progress import Progress, reporting
        sink = Progress()

        def listened():
            with reporting(sink):
                return fn(*args, **kwargs)
        future = self._pool.submit(listened)
        bar = None
        try:
            while True:
                # wait, not result(timeout): a TimeoutError that fn itself raises is its result
                if wait([future], timeout=0.25).done:
                    return future.result()
                if time.monotonic() - sink.started < SHOW_PROGRESS_AFTER_S:
                    continue
                f = sink.fraction()
                if bar is None:
                    bar = st.progress(0.0)
                bar.progress(f if f is not None else 0.0, text=sink.describe())
        finally:
            if bar is not None:
                bar.empty()

    def close(self) -> None:
        try:
            self._pool.submit(self._wb.close).result()
        finally:
            self._pool.shutdown(wait=False)


def open_workbench(model_dir: str | None, name: str | None = None) -> SessionWorkbench:
    """A Workbench on `model_dir` (None: the shipped model) in the session folder `name` (None: a
    new one); an existing session's edits in force are replayed.

    Raises what loading raises (WorkbenchError, OSError, ValueError...); the caller shows it.
    """
    ws = workspace_root() / (name or f"session-{uuid.uuid4().hex[:12]}")
    with st.spinner(f"loading model {model_dir or '(shipped world-llama)'}" + (f" and session {name}" if name else "")
                    + "…"):
        return SessionWorkbench(model_dir, ws)


def sessions() -> list[dict]:
    """The sessions under the workspace root, newest activity first: name, base model, events,
    edits in force, last event and its time (read from each ledger without loading a model)."""
    from workbench.core.ledger import peek_summary
    root = workspace_root()
    out = []
    for d in (sorted(root.iterdir()) if root.is_dir() else []):
        if not (d.is_dir() and SESSION_NAME.fullmatch(d.name)):
            continue
        try:
            summary = peek_summary(d)
        except Exception:  # a damaged ledger is listed as such, not a crash of the page
            summary = {"damaged": True}
        if summary is not None:
            out.append({"session": d.name, "modified": (d / "ledger.sqlite").stat().st_mtime, **summary})
    return sorted(out, key=lambda r: r["modified"], reverse=True)


def _open_named(name: str) -> SessionWorkbench:
    """Reopen an existing session folder on the model its ledger was started with."""
    from workbench.core.errors import InputError
    from workbench.core.ledger import peek_summary
    if not SESSION_NAME.fullmatch(name or ""):  # the name comes from a URL: it must not reach outside the root
        raise InputError(f"{name!r} is not a session name (session- and 12 hex digits)", field=PARAM)
    summary = peek_summary(workspace_root() / name)
    if summary is None:
        raise InputError(f"no session {name} under {workspace_root()}", field=PARAM)
    return open_workbench(summary["base_model"], name)


def _install(wb: SessionWorkbench) -> None:
    old = st.session_state.get(KEY)
    st.session_state[KEY] = wb
    st.session_state["wb_error"] = None
    st.query_params[PARAM] = Path(wb.workspace).name
    for k in [k for k in st.session_state if k.startswith("last_")]:
        del st.session_state[k]  # results shown on pages belonged to the old session
    if old is not None and old is not wb:
        old.close()


def get_workbench():
    """This session's Workbench: the one the URL names (reopened), else a new session on the
    configured model; None (with the reason on the page) when it does not load, so every page
    still renders. A Workbench that another tab or process moved past is reopened at the head."""
    if KEY not in st.session_state:
        st.session_state[KEY] = None
        st.session_state["wb_error"] = None
        named = st.query_params.get(PARAM)
        try:
            _install(_open_named(named) if named else open_workbench(configured_model()))
        except Exception as e:  # any load failure is the user's folder, not a crash of the app
            st.session_state["wb_error"] = f"{type(e).__name__}: {e}"
    wb = st.session_state[KEY]
    if wb is None:
        st.error(f"The session could not be opened: {st.session_state.get('wb_error')}. "
                 f"Choose another model folder or session on the Model page.")
        return None
    if wb.stale():
        name = Path(wb.workspace).name
        try:
            _install(_open_named(name))
        except Exception as e:
            st.error(f"session {name} was changed elsewhere and could not be reopened: {type(e).__name__}: {e}")
            return None
        st.info(f"Session {name} was changed in another tab or process; reopened at its latest event.")
        wb = st.session_state[KEY]
    return wb


def replace_workbench(model_dir: str | None) -> None:
    """Switch this browser session to another model (and a fresh session folder); on failure
    raise and keep the current one."""
    _install(open_workbench(model_dir))


def switch_session(name: str) -> None:
    """Switch this browser session to the existing session folder `name`; on failure raise and
    keep the current one."""
    _install(_open_named(name))
