"""`workbench bench`: the lifelong, unlearning and merge benchmarks, each printing a table."""
from __future__ import annotations

import json
from pathlib import Path

from workbench.cli.args import int64, editor_params, names, parse_params, writable_output


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks that print tables")
    bsub = b.add_subparsers(dest="bench_cmd", required=True)
    ll = bsub.add_parser("lifelong", help="T sequential edits, scored on the final model (the WISE protocol)")
    ll.add_argument("--editors", default="ft", help="comma-separated editor names")
    ll.add_argument("--T", default="1,10,100", help="comma-separated numbers of sequential edits: checkpoints "
                                                    "of one run per editor")
    ll.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ll.add_argument("--requests", type=Path, default=None, help="edit requests (default: the world's counterfactuals)")
    ll.add_argument("--param", action="append", default=[], metavar="EDITOR:K=V",
                    help="hyperparameter for one editor, e.g. wise:steps=50 (repeatable)")
    ll.add_argument("--batch", type=int64, default=1,
                    help="requests per edit: sequential batches (AlphaEdit's and MEMIT's protocol); each T a multiple")
    ll.add_argument("--repeats", type=int64, default=7,
                    help="timed forward passes of the edited and the unedited model per checkpoint (overhead spread)")
    ll.add_argument("--baseline", default=None,
                    help="one of --editors: every other editor's rows are also compared with its, paired by request "
                         "(difference [95%% interval], McNemar or Wilcoxon, Holm-corrected)")
    ll.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    ll.set_defaults(func=_cmd_bench_lifelong)
    cp = bsub.add_parser("compare", help="paired comparison of saved lifelong or unlearning runs on the same requests")
    cp.add_argument("files", type=Path, nargs="+",
                    help="`bench lifelong --json` or `bench unlearn --json` files, all of one kind "
                         "(one file may hold several editors)")
    cp.add_argument("--baseline", default=None,
                    help="the row label to compare against (default: the first file's first editor); "
                         "unlearning runs also take 'oracle' and 'before'")
    cp.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm's correction")
    cp.set_defaults(func=_cmd_bench_compare)
    ul = bsub.add_parser("unlearn", help="forget editors on the canaries and forget-split people, before -> after")
    ul.add_argument("--editors", default="kfac,prune,ga,npo", help="comma-separated forget editor names")
    ul.add_argument("--sets", default="canaries,people", help="comma-separated forget sets: canaries, people, quotes, and the capability arithmetic")
    ul.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ul.add_argument("--limit", type=int64, default=None, help="only the first N requests of each set")
    ul.add_argument("--heldout", type=int64, default=None, help="only the first N held-out texts (perplexity, nDCG) and items of each utility suite")
    ul.add_argument("--exposure-samples", type=int64, default=100, help="alternative secrets per canary")
    ul.add_argument("--param", action="append", default=[], metavar="EDITOR:K=V",
                    help="hyperparameter for one editor, e.g. kfac:rho=0.5 (repeatable)")
    ul.add_argument("--oracle", default="default",
                    help="retrain oracle measured as one more row per set: a model folder or shipped name "
                         "(default: world-llama-oracle when benching the default model; 'none': no oracle row)")
    ul.add_argument("--relearn", action="store_true",
                    help="relearning check: fine-tune each unlearned model on 10%% of the forget set, "
                         "measure how much of the rest comes back")
    ul.add_argument("--sustain", action="store_true",
                    help="sustainability check: forget the set as 8 sequential requests, utility at k = 1, 2, 4, 8")
    ul.add_argument("--repeats", type=int64, default=1,
                    help="apply (and undo) each edit N times: seconds as the median [quartiles]")
    ul.add_argument("--baseline", default=None,
                    help="one of --editors, 'oracle' or 'before': every row is also compared with it on the same "
                         "set, paired by request and item (difference [95%% interval], McNemar or Wilcoxon, "
                         "Holm-corrected)")
    ul.add_argument("--json", type=Path, default=None,
                    help="write the rows as JSON here, and the plots as HTML next to it")
    ul.set_defaults(func=_cmd_bench_unlearn)
    mg = bsub.add_parser("merge", help="LoRA adapters per edit batch, merged with every peft combination type")
    mg.add_argument("--batches", type=int64, default=10, help="number of edit batches = adapters")
    mg.add_argument("--size", type=int64, default=50, help="edits per batch")
    mg.add_argument("--types", default=None, help="comma-separated combination types (default: all)")
    mg.add_argument("--weight", type=float, default=1.0, help="every adapter's merge weight")
    mg.add_argument("--density", type=float, default=0.5, help="density of the pruning combination types")
    mg.add_argument("--lora", action="append", default=[], metavar="K=V", help="lora hyperparameter (repeatable)")
    mg.add_argument("--no-wise", action="store_true", help="skip the WISE comparison row")
    mg.add_argument("--no-retrieval", action="store_true", help="skip the adapter retrieval rows")
    mg.add_argument("--mos-momentum", type=float, default=0.1,
                    help="MOS training's pull toward the earlier adapters for the MOS rows (0: no MOS rows)")
    mg.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    mg.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    mg.set_defaults(func=_cmd_bench_merge)


