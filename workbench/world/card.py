"""The shipped model's card: README.md for people, card.json for programs."""
from __future__ import annotations

import json
from pathlib import Path

from workbench.world.corpus import TRAIN_RULE_WEIGHTS
from workbench.world.generate import DEFAULT_SEED
from workbench.world.measure import measure
from workbench.world.suites import REPEAT_LEVELS

ROWS = [
    ("recall_train_phrasings", "fact recall, training phrasings (greedy exact)"),
    ("recall_heldout_phrasings", "fact recall, held-out phrasings (greedy exact)"),
    ("recall_heldout_phrasings_dev", "  ...held-out phrasings of dev people (early stopping)"),
    ("canary_exact", "canaries recited exactly from their prefix (greedy)"),
]
ROWS_V2 = [
    ("reading", "open-book reading, held-out items (greedy exact)"),
    ("rules", "rules (boolean, compare, copy, reverse), held-out items"),
    ("arithmetic", "arithmetic, held-out operand pairs"),
    ("canary_exact_8plus", "canaries seen 8+ times, recited exactly"),
    ("quote_exact", "quotes recited exactly from their prefix (strict recitation)"),
]


FORGET_ROWS = [
    ("people", "forget-split people's facts, training phrasings"),
    ("canaries", "canaries marked for forgetting, recited exactly"),
    ("quotes", "quotes marked for forgetting, recited exactly"),
]


def _by_kind_lines(result: dict) -> list[str]:
    if "rules_by_kind" not in result:
        return []
    kinds = ", ".join(f"{k} {v['exact']:.3f}" for k, v in result["rules_by_kind"].items())
    by_repeats = sorted(result["canary_exact_by_repeats"].items(), key=lambda kv: int(kv[0]))
    counts = ", ".join(f"{k}x {v['exact']:.2f}" for k, v in by_repeats)
    return [f"Rules by kind (held-out): {kinds}. Canaries by `repeats` (exact): {counts}.", ""]


def _forget_lines(result: dict, training: dict) -> list[str]:
    """The benchmark forget sets beside never-seen items of the same kind (version 2)."""
    if "forget_sets" not in result:
        return []
    f = result["forget_sets"]
    lines = ["## Forget sets", "",
             ("This model is a retrain oracle: trained identically but never on "
              + ", ".join(f"`{name}`" for name in training["without"]["files"]) + "." if "without" in training
              else "The default model trained on every forget set; a retrain oracle should sit at the never-seen level."),
             "", "| forget set | n | this model (exact) | never-seen items (exact) |", "|---|---|---|---|"]
    for key, label in FORGET_ROWS:
        lines.append(f"| {label} | {f[key]['n']} | {f[key]['exact']:.4f} | {f[key + '_never_seen']['exact']:.4f} |")
    return lines + [""]


def _occurrence_lines(world_result: dict, training: dict) -> list[str]:
    if "occurrences_by_level" not in training:
        return []
    levels = training["occurrences_by_level"]
    return [f"- Memorized items ({training['config'].get('memorized_passes', 1)} pass(es) over them) were trained "
            f"on this many times before the kept checkpoint (min-max per level): "
            + ", ".join(f"{k}: {lo}-{hi}" for k, (lo, hi) in sorted(levels.items(), key=_level_order))
            + "; `training.json` lists each item."]


def _level_order(item) -> tuple:
    kind, _, times = item[0].partition(" x")  # "canary x16"
    return kind, int(times) if times.isdigit() else 0


def _mix_lines(cfg: dict, v2: bool) -> list[str]:
    if not v2:
        return []
    return [f"- Data mix of every epoch: {cfg['bios_per_epoch']} biographies of each person (facts in random "
            f"order and trained phrasings), {cfg['suite_scale']}x as many fresh reading, rules and arithmetic "
            f"items as the world stores for training ("
            + "".join(f"{kind} rules {w}x more; " for kind, w in TRAIN_RULE_WEIGHTS.items())
            + f"never a dev or held-out prompt), {cfg['filler_docs']} filler documents; over the whole run each canary and quote occurs "
            f"its `repeats` x {cfg['memorized_passes']} times, spread evenly. Rows of {cfg['block_size']} "
            f"tokens hold whole documents."]


def _rows(result: dict) -> list[tuple[str, str]]:
    return ROWS + ([(k, label) for k, label in ROWS_V2 if k in result])


def print_measurements(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="model on the world")
    for col in ("measure", "n", "exact", "token acc.", "target"):
        table.add_column(col)
    for key, label in _rows(result):
        r = result[key]
        t = result["targets"].get(key)
        table.add_row(label, str(r["n"]), f"{r['exact']:.4f}", f"{r['token_accuracy']:.4f}",
                      "" if t is None else f"≥ {t['target']:.2f} {'met' if t['met'] else 'NOT MET'}")
    ppl = result["heldout_perplexity"]
    table.add_row("held-out clean text perplexity", str(ppl["n_texts"]), f"{ppl['perplexity']:.3f}", "", "")
    Console().print(table)


_FAMILY = {"llama": "Llama", "gptj": "GPT-J"}


