"""A new editor is one folder plus its entry point: the toy editor in `tests/plugin/` is
registered through a `workbench.editors` entry point declared here (a dist-info on the path,
as pip would write it) and runs through the CLI, the session, a bundle replay and the UI's
Edit page without any change to `workbench/` or `ui/`."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workbench.editing import registry
from workbench.eval.requests import EditRequest, dump_requests

PLUGIN = Path(__file__).resolve().parent / "plugin"
REQ = EditRequest("Wymkeark Holviol is a citizen of", "Kelmoria", subject="Wymkeark Holviol")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The toy package installed the way pip would: its folder and a dist-info with the entry point."""
    site = tmp_path / "site"
    info = site / "toy_editor-1.0.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text("Metadata-Version: 2.1\nName: toy-editor\nVersion: 1.0\n")
    info.joinpath("entry_points.txt").write_text(textwrap.dedent("""\
        [workbench.editors]
        toy-scale = toy_editor:ToyScaleEditor
        """))
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(PLUGIN), os.environ.get("PYTHONPATH", "")]))
    registry._refresh_entry_points()
    yield site
    registry._refresh_entry_points()
    sys.modules.pop("toy_editor", None)
    registry.EDITORS.pop("toy-scale", None)


def test_session_records_the_derived_settings_and_a_bundle_replays_it(plugin, tmp_path):
    from workbench.editing.session import Workbench
    assert "toy-scale" in registry.editor_names()
    wb = Workbench(None, tmp_path / "a")
    base = wb.weights_hash()
    event = wb.edit("toy-scale", [REQ], {"factor": "2"})
    assert event.kind == "edit" and event.editor == "toy-scale"
    assert event.hparams == {"factor": 2.0, "layer": wb.adapter.default_layer(0.5)}  # derived, as it ran
    assert wb.weights_hash() != base and wb.verify() == []
    bundle = wb.bundle(tmp_path / "h.wbbundle")

    other = Workbench(None, tmp_path / "b")
    (replayed,) = other.apply_bundle(bundle)
    assert replayed.editor == "toy-scale" and other.weights_hash() == wb.weights_hash()
    other.undo()
    assert other.weights_hash() == base


def test_cli_edits_with_the_plugin(plugin, tmp_path):
    reqs = tmp_path / "one.jsonl"
    dump_requests(reqs, [REQ])
    ws = tmp_path / "ws"
    run = lambda *a: subprocess.run([sys.executable, "-m", "workbench.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    listed = run("editors")
    assert listed.returncode == 0 and "toy-scale" in listed.stdout
    r = run("edit", "--editor", "toy-scale", "--requests", str(reqs), "--param", "factor=1.25",
            "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    shown = run("show", "e0001", "--workspace", str(ws))
    assert '"editor": "toy-scale"' in shown.stdout and '"factor": 1.25' in shown.stdout


def test_ui_edit_page_lists_and_applies_the_plugin(plugin, tmp_path, monkeypatch):
    pytest.importorskip("streamlit.testing.v1")
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("WORKBENCH_UI_WORKSPACE", str(tmp_path / "ui"))
    monkeypatch.delenv("WORKBENCH_UI_MODEL", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "ui" / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/edit.py").run()
    assert "toy-scale" in at.selectbox(key="edit_editor").options
    at.selectbox(key="edit_editor").set_value("toy-scale").run()
    at.text_input(key="edit_toy-scale_factor").set_value("1.1")
    at.button(key="edit_apply").click().run()
    assert not at.exception, [e.value for e in at.exception]
    wb = at.session_state["wb"]
    (event,) = [e for e in wb.log() if e.kind == "edit"]
    assert event.editor == "toy-scale" and event.hparams["factor"] == 1.1
