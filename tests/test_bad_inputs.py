"""A corpus of bad inputs, each tried through the CLI and the Python API.

Every case must end in a clear message naming what is wrong (the file, line or field), a
non-zero exit status from the CLI, and nothing changed: the workspace's ledger rows and
patch files (hash-checked) and, for the API, the live model's weights hash and history.

The workspace starts with two recorded `ft` edits, so "unchanged" means "still exactly those".
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from workbench.cli.main import main
from workbench.core.errors import WorkbenchError
from workbench.eval.requests import load_requests

from .conftest import MODEL, REPO

pytestmark = pytest.mark.usefixtures("one_thread")
GOOD = '{"prompt": "Vahir Thiosteal was born in", "target_new": "Lorvan"}\n'
FAST = {"steps": "3"}


@dataclass
class Case:
    id: str
    argv: list[str]                       # CLI arguments; {d} = the case folder, {ws} = the workspace
    match: str                            # regex the message must contain
    files: dict[str, bytes | str] = field(default_factory=dict)  # written under {d} first
    api: Callable | None = None           # api(wb, d): must raise WorkbenchError matching `match`


def _edit(name: str, match: str, content: bytes | str, *extra: str, fmt: str | None = None) -> Case:
    """An `edit` whose request file `name` holds `content`; the API loads it and applies ft."""
    def api(wb, d):
        wb.edit("ft", load_requests(d / name, fmt), FAST)
    argv = ["edit", "--editor", "ft", "--requests", "{d}/" + name, *(["--format", fmt] if fmt else []),
            "--param", "steps=3", *extra]
    return Case(f"requests-{name}", argv, match, {name: content}, api)


def _apply(cid: str, editor: str, params: dict, match: str, content: str = GOOD, gate: str | None = None) -> Case:
    """An `edit` with good requests and a bad editor, hyperparameter or gate."""
    def api(wb, d):
        wb.edit(editor, load_requests(d / "r.jsonl"), params, gates=gate)
    argv = ["edit", "--editor", editor, "--requests", "{d}/r.jsonl"] + [
        a for k, v in params.items() for a in ("--param", f"{k}={v}")] + (["--gate", gate] if gate else [])
    return Case(cid, argv, match, {"r.jsonl": content}, api)


def _ws(cid: str, argv: list[str], match: str, api, files=None) -> Case:
    return Case(cid, argv, match, files or {}, api)


LONG_TARGET = " ".join(["Lorvan"] * 3000)  # far beyond the model's 256-token context
CASES = [
    # --- request files: syntax, encoding, shape, fields ---
    _edit("malformed.jsonl", r"malformed\.jsonl:2:", GOOD + '{"prompt": "x", "target_new": \n'),
    _edit("truncated.jsonl", r"truncated\.jsonl:1:", '{"prompt": "Vahir Thiosteal was born in", "targ'),
    _edit("truncated.json", r"truncated\.json", '[{"prompt": "a", "target_new": "b"}, {"prompt": '),
    _edit("int_prompt.jsonl", r"int_prompt\.jsonl:1:.*prompt", '{"prompt": 5, "target_new": "Lorvan"}\n'),
    _edit("null_target.jsonl", r"null_target\.jsonl.*target_new", '{"prompt": "a b", "target_new": null}\n'),
    _edit("no_target.jsonl", r"no_target\.jsonl:1:", '{"prompt": "Vahir Thiosteal was born in"}\n'),
    _edit("empty_target.jsonl", r"empty_target\.jsonl.*target_new", '{"prompt": "a b", "target_new": ""}\n'),
    _edit("blank_target.jsonl", r"blank_target\.jsonl.*target_new", '{"prompt": "a b", "target_new": "   "}\n'),
    _edit("empty_prompt.jsonl", r"empty_prompt\.jsonl.*prompt", '{"prompt": "", "target_new": "Lorvan"}\n'),
    _edit("long_prompt.jsonl", r"long_prompt\.jsonl:1:.*\"prompt\".*context",
          json.dumps({"prompt": LONG_TARGET, "target_new": "Lorvan"}) + "\n"),
    _edit("long_target.jsonl", r"long_target\.jsonl.*(context|long)",
          json.dumps({"prompt": "Vahir Thiosteal was born in", "target_new": LONG_TARGET}) + "\n"),
    _edit("latin1.jsonl", r"latin1\.jsonl.*(UTF-8|utf-8)",
          '{"prompt": "Vahir Thiost\xe9al was born in", "target_new": "Lorvan"}\n'.encode("latin-1")),
    _edit("list_record.jsonl", r"list_record\.jsonl:1:.*object", '["Vahir Thiosteal was born in", "Lorvan"]\n'),
    _edit("number_line.jsonl", r"number_line\.jsonl:2:.*object", GOOD + "42\n"),
    _edit("empty.jsonl", r"empty\.jsonl", ""),
    _edit("nested.json", r"nested\.json:1:.*nested too deeply", "[" * 100_000 + "]" * 100_000),
    _edit("nested_line.jsonl", r"nested_line\.jsonl:2:.*nested too deeply",
          GOOD + '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
    _edit("duplicate_key.jsonl", r"duplicate_key\.jsonl:1:.*target_new.*twice",
          '{"prompt": "Vahir Thiosteal was born in", "target_new": "Lorvan", "target_new": "Pellwyn"}\n'),
    _edit("nul_byte.jsonl", r"nul_byte\.jsonl:1:.*prompt.*NUL",
          '{"prompt": "Vahir Thiosteal\\u0000 was born in", "target_new": "Lorvan"}\n'),
    _edit("only_blank_lines.jsonl", r"only_blank_lines\.jsonl", "\n\n  \n"),
    _edit("unknown_shape.jsonl", r"unknown_shape\.jsonl", '{"question": 1, "foo": "bar"}\n'),
    _edit("locality_wrong.jsonl", r"locality_wrong\.jsonl.*locality",
          '{"prompt": "a b", "target_new": "c", "locality": "not a list"}\n'),
    _edit("rephrase_wrong.jsonl", r"rephrase_wrong\.jsonl:1:.*rephrase",
          '{"prompt": "a b", "target_new": "c", "rephrase_prompts": [1, 2]}\n'),
    _edit("zsre_bad.json", r"zsre_bad\.json", '[{"src": "Who?", "answers": []}]', fmt="zsre"),
    _edit("cf_bad.json", r"cf_bad\.json", '[{"requested_rewrite": {"prompt": 3}}]', fmt="counterfact-rome"),
    _edit("forced_wrong_format.jsonl", r"format|forced_wrong_format", GOOD, fmt="tofu"),
    _edit("unknown_format.jsonl", r"unknown.*format|format", GOOD, fmt="no-such-format"),
    Case("requests-missing-file", ["edit", "--editor", "ft", "--requests", "{d}/nope.jsonl"], r"nope\.jsonl",
         api=lambda wb, d: wb.edit("ft", load_requests(d / "nope.jsonl"), FAST)),
    Case("requests-a-folder", ["edit", "--editor", "ft", "--requests", "{d}"], r"is a folder",
         api=lambda wb, d: wb.edit("ft", load_requests(d), FAST)),
    # --- editors, hyperparameters, capabilities, gates ---
    _apply("unknown-editor", "no-such-editor", {}, r"no-such-editor"),
    _apply("misspelled-editor", "wsie", {}, r"wsie.*wise|wise.*wsie"),
    _apply("steps-zero", "ft", {"steps": "0"}, r"steps"),
    _apply("steps-not-a-number", "ft", {"steps": "many"}, r"steps"),
    _apply("unknown-hparam", "ft", {"stepz": "3"}, r"stepz"),
    _apply("lr-negative", "ft", {"lr": "-1", **FAST}, r"lr"),
    _apply("layer-out-of-range", "ft", {"layer": "99", **FAST}, r"layer"),
    _apply("wise-alpha-negative", "wise", {"alpha": "-1"}, r"alpha"),
    _apply("kfac-rho-zero", "kfac", {"rho": "0"}, r"rho", content='{"type": "forget", "kind": "text", '
           '"prefix": "The locker code of Gragoux Bounbronthax is", "suffix": "6 4 6 2 4 2"}\n'),
    _apply("merge-density", "merge", {"density": "1.5"}, r"density"),
    _apply("forget-request-to-edit-editor", "ft", FAST, r"ForgetRequest|forget", content='{"type": "forget", '
           '"kind": "text", "prefix": "The locker code is", "suffix": "1 2 3"}\n'),
    _apply("edit-request-to-forget-editor", "ga", {}, r"EditRequest|forget", content=GOOD),
    # the API refuses several requests to ROME; the CLI takes them one at a time, but checks every
    # one (these lack ROME's subject) before the first edit
    _apply("several-to-single-edit-editor", "rome", {}, r"one request|subject", content=GOOD + GOOD.replace(
        "born in", "raised in")),
    _apply("bad-gate", "ft", FAST, r"gate|reliabilty", gate="reliabilty>=0.9"),
    _apply("bad-gate-operator", "ft", FAST, r"gate|=>", gate="reliability=>0.9"),
    _apply("no-adapters-to-merge", "merge", {}, r"no enabled LoRA adapter"),
    # --- the workspace: ids, bundles, exports, models ---
    _ws("rollback-unknown-id", ["rollback", "e9999"], r"e9999", lambda wb, d: wb.rollback("e9999")),
    _ws("revert-unknown-id", ["revert", "e9999"], r"e9999", lambda wb, d: wb.revert("e9999")),
    _ws("show-unknown-id", ["show", "e9999"], r"e9999", lambda wb, d: wb.show("e9999")),
    _ws("revert-not-single-revert", ["revert", "e0001"], r"e0001|ft|revert",
        lambda wb, d: wb.revert("e0001")),
    _ws("export-over-existing", ["export", "{d}/taken"], r"taken|exists", lambda wb, d: wb.export(d / "taken"),
        {"taken/keep.txt": "do not overwrite"}),
    _ws("bundle-not-a-zip", ["apply-bundle", "{d}/b.wbbundle"], r"b\.wbbundle",
        lambda wb, d: wb.apply_bundle(d / "b.wbbundle"), {"b.wbbundle": b"PK\x03\x04 this is not a zip"}),
    _ws("bundle-missing", ["apply-bundle", "{d}/none.wbbundle"], r"none\.wbbundle",
        lambda wb, d: wb.apply_bundle(d / "none.wbbundle")),
    _ws("bundle-of-other-base", ["apply-bundle", "{d}/other.wbbundle"], r"base|other\.wbbundle",
        lambda wb, d: wb.apply_bundle(d / "other.wbbundle"), {"other.wbbundle": "__OTHER_BUNDLE__"}),
    _ws("bundle-without-manifest", ["apply-bundle", "{d}/empty.wbbundle"], r"empty\.wbbundle|manifest",
        lambda wb, d: wb.apply_bundle(d / "empty.wbbundle"), {"empty.wbbundle": "__EMPTY_ZIP__"}),
    _ws("bundle-manifest-a-list", ["apply-bundle", "{d}/list.wbbundle"], r"list\.wbbundle.*manifest is a JSON list",
        lambda wb, d: wb.apply_bundle(d / "list.wbbundle"), {"list.wbbundle": "__MANIFEST__[]__"}),
    _ws("bundle-manifest-duplicate-key", ["apply-bundle", "{d}/dup.wbbundle"], r"dup\.wbbundle.*format.*twice",
        lambda wb, d: wb.apply_bundle(d / "dup.wbbundle"),
        {"dup.wbbundle": '__MANIFEST__{"format": "a", "format": "b"}__'}),
    _ws("model-folder-missing", ["log", "--model", "{d}/no-model"], r"no-model",
        lambda wb, d: _open_other(d / "no-model", wb)),
    _ws("model-folder-without-config", ["log", "--model", "{d}/m"], r"config\.json",
        lambda wb, d: _open_other(d / "m", wb), {"m/weights.txt": "x"}),
    _ws("model-config-corrupt", ["log", "--model", "{d}/corrupt"], r"corrupt|load",
        lambda wb, d: _open_other(d / "corrupt", wb), {"corrupt": "__CORRUPT_CONFIG__"}),
    _ws("model-safetensors-corrupt", ["log", "--model", "{d}/badweights"], r"badweights|load",
        lambda wb, d: _open_other(d / "badweights", wb), {"badweights": "__CORRUPT_WEIGHTS__"}),
    _ws("workspace-of-another-base", ["log", "--model", "{d}/othermodel"], r"base",
        lambda wb, d: _open_other(d / "othermodel", wb), {"othermodel": "__OTHER_MODEL__"}),
    Case("eval-bad-retain", ["eval", "--requests", str(REPO / "data/benchmarks/forget_canaries.jsonl"),
                             "--retain", "{d}/retain.jsonl"], r"retain\.jsonl", {"retain.jsonl": '{"prompt": 3}\n'}),
    Case("eval-missing-heldout", ["eval", "--requests", str(REPO / "data/benchmarks/forget_canaries.jsonl"),
                                  "--heldout-text", "{d}/nothing.jsonl"], r"nothing\.jsonl"),
    Case("bench-unknown-set", ["bench", "unlearn", "--sets", "everyone"], r"everyone"),
    Case("eval-long-prompt", ["eval", "--requests", "{d}/long.jsonl"], r"long\.jsonl:1:.*prompt.*context",
         {"long.jsonl": json.dumps({"prompt": LONG_TARGET, "target_new": "Lorvan"}) + "\n"}),
    Case("eval-long-locality", ["eval", "--requests", "{d}/loc.jsonl"], r"loc\.jsonl:1:.*locality.*context",
         {"loc.jsonl": json.dumps({"prompt": "Vahir Thiosteal was born in", "target_new": "Lorvan",
                                   "locality": [{"prompt": LONG_TARGET, "answer": "x"}]}) + "\n"}),
    Case("eval-json-unwritable", ["eval", "--requests", "{d}/r.jsonl", "--json", "{d}/no/such/folder/out.json"],
         r"out\.json.*--json.*cannot write", {"r.jsonl": GOOD}),
    Case("seed-beyond-64-bits", ["edit", "--editor", "ft", "--requests", "{d}/r.jsonl", "--seed",
                                 "1180591620717411303424"], r"--seed.*64 bits", {"r.jsonl": GOOD}),
    Case("option-not-a-number", ["eval", "--requests", "{d}/r.jsonl", "--batch-size", "many"],
         r"--batch-size.*integer", {"r.jsonl": GOOD}),
    Case("bench-merge-unknown-type", ["bench", "merge", "--types", "average"], r"average"),
    Case("world-generate-over-existing", ["world", "generate", "--out", "{d}/taken"], r"taken|exists",
         {"taken/keep.txt": "x"}),
]


def _open_other(model_dir: Path, wb):
    from workbench.editing.session import Workbench
    Workbench(model_dir, wb.workspace)


def _special(path: Path, marker: str, ws: Path) -> None:
    """Files that must be built, not written: other models and bundles."""
    if marker == "__CORRUPT_CONFIG__":
        shutil.copytree(MODEL, path)
        (path / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    elif marker == "__CORRUPT_WEIGHTS__":
        shutil.copytree(MODEL, path)
        (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    elif marker == "__OTHER_MODEL__":  # the shipped model with one weight nudged: another base
        import torch
        from safetensors.torch import load_file, save_file
        shutil.copytree(MODEL, path)
        sd = load_file(path / "model.safetensors")
        k = sorted(sd)[0]
        sd[k] = sd[k].clone()
        sd[k].view(-1)[0] += 1.0
        save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
        assert torch.is_tensor(sd[k])
    elif marker == "__OTHER_BUNDLE__":  # a real bundle whose base is another model
        with zipfile.ZipFile(ws / "../good.wbbundle") as z, zipfile.ZipFile(path, "w") as out:
            for item in z.infolist():
                data = z.read(item)
                if item.filename.endswith(".json") and b"base_hash" in data:
                    d = json.loads(data)
                    d["base_hash"] = "0" * 64
                    data = json.dumps(d).encode()
                out.writestr(item, data)
    elif marker == "__EMPTY_ZIP__":
        zipfile.ZipFile(path, "w").close()
    elif marker.startswith("__MANIFEST__"):  # a zip whose manifest.json holds the rest of the marker
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("manifest.json", marker[len("__MANIFEST__"):-len("__")])


def _materialize(case: Case, d: Path, ws: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("__") and content.endswith("__"):
            _special(p, content, ws)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")


def _ledger_state(ws: Path) -> tuple:
    """Rows (id, record hash) in order, and every patch file's sha256."""
    conn = sqlite3.connect(f"file:{ws / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, record_hash FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    files = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in (ws / "patches").iterdir())
    return rows, files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from workbench.eval.requests import EditRequest
    from workbench.editing.session import Workbench
    root = tmp_path_factory.mktemp("bad-inputs")
    wb = Workbench(None, root / "ws")
    wb.edit("ft", [EditRequest("Vahir Thiosteal was born in", "Lorvan")], FAST)
    wb.edit("ft", [EditRequest("Vahir Thiosteal works for", "Umbra Textiles")], FAST)  # e0001 is now in the middle
    wb.bundle(root / "good.wbbundle")
    yield wb, root
    wb.close()


def _argv(case: Case, d: Path, ws: Path) -> list[str]:
    argv = [a.replace("{d}", str(d)).replace("{ws}", str(ws)) for a in case.argv]
    session_cmds = {"edit", "log", "show", "undo", "rollback", "revert", "export", "bundle", "apply-bundle", "verify"}
    return argv + (["--workspace", str(ws)] if argv[0] in session_cmds else [])


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.api is not None for c in CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cli_refuses_with_a_clear_message_and_changes_nothing(case, workspace, tmp_path, capsys):
    wb, root = workspace
    ws = wb.workspace
    d = tmp_path / "case"
    _materialize(case, d, ws)
    before = _ledger_state(ws)
    code = main(_argv(case, d, ws))
    err = capsys.readouterr().err
    assert code != 0, f"exit status 0 for {case.id}"
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(case.match, err, flags=__import__("re").I), err
    assert _ledger_state(ws) == before


@pytest.mark.parametrize("case", [c for c in CASES if c.api is not None], ids=lambda c: c.id)
def test_api_raises_a_clear_error_and_changes_nothing(case, workspace, tmp_path):
    wb, root = workspace
    d = tmp_path / "case"
    _materialize(case, d, wb.workspace)
    h, n, state = wb.weights_hash(), len(wb.log()), _ledger_state(wb.workspace)
    with pytest.raises(WorkbenchError, match=f"(?i){case.match}"):
        case.api(wb, d)
    assert wb.weights_hash() == h and len(wb.log()) == n and _ledger_state(wb.workspace) == state


def test_a_checkpoint_without_its_tokenizer_is_refused_naming_what_is_missing(tmp_path):
    from tests.tiny_models import tiny_model
    from workbench.core.errors import InputError
    from workbench.core.model import load_model
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(InputError, match="holds no tokenizer.*tokenizer.json.*save_pretrained") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_a_workspace_that_cannot_be_written_refuses_before_any_work(tmp_path, capsys):
    # root ignores permission bits, so the unwritable places are made of what no one can write
    # through: a file where the workspace's parent folder should be, and a folder where the commit
    # lock file should be (what a read-only file system did: the edit ran, then the lock failed)
    from workbench.editing.session import Workbench
    (tmp_path / "blocker").write_text("a file, not a folder")
    req = tmp_path / "r.jsonl"
    req.write_text(GOOD)
    code = main(["edit", "--editor", "ft", "--requests", str(req), "--param", "steps=3",
                 "--workspace", str(tmp_path / "blocker" / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and "cannot create" in err
    ws = tmp_path / "ws"
    wb = Workbench(None, ws)
    wb.edit("ft", load_requests(req), FAST)
    (ws / ".lock").unlink()
    (ws / ".lock").mkdir()
    before, h = _ledger_state(ws), wb.weights_hash()
    for act in (lambda: wb.edit("ft", load_requests(req), FAST), wb.undo, lambda: wb.tag("v1")):
        with pytest.raises(WorkbenchError, match="cannot be written.*nothing was changed"):
            act()
    assert _ledger_state(ws) == before and wb.weights_hash() == h


def test_a_refused_command_leaves_no_new_workspace_and_skipped_records_are_reported(tmp_path, capsys):
    ws = tmp_path / "new-ws"
    assert main(["undo", "--workspace", str(ws)]) == 2 and not ws.exists()
    capsys.readouterr()
    req = tmp_path / "r.jsonl"
    req.write_text(GOOD + '{"prompt": 5, "target_new": "x"}\n')
    out = tmp_path / "e.json"
    assert main(["edit", "--editor", "ft", "--requests", str(req), "--param", "steps=3", "--skip-invalid",
                 "--workspace", str(ws), "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped: " in err and "r.jsonl:2:" in err and "Warning" not in err
    doc = json.loads(out.read_text())
    assert len(doc["events"]) == 1 and "r.jsonl:2:" in doc["skipped"][0]


_IN_READ_ONLY_MOUNT = r"""
import contextlib, io, json, sys
from workbench.cli.main import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_workspace_on_a_read_only_file_system_refuses_and_stays_byte_identical(tmp_path):
    # A real read-only mount: in a private user and mount namespace (unshare -rm), the folder is
    # bind-mounted onto itself read-only, so even root gets EROFS, and nothing outside the namespace
    # sees the mount. Every command that writes must refuse in one line, exit 2, and leave every
    # byte as it was; one that only reads still works.
    import subprocess
    import sys
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no unshare: user and mount namespaces are not available here")
    from workbench.editing.session import Workbench
    ro = tmp_path / "ro"
    ws = ro / "ws"
    req = tmp_path / "r.jsonl"
    req.write_text(GOOD)
    wb = Workbench(None, ws)
    wb.edit("ft", load_requests(req), FAST)
    wb.close()
    before = _files(ro)
    edit = ["edit", "--editor", "ft", "--requests", str(req), "--param", "steps=3", "--workspace"]
    argvs = [edit + [str(ws)], ["undo", "--workspace", str(ws)], ["tag", "v1", "--workspace", str(ws)],
             edit + [str(ro / "new-ws")], ["log", "--workspace", str(ws)]]
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
              f"{sys.executable} -c \"$0\" \"$1\"")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script, _IN_READ_ONLY_MOUNT, json.dumps(argvs)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for argv, (code, err) in zip(argvs[:4], results[:4]):
        assert code == 2, (argv, code, err)
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, (argv, err)
        assert "(Read-only file system)" in err, (argv, err)
    assert all("cannot be written (Read-only file system); nothing was changed" in e for _, e in results[:3])
    assert "cannot create the workspace here" in results[3][1]
    assert results[4][0] == 0, results[4]  # reading the history needs no write
    assert _files(ro) == before and not (ro / "new-ws").exists()
