"""The `workbench` command line. Heavy imports happen inside commands so `--help` is instant."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.core.errors import WorkbenchError
from workbench.core.paths import BENCHMARKS, DEFAULT_MODEL, WORLD as DEFAULT_WORLD


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _add_world(sub) -> None:
    world = sub.add_parser("world", help="generate the synthetic world, train and measure its model")
    wsub = world.add_subparsers(dest="world_cmd", required=True)
    g = wsub.add_parser("generate", help="write the world's JSON/JSONL files (deterministic from --seed)")
    g.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default: the shipped world's)")
    g.add_argument("--out", type=Path, default=DEFAULT_WORLD, help="output folder (must not exist)")
    g.add_argument("--people", type=_nonneg_int, default=1200, help="number of fictional people")
    g.add_argument("--canaries", type=_nonneg_int, default=120, help="number of canary strings")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.set_defaults(func=_cmd_world_generate)

    t = wsub.add_parser("train", help="train the default model from scratch on the world (CPU)")
    t.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world folder")
    t.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="output model folder")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    t.add_argument("--no-card", action="store_true", help="skip measuring and writing the model card")
    from workbench.world.train import TrainConfig  # light: dataclass only
    for f in TrainConfig.__dataclass_fields__.values():
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       dest=f"cfg_{f.name}", help=f"{f.metadata.get('help', '')} (default {f.default})")
    t.set_defaults(func=_cmd_world_train)

    m = wsub.add_parser("measure", help="measure a model on the world (fact recall, canaries, perplexity)")
    m.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    m.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world folder")
    m.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    m.set_defaults(func=_cmd_world_measure)

    r = wsub.add_parser("requests", help="write the benchmark request sets drawn from the world")
    r.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world folder")
    r.add_argument("--out", type=Path, default=BENCHMARKS, help="output folder (must not exist)")
    r.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default: the shipped sets')")
    r.add_argument("--edits", type=_nonneg_int, default=1000, help="number of counterfactual edits")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    r.set_defaults(func=_cmd_world_requests)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks that print tables")
    bsub = b.add_subparsers(dest="bench_cmd", required=True)
    ll = bsub.add_parser("lifelong", help="T sequential edits, scored on the final model (the WISE protocol)")
    ll.add_argument("--editors", default="ft", help="comma-separated editor names")
    ll.add_argument("--T", default="1,10,100", help="comma-separated numbers of sequential edits")
    ll.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ll.add_argument("--requests", type=Path, default=None, help="edit requests (default: the world's counterfactuals)")
    ll.add_argument("--param", action="append", default=[], metavar="EDITOR:K=V",
                    help="hyperparameter for one editor, e.g. wise:steps=50 (repeatable)")
    ll.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    ll.set_defaults(func=_cmd_bench_lifelong)
    ul = bsub.add_parser("unlearn", help="forget editors on the canaries and forget-split people, before -> after")
    ul.add_argument("--editors", default="kfac,prune,ga,npo", help="comma-separated forget editor names")
    ul.add_argument("--sets", default="canaries,people", help="comma-separated forget sets: canaries, people")
    ul.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ul.add_argument("--limit", type=int, default=None, help="only the first N requests of each set")
    ul.add_argument("--heldout", type=int, default=None, help="only the first N held-out texts (perplexity, nDCG)")
    ul.add_argument("--exposure-samples", type=int, default=100, help="alternative secrets per canary")
    ul.add_argument("--param", action="append", default=[], metavar="EDITOR:K=V",
                    help="hyperparameter for one editor, e.g. kfac:rho=0.5 (repeatable)")
    ul.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    ul.set_defaults(func=_cmd_bench_unlearn)
    mg = bsub.add_parser("merge", help="LoRA adapters per edit batch, merged with every peft combination type")
    mg.add_argument("--batches", type=int, default=10, help="number of edit batches = adapters")
    mg.add_argument("--size", type=int, default=50, help="edits per batch")
    mg.add_argument("--types", default=None, help="comma-separated combination types (default: all)")
    mg.add_argument("--weight", type=float, default=1.0, help="every adapter's merge weight")
    mg.add_argument("--density", type=float, default=0.5, help="density of the pruning combination types")
    mg.add_argument("--lora", action="append", default=[], metavar="K=V", help="lora hyperparameter (repeatable)")
    mg.add_argument("--no-wise", action="store_true", help="skip the WISE comparison row")
    mg.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    mg.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    mg.set_defaults(func=_cmd_bench_merge)


def _add_ui(sub) -> None:
    u = sub.add_parser("ui", help="open the browser UI (Streamlit, bound to 127.0.0.1)")
    u.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    u.add_argument("--workspace", type=Path, default=Path(".workbench-ui"),
                   help="workspace root; each browser session gets its own subfolder (default ./.workbench-ui)")
    u.add_argument("--port", type=_nonneg_int, default=8501, help="port on 127.0.0.1 (default 8501)")
    u.set_defaults(func=_cmd_ui)


def _cmd_ui(args) -> int:
    from ui.launch import launch  # streamlit is imported only by the child process
    return launch(args.model, args.workspace, args.port)


def _editor_params(items: list[str]) -> dict[str, dict]:
    """`EDITOR:K=V` strings -> {editor: {K: V}}."""
    from workbench.core.errors import InputError
    from workbench.cli.session import parse_params
    params: dict[str, dict] = {}
    for item in items:
        editor, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            raise InputError(f"expected EDITOR:K=V, got {item!r}", field="--param")
        params.setdefault(editor.strip(), {}).update(parse_params([kv]))
    return params


def _names(csv: str) -> list[str]:
    return [x.strip() for x in csv.split(",") if x.strip()]


def _cmd_bench_lifelong(args) -> int:
    from workbench.core.errors import InputError
    from workbench.bench.lifelong import DEFAULT_REQUESTS, run, table
    try:
        Ts = [int(t) for t in args.T.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {args.T!r}", field="--T") from None
    rows = run(_names(args.editors), Ts, requests_path=args.requests or DEFAULT_REQUESTS, model_dir=args.model,
               params=_editor_params(args.param))
    return _print_rows(rows, table, args.json)


def _cmd_bench_unlearn(args) -> int:
    from workbench.bench.unlearn import run, table
    rows = run(_names(args.editors), _names(args.sets), model_dir=args.model, params=_editor_params(args.param),
               limit=args.limit, heldout_limit=args.heldout, exposure_samples=args.exposure_samples)
    return _print_rows(rows, table, args.json)


def _cmd_bench_merge(args) -> int:
    from workbench.bench.merge import ALL_TYPES, run, table
    from workbench.cli.session import parse_params
    lora = parse_params(args.lora, flag="--lora")
    rows = run(batches=args.batches, size=args.size, types=_names(args.types) if args.types else ALL_TYPES,
               lora_params=lora, weight=args.weight, density=args.density, wise=not args.no_wise,
               model_dir=args.model)
    return _print_rows(rows, table, args.json)


def _print_rows(rows: list[dict], table, json_path: Path | None) -> int:
    print(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Model editing and unlearning workbench.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_world(sub)
    from workbench.cli import eval as eval_cli
    eval_cli.add_parser(sub)
    from workbench.cli import session as session_cli
    session_cli.add_parsers(sub)
    _add_bench(sub)
    _add_ui(sub)
    return p


def _cmd_world_generate(args) -> int:
    from workbench.world.generate import DEFAULT_SEED, generate
    seed = DEFAULT_SEED if args.seed is None else args.seed
    out = generate(args.out, seed, n_people=args.people, n_canaries=args.canaries, overwrite=args.overwrite)
    print(f"wrote world (seed {seed}) to {out}")
    return 0


def _cmd_world_train(args) -> int:
    from workbench.world.card import write_card
    from workbench.world.train import TrainConfig, train
    cfg = TrainConfig(**{k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")})
    summary = train(args.world, args.out, cfg, overwrite=args.overwrite)
    print(f"trained {summary['parameters']:,} parameters in {summary['train_seconds']} s; "
          f"best dev held-out exact {summary['best']['dev_heldout_exact']:.3f} at step {summary['best']['step']}")
    if not args.no_card:
        write_card(args.out, args.world)
        print(f"wrote model card to {args.out / 'README.md'} and {args.out / 'card.json'}")
    return 0


def _cmd_world_measure(args) -> int:
    from workbench.world.card import print_measurements
    from workbench.world.measure import measure
    result = measure(args.model if args.model is not None else _default_model(), args.world)
    print_measurements(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0 if all(t["met"] for t in result["targets"].values()) else 1


def _cmd_world_requests(args) -> int:
    from workbench.world.benchmarks import DEFAULT_BENCH_SEED, write_benchmarks
    seed = DEFAULT_BENCH_SEED if args.seed is None else args.seed
    out = write_benchmarks(args.world, args.out, seed, n_edits=args.edits, overwrite=args.overwrite)
    print(f"wrote benchmark request sets (seed {seed}) to {out}")
    return 0


def _default_model() -> Path:
    return DEFAULT_MODEL


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
