"""Per-browser-session state: one `Workbench` per session, in its own workspace folder.

Streamlit reruns the page script on every interaction, so anything expensive (the model)
must live in `st.session_state`, which Streamlit keeps per browser session. Each session
gets a fresh uuid subfolder of the workspace root: two people with the page open never see
(or undo) each other's edits, and neither touches the root itself.

The launcher passes its options through environment variables (read here) rather than
script arguments, so an AppTest configures the app the same way (monkeypatch.setenv).

Example:
    >>> wb = get_workbench()        # inside a page script  # doctest: +SKIP
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import streamlit as st

ENV_MODEL = "WORKBENCH_UI_MODEL"
ENV_WORKSPACE = "WORKBENCH_UI_WORKSPACE"
KEY = "wb"


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
            return self._pool.submit(value, *args, **kwargs).result()
        return on_session_thread

    def close(self) -> None:
        try:
            self._pool.submit(self._wb.close).result()
        finally:
            self._pool.shutdown(wait=False)


def open_workbench(model_dir: str | None) -> SessionWorkbench:
    """A new Workbench on `model_dir` (None: the shipped model) in a new session folder.

    Raises what loading raises (WorkbenchError, OSError, ValueError...); the caller shows it.
    """
    ws = workspace_root() / f"session-{uuid.uuid4().hex[:12]}"
    with st.spinner(f"loading model {model_dir or '(shipped world-llama)'}…"):
        return SessionWorkbench(model_dir, ws)


def get_workbench():
    """This session's Workbench, loading the configured model on first use; None (with the
    reason on the page) when it does not load, so every page still renders."""
    if KEY not in st.session_state:
        st.session_state[KEY] = None
        st.session_state["wb_error"] = None
        try:
            st.session_state[KEY] = open_workbench(configured_model())
        except Exception as e:  # any load failure is the user's folder, not a crash of the app
            st.session_state["wb_error"] = f"{type(e).__name__}: {e}"
    wb = st.session_state[KEY]
    if wb is None:
        st.error(f"The model could not be loaded: {st.session_state.get('wb_error')}. "
                 f"Choose another model folder on the Model page.")
    return wb


def replace_workbench(model_dir: str | None) -> None:
    """Switch this session to another model (and a fresh workspace); on failure raise and keep
    the current one."""
    new = open_workbench(model_dir)
    old = st.session_state.get(KEY)
    st.session_state[KEY] = new
    st.session_state["wb_error"] = None
    for k in [k for k in st.session_state if k.startswith("last_")]:
        del st.session_state[k]  # results shown on pages belonged to the old model
    if old is not None:
        old.close()
