"""`workbench cache`: what the statistics cache holds (K-FAC factors, key second moments), and
clearing it. The statistics are recomputed, once, by the next edit that needs them."""
from __future__ import annotations


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="show (or --clear) the statistics cache: K-FAC factors, key statistics")
    c.add_argument("--clear", action="store_true", help="remove the cached files (every kind, or --kind)")
    c.add_argument("--kind", action="append", default=None, metavar="KIND",
                   help="only this kind (repeatable), e.g. kfac or kv")
    c.set_defaults(func=_cmd_cache)


def _cmd_cache(args) -> int:
    from workbench.core import cache
    from workbench.core.errors import InputError
    entries = cache.summary()
    if args.kind:
        unknown = sorted(set(args.kind) - {e["kind"] for e in entries})
        if unknown:
            raise InputError(f"no cached kind {', '.join(unknown)} in {cache.cache_dir()} "
                             f"(there: {', '.join(e['kind'] for e in entries) or 'nothing'})", field="--kind")
    if args.clear:
        files, freed = cache.clear(args.kind)
        print(f"removed {files} file(s), {freed / 2**20:.1f} MiB, from {cache.cache_dir()}")
        return 0
    print(f"{cache.cache_dir()} (set WORKBENCH_CACHE to move it)")
    if not entries:
        print("empty")
    for e in entries:
        if args.kind is None or e["kind"] in args.kind:
            print(f"{e['kind']:<12} {e['files']:>4} file(s) {e['bytes'] / 2**20:>9.1f} MiB  newest {e['newest'] or '—'}")
    return 0
