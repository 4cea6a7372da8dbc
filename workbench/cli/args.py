"""Argument helpers shared by every command group: K=V hyper-parameters, placement flags, numbers."""
from __future__ import annotations

import argparse
from pathlib import Path

from workbench.core.errors import InputError


INT64_MAX = 2**63 - 1  # torch seeds and sizes are 64-bit: a larger number overflowed deep inside


def int64(text: str) -> int:
    """An integer option that fits 64 bits (argparse's error names the option otherwise)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text} does not fit in 64 bits (at most {INT64_MAX})")
    return v


def nonneg_int(text: str) -> int:
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    v = int64(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def load_cli_requests(args) -> tuple[list, list[str]]:
    """The `--requests` file in `--format`, and with `--skip-invalid` what was left out: each
    record said on stderr (file, line, field) and returned for the command's --json."""
    import sys
    from workbench.eval.requests import load_requests
    skipped: list = []
    reqs = load_requests(args.requests, args.format, skip_invalid=getattr(args, "skip_invalid", False),
                         skipped=skipped)
    for e in skipped:
        print(f"skipped: {e}", file=sys.stderr)
    return reqs, [str(e) for e in skipped]


def writable_output(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work: an edit must not be
    committed, nor a half-hour bench run, and then fail on its report."""
    import os
    if path is None:
        return
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise InputError("cannot write here (missing folder, a folder, or no permission)", file=path, field=flag)


class Parser(argparse.ArgumentParser):
    """argparse, refusing in one line: `error: workbench edit: argument --seed: …` and exit 2 (the
    usage is one `--help` away), as every other refusal of the command line reads."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def names(csv: str) -> list[str]:
    return [x.strip() for x in csv.split(",") if x.strip()]


def parse_params(items: list[str], flag: str = "--param") -> dict:
    """`K=V` strings -> {K: V} (stripped); anything else names `flag`."""
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"expected K=V, got {item!r}", field=flag)
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def editor_params(items: list[str]) -> dict[str, dict]:
    """`EDITOR:K=V` strings -> {editor: {K: V}}."""
    params: dict[str, dict] = {}
    for item in items:
        editor, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            raise InputError(f"expected EDITOR:K=V, got {item!r}", field="--param")
        params.setdefault(editor.strip(), {}).update(parse_params([kv]))
    return params


def add_placement(p) -> None:
    """--device-map, --max-memory, --offload-folder: a model too big for one device (accelerate)."""
    p.add_argument("--device-map", default=None, metavar="auto",
                   help="place a model too big for one device with accelerate (auto, balanced, sequential)")
    p.add_argument("--max-memory", action="append", default=[], metavar="DEVICE=SIZE",
                   help="memory cap per device for --device-map, e.g. cpu=200MB or 0=10GiB (repeatable); "
                        "what does not fit is offloaded")
    p.add_argument("--offload-folder", type=Path, default=None, help="folder for offloaded weights, if needed")


def placement(args) -> dict:
    """The load_model/Workbench keywords from `add_placement`'s options."""
    return dict(device_map=args.device_map, max_memory=parse_params(args.max_memory, "--max-memory") or None,
                offload_folder=args.offload_folder)
