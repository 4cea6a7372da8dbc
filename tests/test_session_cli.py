"""The session CLI end to end with the real `ft` editor on the shipped model."""
import json
import shlex
import subprocess
import sys

from .conftest import REPO

EDITS = REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl"


def _wb(*args, cwd):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def _runner(capsys):
    """`workbench ARGS` in this process: (returncode, stdout, stderr) like subprocess.run's."""
    from types import SimpleNamespace
    from workbench.cli.main import main

    def run(*args, cwd=None):
        capsys.readouterr()
        code = main([str(a) for a in args])
        got = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=got.out, stderr=got.err)
    return run


def test_edit_log_undo_rollback_verify_export_bundle(tmp_path, capsys, monkeypatch):
    # the first command through the console script as a user runs it; the rest in-process (the
    # same main(), without a Python start and torch import per command)
    monkeypatch.chdir(tmp_path)
    _in = _runner(capsys)
    one = tmp_path / "one.jsonl"
    one.write_text(EDITS.read_text().splitlines()[0] + "\n")
    two = tmp_path / "two.jsonl"
    two.write_text("\n".join(EDITS.read_text().splitlines()[1:3]) + "\n")
    ws = ["--workspace", tmp_path / "ws", "--author", "alice"]
    r = _wb("edit", "--editor", "ft", "--requests", one, "--json", tmp_path / "e1.json", *ws, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    e1 = json.loads((tmp_path / "e1.json").read_text())
    assert e1["kind"] == "edit" and e1["author"] == "alice" and e1["metrics_after"]["reliability"] >= 0.9
    assert "reliability" in r.stdout and "before" in r.stdout
    r = _in("edit", "--editor", "ft", "--requests", two, "--param", "objective=last", "--param", "steps=30", *ws,
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _in("edit", "--editor", "ft", "--requests", two, "--gate", "reliability>=1.5", *ws)
    assert r.returncode == 3 and "rejected by gate" in r.stdout
    r = _in("log", "--json", tmp_path / "log.json", *ws)
    log = json.loads((tmp_path / "log.json").read_text())
    assert [e["kind"] for e in log] == ["edit", "edit", "rejected"] and "e0002" in r.stdout
    r = _in("show", "e0003", "--card", *ws)
    assert r.returncode == 0 and "status: rejected" in r.stdout and "| `reliability>=1.5` |" in r.stdout
    r = _in("show", "e0002", "--card", *ws)
    assert "applied on top of: e0001" in r.stdout and "--param objective=last" in r.stdout
    # the card's two commands redo e0001 (made on the base model) on a fresh workspace: the same weights
    r = _in("show", "e0001", "--card", *ws)
    redo = [line for line in r.stdout.splitlines() if line.startswith("workbench ")]
    assert redo[0].startswith("workbench show e0001") and "applied on top of: nothing" in r.stdout
    r = _in(*shlex.split(redo[0])[1:], "--workspace", tmp_path / "ws")
    assert r.returncode == 0 and len((tmp_path / "e0001_requests.jsonl").read_text().splitlines()) == 1
    r = _in(*shlex.split(redo[1])[1:], "--workspace", tmp_path / "ws_redo", "--json", tmp_path / "redo.json",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "redo.json").read_text())["weights_after"] == log[0]["weights_after"]
    r = _in("show", "e0003", "--card", "--workspace", tmp_path / "ws_redo")
    assert r.returncode == 2 and "e0003" in r.stderr
    r = _in("bundle", tmp_path / "h.wbbundle", *ws)
    assert r.returncode == 0, r.stderr
    r = _in("undo", *ws)
    assert r.returncode == 0 and "e0002" in r.stdout
    r = _in("export", tmp_path / "exported", *ws)
    assert r.returncode == 0 and (tmp_path / "exported" / "model.safetensors").is_file()
    r = _in("rollback", "base", *ws)
    assert r.returncode == 0, r.stderr
    r = _in("verify", *ws)
    assert r.returncode == 0 and "ok: 5 events" in r.stdout, r.stdout + r.stderr
    r = _in("show", "e0001", *ws)
    assert json.loads(r.stdout)["hparams"]["objective"] == "target"
    other = ["--workspace", tmp_path / "ws2"]
    r = _in("apply-bundle", tmp_path / "h.wbbundle", *other)
    assert r.returncode == 0 and "replayed 2 edit(s)" in r.stdout, r.stderr
    r = _in("verify", *other)
    assert r.returncode == 0, r.stdout


def test_bad_inputs_change_nothing(tmp_path, capsys):
    # in this process: refusals need no Python start and torch import each (the console script
    # itself is exercised by test_edit_log_undo_rollback_verify_export_bundle)
    run = _runner(capsys)
    ws = ["--workspace", tmp_path / "ws"]
    lines = EDITS.read_text().splitlines()[:3]
    bad = json.loads(lines[1])
    bad["target_new"] = " "
    f = tmp_path / "batch.jsonl"
    f.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    r = run("edit", "--editor", "ft", "--requests", f, *ws, cwd=tmp_path)
    assert r.returncode == 2 and "batch.jsonl:2" in r.stderr and "target_new" in r.stderr
    assert not (tmp_path / "ws").exists()
    r = run("edit", "--editor", "fx", "--requests", f, *ws, cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'ft'" in r.stderr
    good = tmp_path / "good.jsonl"
    good.write_text(lines[0] + "\n")
    r = run("edit", "--editor", "ft", "--requests", good, "--param", "lr=-1", *ws, cwd=tmp_path)
    assert r.returncode == 2 and "lr" in r.stderr
    r = run("edit", "--editor", "ft", "--requests", good, "--gate", "reliability=>0.9", *ws, cwd=tmp_path)
    assert r.returncode == 2 and "gate" in r.stderr
    r = run("log", *ws, cwd=tmp_path)
    assert r.returncode == 0 and "e0001" not in r.stdout
    r = run("undo", *ws, cwd=tmp_path)
    assert r.returncode == 2 and "nothing to undo" in r.stderr


def test_log_fits_80_columns_with_every_id_kind_and_time_whole(tmp_path, capsys, monkeypatch):
    one = tmp_path / "one.jsonl"
    one.write_text(EDITS.read_text().splitlines()[0] + "\n")
    ws = ["--workspace", tmp_path / "ws"]
    run = _runner(capsys)
    assert run("edit", "--editor", "ft", "--requests", one, "--note", "why " * 40, *ws).returncode == 0
    assert run("undo", *ws).returncode == 0
    monkeypatch.setenv("COLUMNS", "80")  # rich reads the width of a terminal that is not there from here
    r = run("log", *ws)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and max(len(line) for line in lines) <= 80
    edit = next(line for line in lines if line.strip().startswith("e0001"))
    undo = next(line for line in lines if line.strip().startswith("e0002"))
    assert " edit " in edit and " ft " in edit and "why why" in edit and edit.rstrip().endswith("…")
    assert " undo " in undo and "→ e0001" in undo
    import re
    assert all(re.search(r" \d\d-\d\d \d\d:\d\d ", line) for line in (edit, undo))  # the time, whole
    assert len([line for line in lines if "why" in line]) == 1  # the long note on one line


def test_editors_table_has_a_capabilities_column_each_and_one_editor_its_hyperparameters(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _wb = _runner(capsys)  # in-process: the table is the same, without three Python starts
    r = _wb("editors")
    assert r.returncode == 0
    assert "capabilities" in r.stdout and "what it does" in r.stdout
    kfac = next(line for line in r.stdout.splitlines() if line.strip("│┃ ").startswith("kfac "))
    rome = next(line for line in r.stdout.splitlines() if line.strip("│┃ ").startswith("rome "))
    assert "forgets" in kfac and "batch" in kfac and "batch" not in rome and "stacks" in rome
    r = _wb("editors", "rome")
    assert r.returncode == 0 and "capabilities:" in r.stdout and "mom2_n_samples" in r.stdout
    r = _wb("editors", "nope")
    assert r.returncode == 2 and "nope" in r.stderr


def test_a_closed_pipe_ends_a_command_quietly(tmp_path):
    # `workbench … | head -2`: the reader leaves early; no traceback, a non-zero status. `cache`
    # prints plain lines (141, the shell's SIGPIPE status), `editors` a rich table (rich's own 1)
    import subprocess
    import sys
    for cmd, status in ((["cache"], 141), (["editors"], 1)):
        p = subprocess.Popen([sys.executable, "-m", "workbench.cli", *cmd], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.close()  # before the first line is written (`head` closes after its own): every write fails
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) == status and "Traceback" not in err and "BrokenPipe" not in err, (cmd, err)


def test_editors_lists_capabilities_and_hyperparameters(tmp_path):
    r = _wb("editors", "--json", cwd=tmp_path)
    info = {e["name"]: e for e in json.loads(r.stdout)}
    assert info["ft"]["capabilities"]["batch"] is True
    assert {h["name"] for h in info["ft"]["hyperparameters"]} >= {"layer", "objective", "lr", "norm_constraint"}


def test_the_readme_edit_example_is_admitted_by_its_own_gate(tmp_path):
    # issue 18: the README's example edit was rejected by its gate, so the commands after it had
    # nothing in force. Run it as written (the block's `head` and `workbench edit` lines).
    import re
    text = (REPO / "README.md").read_text()
    head = re.search(r"^head -n 3 (\S+) > /tmp/three\.jsonl$", text, re.M)
    edit = re.search(r"^(workbench edit --editor ft --requests /tmp/three\.jsonl .*?)$(?:\n\s+(.*?)$)?", text, re.M)
    assert head and edit, "the README's editing example moved; update this test"
    three = tmp_path / "three.jsonl"
    three.write_text("".join((REPO / head.group(1)).read_text().splitlines(keepends=True)[:3]))
    line = (edit.group(1).rstrip("\\ ") + " " + (edit.group(2) or "")).replace("/tmp/three.jsonl", str(three))
    argv = shlex.split(line.split("#")[0])[1:]
    r = _wb(*argv, "--workspace", tmp_path / "ws", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout and "FAILED" not in r.stdout
