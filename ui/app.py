"""The Streamlit entry point: it only routes. Run it with `workbench ui`.

Each page lives in `ui/views/` and talks to this browser session's `Workbench`
(`ui.state.get_workbench`), exactly as the CLI does.
"""
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="Model editing workbench", layout="wide")
pages = [
    st.Page(str(HERE / "model.py"), title="Model", default=True),
    st.Page(str(HERE / "edit.py"), title="Edit"),
    st.Page(str(HERE / "compare.py"), title="Compare"),
    st.Page(str(HERE / "unlearn.py"), title="Unlearn"),
    st.Page(str(HERE / "merge.py"), title="Merge"),
    st.Page(str(HERE / "history.py"), title="History"),
    st.Page(str(HERE / "benchmarks.py"), title="Benchmarks"),
]
st.navigation(pages).run()
