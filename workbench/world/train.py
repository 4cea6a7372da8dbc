"""Train the default model from scratch on the world, on CPU, reproducibly from a seed."""
from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from workbench.core.errors import InputError
from workbench.core.fsutil import atomic_dir
from workbench.world.corpus import (Without, epoch_documents, heldout_sentences, memorized_items,
                                    occurrence_epochs, read_without, tokenizer_texts)
from workbench.world.schema import World


PRECISIONS = ("bf16", "fp32")
# llama: the default model (sequential blocks, gated MLP, tied embeddings). gptj: the family the ROME
# and MEMIT papers edit (attention and MLP read the same block input; plain GELU MLP; untied head).
ARCHS = ("llama", "gptj")


@dataclass
class TrainConfig:
    """Hyperparameters of `workbench world train`; each field documents itself."""
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})
    arch: str = field(default="llama", metadata={"help": f"model family: {' or '.join(ARCHS)}"})
    vocab_size: int = field(default=1536, metadata={"help": "BPE vocabulary size (256..32000)"})
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    intermediate_size: int = field(default=768, metadata={"help": "MLP width (neurons per layer)"})
    num_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    block_size: int = field(default=128, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=32, metadata={"help": "sequences per step"})
    max_steps: int = field(default=9000, metadata={"help": "optimizer steps at most"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    canary_repeats: int = field(default=3, metadata={"help": "copies of each canary per epoch"})
    filler_docs: int = field(default=300, metadata={"help": "filler documents per epoch"})
    bios_per_epoch: int = field(default=2, metadata={"help": "biographies of each person per epoch"})
    memorized_passes: int = field(default=8, metadata={
        "help": "version-2 worlds: passes over the memorized items (a canary with repeats r occurs r x passes "
                "times in the run, spread evenly)"})
    suite_scale: int = field(default=2, metadata={
        "help": "version-2 worlds: fresh suite items per epoch, as a multiple of the world's stored training items"})
    precision: str = field(default="bf16", metadata={
        "help": "bf16 (autocast; AMX/AVX-512 CPUs run it about 1.5x faster) or fp32"})
    compile: int = field(default=1, metadata={
        "help": "1: torch.compile the model (about 1.3x faster after a minute of compiling; needs a C++ "
                "compiler, falls back to eager with a note); 0: eager"})
    eval_every: int = field(default=500, metadata={"help": "steps between dev-probe evaluations"})
    patience: int = field(default=3, metadata={"help": "evaluations without dev improvement before stopping"})
    min_steps: int = field(default=7000, metadata={"help": "never stop early before this step"})

    def __post_init__(self):
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "block_size",
                    "batch_size", "max_steps", "eval_every", "patience", "suite_scale", "bios_per_epoch",
                    "memorized_passes"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise InputError(f"must be a positive integer, got {v!r}", field=name)
        if not 256 <= self.vocab_size <= 32000:
            raise InputError(f"must be in [256, 32000], got {self.vocab_size}", field="vocab_size")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
                             field="num_heads")
        if self.arch not in ARCHS:
            raise InputError(f"must be one of {', '.join(ARCHS)}; got {self.arch!r}", field="arch")
        if self.precision not in PRECISIONS:
            raise InputError(f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}", field="precision")
        if self.compile not in (0, 1):
            raise InputError(f"must be 0 or 1; got {self.compile!r}", field="compile")
        if not 0 < self.lr < 1:
            raise InputError(f"must be in (0, 1), got {self.lr}", field="lr")
        if self.seed < 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.canary_repeats < 0 \
                or self.filler_docs < 0 or self.min_steps < 0:
            raise InputError("seed, warmup_steps, weight_decay, canary_repeats, filler_docs and min_steps "
                             "must be non-negative", field="config")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _make_model(cfg: TrainConfig, tok):
    if cfg.arch == "gptj":
        from transformers import GPTJConfig, GPTJForCausalLM
        # rotary on every head dimension, as Llama does, so the two families differ only in the block
        mcfg = GPTJConfig(vocab_size=len(tok), n_embd=cfg.hidden_size, n_inner=cfg.intermediate_size,
                          n_layer=cfg.num_layers, n_head=cfg.num_heads, rotary_dim=cfg.hidden_size // cfg.num_heads,
                          n_positions=256, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return GPTJForCausalLM(mcfg)
    from transformers import LlamaConfig, LlamaForCausalLM
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=256,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(mcfg)


def _blocks(tok, docs: list[str], block_size: int, tags: list | None = None):
    """Pack whole `<s> doc </s>` documents into (n_blocks, block_size) rows, padding each row's
    tail with -100 (no loss; the model reads a pad token there). A document is never split
    across rows unless it alone is longer than a row: a reading question whose passage sits in
    the previous row cannot be answered, and training on it teaches closed-book guessing.

    With `tags` (one per document, None for untagged), also returns each row's tags, so a
    run can count the memorized items it actually trained on."""
    import torch
    rows, row_tags, cur, cur_tags = [], [], [], []
    for doc, tag in zip(tok(docs, add_special_tokens=True)["input_ids"], tags or [None] * len(docs)):
        doc = doc + [tok.eos_token_id]
        if len(cur) + len(doc) > block_size and cur:
            rows.append(cur + [-100] * (block_size - len(cur)))
            row_tags.append(cur_tags)
            cur, cur_tags = [], []
        tag_here = [tag] if tag is not None else []  # a split document counts once, in its first row
        while len(doc) > block_size:  # longer than a row: split, as a stream would
            rows.append(doc[:block_size])
            row_tags.append(tag_here)
            doc, tag_here = doc[block_size:], []
        cur += doc
        cur_tags += tag_here
    if cur:
        rows.append(cur + [-100] * (block_size - len(cur)))
        row_tags.append(cur_tags)
    out = torch.tensor(rows, dtype=torch.long)  # (n_rows, block_size)
    return (out, row_tags) if tags is not None else out


class _Batches:
    """An endless, seeded stream of training batches, one fresh epoch of documents at a time.

    Version 2: each memorized item (canary, quote) occurs `repeats` x `memorized_passes` times in
    the whole run, spread evenly over the epochs that `max_steps` plans (`occurrence_epochs`); `seen` counts
    the copies actually trained on (an early stop or the best checkpoint may come before
    the last ones)."""

    def __init__(self, world: World, tok, cfg: TrainConfig, without: Without | None = None):
        self.world, self.tok, self.cfg, self.without = world, tok, cfg, without
        self.rng = random.Random(cfg.seed)
        self.banned = heldout_sentences(world)
        self.epoch, self.rows, self.tags, self.pos = 0, None, None, 0
        self.planned_epochs: int | None = None
        self.seen: Counter = Counter()

    def _draw(self, rng: random.Random, without: Without | None) -> list:
        return epoch_documents(self.world, rng, canary_repeats=self.cfg.canary_repeats,
                               filler_docs=self.cfg.filler_docs, banned_filler=self.banned,
                               suite_scale=self.cfg.suite_scale, without=without,
                               bios=self.cfg.bios_per_epoch, keep_gaps=True)

    def _plan(self) -> int:
        """Epochs that fit in max_steps, from the first epoch of the *full* run (drawn on a copy
        of the random state, so an oracle plans exactly as the default run) plus every
        memorized copy, less 2% for epochs that come out longer."""
        probe = random.Random()
        probe.setstate(self.rng.getstate())
        docs = [d for d in self._draw(probe, None) if d is not None]
        rows = len(_blocks(self.tok, docs, self.cfg.block_size))
        copies = [m["text"] for m in memorized_items(self.world) for _ in range(m["repeats"] * self.cfg.memorized_passes)]
        memorized_rows = len(_blocks(self.tok, copies, self.cfg.block_size)) if copies else 0
        budget = self.cfg.max_steps * self.cfg.batch_size * 0.98 - memorized_rows
        return max(1, int(budget // max(1, rows)))

    def _docs(self) -> tuple[list[str], list]:
        if self.world.version == 2 and self.planned_epochs is None:
            self.planned_epochs = self._plan()
        docs = self._draw(self.rng, self.without)
        tags: list = [None] * len(docs)
        if self.world.version == 2:
            # dropped items stay as gaps through the shuffle: an oracle draws the same randomness
            due = [m for m in memorized_items(self.world)
                   for e in occurrence_epochs(m["repeats"] * self.cfg.memorized_passes, self.planned_epochs)
                   if e == self.epoch]
            docs += [None if self.without and self.without.drops_item(m["id"]) else m["text"] for m in due]
            tags += [m["id"] for m in due]
            order = list(range(len(docs)))
            self.rng.shuffle(order)
            docs, tags = [docs[i] for i in order], [tags[i] for i in order]
        kept = [i for i, d in enumerate(docs) if d is not None]
        return [docs[i] for i in kept], [tags[i] for i in kept]

    def next(self):
        if self.rows is None or self.pos + self.cfg.batch_size > len(self.rows):
            import torch
            docs, tags = self._docs()
            rows, row_tags = _blocks(self.tok, docs, self.cfg.block_size, tags)
            if self.rows is not None:  # the last epoch's rows short of a batch go first: none is skipped
                rows = torch.cat([self.rows[self.pos:], rows])
                row_tags = self.tags[self.pos:] + row_tags
            self.rows, self.tags, self.pos = rows, row_tags, 0
            self.epoch += 1
        b = self.rows[self.pos:self.pos + self.cfg.batch_size]  # (batch, block)
        for row_tags in self.tags[self.pos:self.pos + self.cfg.batch_size]:
            self.seen.update(row_tags)
        self.pos += self.cfg.batch_size
        return b


def _dev_score(model, tok, world: World, dev_probes) -> dict:
    """What early stopping watches: held-out-phrasing recall of the dev people and, in a
    version-2 world, exact answers on each suite's dev items (never trained, never reported)."""
    from workbench.world.measure import fact_accuracy, suite_accuracy
    scores = {"facts": fact_accuracy(model, tok, dev_probes)["exact"]}
    for name in ("reading", "rules", "arithmetic"):
        if any(r["split"] == "dev" for r in world.suites.get(name, ())):
            scores[name] = suite_accuracy(model, tok, world.suites[name], "dev")["exact"]
    return {"score": sum(scores.values()) / len(scores), **scores}


def train(world_dir: str | Path, out: str | Path, cfg: TrainConfig, *, overwrite: bool = False,
          log=print, progress: bool = True, without=None) -> dict:
    """Build the tokenizer, train the model, keep the best dev checkpoint, write an HF folder.

    `without`: a forget-set JSONL or a list of them (`read_without`); the run then never sees
    those facts, canaries or quotes — a retrain oracle for that set. Everything else is the same run: the
    tokenizer is still built from the whole world (an oracle must share the default model's
    vocabulary to be compared with it token by token), the seed and recipe are unchanged.

    Returns the training summary (also saved as `training.json` in the folder).

    Example:
        >>> train("data/world", "/tmp/model", TrainConfig(max_steps=10), overwrite=True)  # doctest: +SKIP
    """
    import torch

    # Compiled (Inductor) CPU kernels otherwise differ from run to run, and the suites learnt in
    # a late jump (reading, boolean rules) then differ by points (README, "Reproducing a run").
    # In this mode, runs are identical bit for bit on the same machine and thread count.
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(world_dir, out, cfg, overwrite=overwrite, log=log, progress=progress, without=without)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(world_dir, out, cfg: TrainConfig, *, overwrite: bool, log, progress: bool, without) -> dict:
    import torch

    world = World.load(world_dir)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("output folder already exists; choose another --out or pass --overwrite", file=out)
    without = [without] if isinstance(without, (str, Path)) else list(without or [])
    dropped = read_without(without, world) if without else None
    torch.manual_seed(cfg.seed)
    tok = _build_world_tokenizer(world, cfg)
    model = _make_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    dev_probes = world.probes(heldout=True, people=world.splits["dev"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    batches = _Batches(world, tok, cfg, dropped)
    train_step, compile_state = _loss_and_backward(model, cfg, log)
    best = {"dev_score": -1.0, "dev_heldout_exact": -1.0, "step": 0}
    seen_at_best: Counter = Counter()
    best_state, history, bad_evals, t0 = None, [], 0, time.time()
    bar = _progress(progress)
    task = bar.add_task("training", total=cfg.max_steps, info="")
    with bar:
        for step in range(1, cfg.max_steps + 1):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step - 1, cfg)
            x = batches.next()  # (batch, block); -100 marks padding
            loss = train_step(x)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            bar.update(task, advance=1, info=f"loss {loss.item():.3f} best dev {best['dev_score']:.3f}")
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                model.eval()
                dev = _dev_score(model, tok, world, dev_probes)
                model.train()
                history.append({"step": step, "epoch": batches.epoch, "loss": round(loss.item(), 4),
                                "dev_heldout_exact": round(dev["facts"], 4),
                                **({f"dev_{k}": round(v, 4) for k, v in dev.items() if k != "facts"}
                                   if world.version == 2 else {}),
                                "seconds": round(time.time() - t0, 1)})
                log(json.dumps(history[-1]), flush=True)
                if dev["score"] > best["dev_score"]:
                    best = {"dev_score": dev["score"], "dev_heldout_exact": dev["facts"], "step": step}
                    best_state, bad_evals = copy.deepcopy(model.state_dict()), 0
                    seen_at_best = Counter(batches.seen)
                else:
                    bad_evals += 1
                if bad_evals >= cfg.patience and step >= cfg.min_steps:
                    log(f"early stop at step {step}: no dev improvement in {cfg.patience} evaluations")
                    break
    model.load_state_dict(best_state)
    model.eval()
    summary = {"config": asdict(cfg), "parameters": n_params, "best": best, "history": history,
               "train_seconds": round(time.time() - t0, 1), "world_seed": world.meta["seed"],
               "torch": torch.__version__, "threads": torch.get_num_threads(), "compiled": compile_state["compiled"],
               "deterministic": torch.are_deterministic_algorithms_enabled()}
    if world.version == 2:
        # how often each memorized item was trained on before the kept checkpoint: the frequency axis
        summary["epochs"] = batches.epoch
        summary["planned_epochs"] = batches.planned_epochs
        summary["occurrences"] = {m["id"]: seen_at_best.get(m["id"], 0) for m in memorized_items(world)}
        by_level: dict = {}
        for m in memorized_items(world):
            if not (dropped and dropped.drops_item(m["id"])):
                by_level.setdefault(f"{'canary' if 'secret' in m else 'quote'} x{m['repeats']}", []).append(
                    seen_at_best.get(m["id"], 0))
        summary["occurrences_by_level"] = {k: [min(v), max(v)] for k, v in by_level.items()}
    if dropped is not None:
        summary["without"] = {"files": [Path(f).name for f in without], "facts": len(dropped.facts),
                              "items": sorted(dropped.items)}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _loss_and_backward(model, cfg: TrainConfig, log):
    """The training step's forward and backward: the model (compiled when asked and possible)
    under bf16 autocast or in fp32. Returns (step_fn, state); step_fn(x) returns the loss after
    backward; state["compiled"] says which ran. Compiling happens on the first step (forward and
    backward); if that step fails, the run trains eagerly from the start instead, with a note;
    a failure on any later step is an error."""
    import torch

    def run(net, x):  # x: (batch, block) token ids, -100 where a row is padded
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = net(input_ids=x.clamp(min=0), labels=x).loss
        loss.backward()
        return loss

    state = {"compiled": bool(cfg.compile), "net": torch.compile(model) if cfg.compile else model, "first": True}

    def step(x):
        if not state["first"] or not state["compiled"]:
            return run(state["net"], x)
        state["first"] = False
        try:
            return run(state["net"], x)
        except Exception as exc:  # noqa: BLE001  (no C++ compiler, an unsupported op)
            log(f"note: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "training eagerly")
            model.zero_grad(set_to_none=True)
            state.update(net=model, compiled=False)
            return run(model, x)
    return step, state


def _build_world_tokenizer(world: World, cfg: TrainConfig):
    from workbench.world.tokenizer import build_tokenizer
    return build_tokenizer(tokenizer_texts(world), cfg.vocab_size, split_digits=world.version == 2)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not enabled)