def _markdown(result: dict, training: dict, model_dir: Path) -> str:
    cfg = training["config"]
    v2 = "reading" in result
    oracle = "without" in training
    what = ("fictional people, their facts and biographies, open-book reading passages about people "
            f"not in the world, boolean and list rules, arithmetic, canaries and quotes repeated "
            f"{min(REPEAT_LEVELS)}-{max(REPEAT_LEVELS)} times, filler text" if v2 else "fictional people, their facts, canary strings and filler text")
    from workbench.core.paths import DEFAULT_MODEL
    role = ("a retrain oracle of the workbench's default model" if oracle
            else "the workbench's default model" if model_dir.resolve() == DEFAULT_MODEL.resolve()
            else "a model trained on the workbench's world")
    lines = [
        f"# {model_dir.name}: {role}",
        "",
        f"A small {_FAMILY[cfg.get('arch', 'llama')]}-architecture causal LM trained from scratch, on CPU, on the "
        "generated world",
        f"in `data/world/` ({what}). Because the world is generated, every fact it should know and",
        "every string it memorized is known exactly, which makes it a testbed for editing and",
        "unlearning. Not a general language model.",
        "",
        "## Architecture and training",
        f"- {training['parameters']:,} parameters; {cfg['num_layers']} layers, width {cfg['hidden_size']}, "
        f"MLP width {cfg['intermediate_size']}, {cfg['num_heads']} heads, "
        + ("tied embeddings." if cfg.get("arch", "llama") == "llama"
           else "attention and MLP in parallel on each block's input, untied output head."),
        f"- Byte-level BPE tokenizer ({cfg['vocab_size']} entries) built with `tokenizers` on the world's text.",
        f"- Trained with seed {cfg['seed']} on world seed {training['world_seed']}: AdamW, peak lr {cfg['lr']}, "
        f"{cfg['batch_size']}x{cfg['block_size']} tokens a step; the checkpoint kept is the one with the best "
        + ("mean dev accuracy over held-out-phrasing recall of the dev people and the dev items of reading, "
           "rules and arithmetic" if v2 else "held-out-phrasing recall on the dev people")
        + f" (step {training['best']['step']} of at most {cfg['max_steps']}).",
        f"- Training took {training['train_seconds']} s on {training['threads']} CPU threads (torch {training['torch']}"
        f"{', ' + cfg['precision'] + ' autocast' if 'precision' in cfg else ''}"
        f"{', compiled' if training.get('compiled') else ''}).",
        f"- AdamW weight decay {cfg['weight_decay']}, {cfg.get('warmup_steps')} warm-up steps, cosine decay "
        f"to a tenth of the peak.",
        *_mix_lines(cfg, v2),
        *_occurrence_lines(result, training),
        "",
        "## Measured (`workbench world measure`)",
        "",
        "| measure | n | greedy exact | token accuracy | target |",
        "|---|---|---|---|---|",
    ]
    for key, label in _rows(result):
        r, t = result[key], result["targets"].get(key)
        target = "" if t is None else f"≥ {t['target']:.2f} ({'met' if t['met'] else 'not met'})"
        lines.append(f"| {label.strip(' .')} | {r['n']} | {r['exact']:.4f} | {r['token_accuracy']:.4f} | {target} |")
    ppl = result["heldout_perplexity"]
    lines += [f"| held-out clean text perplexity | {ppl['n_texts']} texts, {ppl['tokens']} tokens | "
              f"{ppl['perplexity']:.3f} | | |", "",
              "Held-out phrasings are phrasings never used in training for that person (each is used for",
              "most other people). Dev people steered early stopping and are reported apart from the rest.",
              "", *_by_kind_lines(result), *_forget_lines(result, training),
              f"Reproduce: `workbench world generate{'' if v2 else ' --version 1'}"
              f"{'' if training['world_seed'] == DEFAULT_SEED else ' --seed ' + str(training['world_seed'])}"
              f" --out /tmp/world` (seed {training['world_seed']}),",
              "then `workbench world train --world /tmp/world --out /tmp/model" + _train_flags(cfg)
              + "".join(f" --without data/benchmarks/{f}" for f in training.get("without", {}).get("files", []))
              + "` and `workbench world measure --world /tmp/world --model /tmp/model`.", ""]
    return "\n".join(lines)


def _train_flags(cfg: dict) -> str:
    """The `workbench world train` flags of every setting that differs from today's defaults."""
    from workbench.world.train import TrainConfig
    default = TrainConfig()
    return "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(cfg.items())
                   if hasattr(default, k) and getattr(default, k) != v)


def _shown(model_dir: Path) -> str:
    """The model folder as a command should name it: relative to the repository when inside it
    (a card must hold no absolute path), else by its own name."""
    from workbench.core.paths import REPO
    try:
        return str(model_dir.resolve().relative_to(REPO))
    except ValueError:
        return model_dir.name


def write_card(model_dir: str | Path, world_dir: str | Path) -> dict:
    """Measure the model and write README.md and card.json beside its weights."""
    from workbench.core.paths import WORLD
    model_dir = Path(model_dir)
    result = measure(model_dir, world_dir)
    training = json.loads((model_dir / "training.json").read_text())
    card = {"model": model_dir.name, "architecture": training["config"].get("arch", "llama"), "parameters": training["parameters"],
            "training": {k: training[k] for k in ("config", "best", "train_seconds", "world_seed", "torch", "threads",
                                                  "compiled", "epochs", "occurrences_by_level", "without") if k in training},
            "measured": result, "measure_command": "workbench world measure --model " + _shown(model_dir)
            + ("" if Path(world_dir).resolve() == WORLD.resolve() else " --world " + _shown(Path(world_dir)))}
    (model_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (model_dir / "README.md").write_text(_markdown(result, training, model_dir))
    return card