def _cmd_bench_lifelong(args) -> int:
    writable_output(args.json, "--json")  # before minutes of work
    from workbench.core.errors import InputError
    from workbench.bench.lifelong import DEFAULT_REQUESTS, run, table
    try:
        Ts = [int(t) for t in args.T.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {args.T!r}", field="--T") from None
    editors = names(args.editors)
    if args.baseline is not None and args.baseline not in editors:
        raise InputError(f"{args.baseline!r} is not one of --editors ({', '.join(editors)})", field="--baseline")
    rows = run(editors, Ts, requests_path=args.requests or DEFAULT_REQUESTS, model_dir=args.model,
               params=editor_params(args.param), batch=args.batch, repeats=args.repeats)
    code = _print_rows(rows, table, args.json)
    _write_figures(rows, args.json)
    if args.baseline is not None:
        from workbench.bench.lifelong import paired_table
        print()
        print(paired_table(rows, args.baseline))
    return code


def _cmd_bench_compare(args) -> int:
    from workbench.core.errors import InputError
    from workbench.core.jsonio import read_json
    from workbench.bench import lifelong, unlearn
    if not 0 < args.alpha < 1:
        raise InputError(f"must be between 0 and 1, got {args.alpha}", field="--alpha")
    # the kind of run: unlearning rows name a forget set, lifelong rows a T
    first = read_json(args.files[0])
    kind = unlearn if isinstance(first, list) and first and isinstance(first[0], dict) and "set" in first[0] \
        else lifelong
    rows = kind.load_runs(args.files) if kind is unlearn else kind.load_rows(args.files)
    baseline = args.baseline or rows[0]["label"]
    print(kind.paired_table(rows, baseline, alpha=args.alpha))
    return 0


def _write_figures(rows: list[dict], json_path) -> None:
    if json_path is not None:
        from workbench.bench.plots import write_figures
        for path in write_figures(rows, json_path):
            print(f"wrote {path}")


def _cmd_bench_unlearn(args) -> int:
    writable_output(args.json, "--json")  # before minutes of work
    from workbench.core.errors import InputError
    from workbench.bench.unlearn import ORACLE_ROW, default_oracle, paired_table, run, table
    editors = names(args.editors)
    oracle = None if args.oracle == "none" else args.oracle
    if args.baseline is not None and args.baseline not in (*editors, "before", "oracle", ORACLE_ROW):
        raise InputError(f"{args.baseline!r} is not one of --editors ({', '.join(editors)}), 'oracle' or 'before'",
                         field="--baseline")
    if args.baseline in ("oracle", ORACLE_ROW) and (oracle is None or (oracle == "default"
                                                                      and default_oracle(args.model) is None)):
        raise InputError("no oracle row to compare with: pass --oracle MODEL", field="--baseline")
    rows = run(editors, names(args.sets), model_dir=args.model, params=editor_params(args.param),
               limit=args.limit, heldout_limit=args.heldout, exposure_samples=args.exposure_samples,
               oracle_dir=oracle, relearn=args.relearn, sustain=args.sustain, repeats=args.repeats)
    code = _print_rows(rows, table, args.json)
    _write_figures(rows, args.json)
    if args.baseline is not None:
        print()
        print(paired_table(rows, args.baseline))
    return code


def _cmd_bench_merge(args) -> int:
    writable_output(args.json, "--json")  # before minutes of work
    from workbench.bench.merge import ALL_TYPES, run, table
    lora = parse_params(args.lora, flag="--lora")
    rows = run(batches=args.batches, size=args.size, types=names(args.types) if args.types else ALL_TYPES,
               lora_params=lora, weight=args.weight, density=args.density, wise=not args.no_wise,
               retrieval=not args.no_retrieval, mos_momentum=args.mos_momentum, model_dir=args.model)
    return _print_rows(rows, table, args.json)


def _print_rows(rows: list[dict], table, json_path: Path | None) -> int:
    print(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    return 0
