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
    v = int64(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


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
