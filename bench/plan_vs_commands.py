"""A plan against the same steps as separate commands: `workbench run PLAN` (one process, the
model loaded once) versus one `workbench edit`/`tag`/`export`/`bundle` command per step, with
ROME's 20 one-request edits as 20 commands (what a user did before plans). Both start from an
empty workspace and an empty statistics cache (each pays ROME's and MEMIT's key statistics
once), one after the other on this machine.

    python bench/plan_vs_commands.py [--json bench/results/plan_vs_commands.json]

Prints both wall times and their ratio, and checks both histories end at the same weights.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EDITS = REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl"
# (editor, first request, count, gate): 100 edits by three editors
STEPS = [("memit", 0, 50, "reliability>=0.8"), ("ft", 50, 30, None), ("rome", 80, 20, None)]

PLAN = """[plan]
workspace = "ws"

[[step]]
action = "edit"
editor = "memit"
requests = "edits.jsonl"
count = 50
gate = "reliability>=0.8"

[[step]]
action = "edit"
editor = "ft"
requests = "edits.jsonl"
start = 50
count = 30

[[step]]
action = "edit"
editor = "rome"
requests = "edits.jsonl"
start = 80
count = 20

[[step]]
action = "tag"
name = "hundred"

[[step]]
action = "export"
out = "exported"

[[step]]
action = "bundle"
out = "history.wbbundle"
"""


def _run(args, cwd, env) -> None:
    r = subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def _weights(ws: Path) -> str:
    import sqlite3
    conn = sqlite3.connect(ws / "ledger.sqlite")
    try:
        return conn.execute("SELECT weights_after FROM events ORDER BY seq DESC LIMIT 1").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    lines = EDITS.read_text().splitlines(keepends=True)[:100]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("plan", "commands"):
            d = tmp / name
            d.mkdir()
            (d / "edits.jsonl").write_text("".join(lines))
            env = {**os.environ, "WORKBENCH_CACHE": str(d / "cache")}  # each run pays the one-time statistics
            t0 = time.perf_counter()
            if name == "plan":
                (d / "plan.toml").write_text(PLAN)
                _run(["run", "plan.toml"], d, env)
            else:
                ws = ["--workspace", "ws"]
                for editor, start, count, gate in STEPS:
                    chunks = [(start, count)] if editor != "rome" else [(start + k, 1) for k in range(count)]
                    for s, n in chunks:
                        f = d / f"r{s}.jsonl"
                        f.write_text("".join(lines[s:s + n]))
                        _run(["edit", "--editor", editor, "--requests", f.name, *ws,
                              *(["--gate", gate] if gate else [])], d, env)
                _run(["tag", "hundred", *ws], d, env)
                _run(["export", "exported", *ws], d, env)
                _run(["bundle", "history.wbbundle", *ws], d, env)
            out[name] = {"seconds": round(time.perf_counter() - t0, 1), "weights": _weights(d / "ws")}
            shutil.rmtree(d / "cache", ignore_errors=True)
            print(f"{name}: {out[name]['seconds']} s", flush=True)
    same = out["plan"]["weights"] == out["commands"]["weights"]
    ratio = out["plan"]["seconds"] / out["commands"]["seconds"]
    print(f"plan / separate commands: {ratio:.2f}; same final weights: {same}")
    if args.json is not None:
        # memit and ft one command each, rome one per request, then tag, export, bundle
        n_commands = sum(1 if editor != "rome" else count for editor, _, count, _ in STEPS) + 3
        args.json.write_text(json.dumps({**out, "ratio": round(ratio, 3), "same_weights": same, "edits": 100,
                                         "separate_commands": n_commands}, indent=2) + "\n")


if __name__ == "__main__":
    main()
