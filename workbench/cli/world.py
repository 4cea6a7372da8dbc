"""`workbench world`: generate the world, train and measure its model, write the benchmark sets."""
from __future__ import annotations

import json
from pathlib import Path

from workbench.cli.args import nonneg_int, parse_params
from workbench.core.paths import BENCHMARKS, DEFAULT_MODEL, WORLD as DEFAULT_WORLD


def add_parser(sub) -> None:
    world = sub.add_parser("world", help="generate the synthetic world, train and measure its model")
    wsub = world.add_subparsers(dest="world_cmd", required=True)
    g = wsub.add_parser("generate", help="write the world's JSON/JSONL files (deterministic from --seed)")
    g.add_argument("--seed", type=nonneg_int, default=None, help="random seed (default: the shipped world's)")
    g.add_argument("--out", type=Path, default=DEFAULT_WORLD, help="output folder (must not exist)")
    g.add_argument("--people", type=nonneg_int, default=1200, help="number of fictional people")
    g.add_argument("--canaries", type=nonneg_int, default=None,
                   help="number of canary strings (--version 1; default 120; version 2 sets them with "
                        "--suite canaries_per_level=N)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.add_argument("--version", type=int, default=2, choices=(1, 2),
                   help="schema version: 2 (the shipped world's) has the skill suites (reading, rules, "
                        "arithmetic) and memorized text by frequency; 1 only people, canaries and filler")
    g.add_argument("--suite", action="append", default=[], metavar="K=V",
                   help="a version-2 suite count, e.g. reading=500 or heldout_share=0.1 (repeatable)")
    g.set_defaults(func=_cmd_world_generate)

    t = wsub.add_parser("train", help="train the default model from scratch on the world (CPU)")
    t.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world folder")
    t.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="output model folder")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    t.add_argument("--no-card", action="store_true", help="skip measuring and writing the model card")
    t.add_argument("--without", type=Path, action="append", default=None, metavar="FORGET.jsonl",
                   help="train a retrain oracle: the same run without the facts, canaries and quotes this "
                        "forget-request file names (e.g. data/benchmarks/forget_people.jsonl); repeatable")
    from workbench.world.train import TrainConfig  # light: dataclass only
    for f in TrainConfig.__dataclass_fields__.values():
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       dest=f"cfg_{f.name}", help=f"{f.metadata.get('help', '')} (default {f.default})")
    t.set_defaults(func=_cmd_world_train)

    m = wsub.add_parser("measure", help="measure a model on the world (fact recall, canaries, perplexity)")
    m.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    m.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world folder")
    m.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    m.add_argument("--write-card", action="store_true",
                   help="also (re)write the model's card (README.md and card.json beside its weights; needs its "
                        "training.json)")
    m.set_defaults(func=_cmd_world_measure)

    r = wsub.add_parser("requests", help="write the benchmark request sets drawn from the world")
    r.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world folder")
    r.add_argument("--out", type=Path, default=BENCHMARKS, help="output folder (must not exist)")
    r.add_argument("--seed", type=nonneg_int, default=None, help="random seed (default: the shipped sets')")
    r.add_argument("--edits", type=nonneg_int, default=1000, help="number of counterfactual edits")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    r.set_defaults(func=_cmd_world_requests)


def _cmd_world_generate(args) -> int:
    from workbench.world.generate import DEFAULT_SEED, generate
    seed = DEFAULT_SEED if args.seed is None else args.seed
    from workbench.core.errors import InputError
    from workbench.world.generate import SUITE_COUNTS
    given = parse_params(args.suite, flag="--suite")
    if given and args.version != 2:
        raise InputError("suite counts apply to --version 2 worlds", field="--suite")
    if args.canaries is not None and args.version == 2:
        raise InputError("a version-2 world has canaries_per_level at each repeat count: give "
                         "--suite canaries_per_level=N", field="--canaries")
    suites = {}
    for key, raw in given.items():
        kind = float if isinstance(SUITE_COUNTS.get(key), float) else int
        try:
            suites[key] = kind(raw)
        except ValueError:
            raise InputError(f"cannot read {raw!r} as {kind.__name__}", field=key) from None
    canaries = {} if args.canaries is None else {"n_canaries": args.canaries}  # else generate's default
    out = generate(args.out, seed, n_people=args.people, overwrite=args.overwrite, version=args.version,
                   suites=suites or None, **canaries)
    print(f"wrote world (seed {seed}, schema version {args.version}) to {out}")
    return 0


def _cmd_world_train(args) -> int:
    from workbench.world.card import write_card
    from workbench.world.train import TrainConfig, train
    cfg = TrainConfig(**{k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")})
    summary = train(args.world, args.out, cfg, overwrite=args.overwrite, without=args.without)
    print(f"trained {summary['parameters']:,} parameters in {summary['train_seconds']} s; "
          f"best dev held-out exact {summary['best']['dev_heldout_exact']:.3f} at step {summary['best']['step']}")
    if not args.no_card:
        write_card(args.out, args.world)
        print(f"wrote model card to {args.out / 'README.md'} and {args.out / 'card.json'}")
    return 0


def _cmd_world_measure(args) -> int:
    from workbench.world.card import print_measurements
    from workbench.world.measure import measure
    from workbench.core.model import model_path
    from workbench.core.errors import InputError
    folder = model_path(args.model)
    if args.write_card:
        if not (folder / "training.json").is_file():
            raise InputError("a card needs the model's training.json (written by `workbench world train`)",
                             file=folder, field="--write-card")
        from workbench.world.card import write_card
        result = write_card(folder, args.world)["measured"]
    else:
        result = measure(folder, args.world)
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
