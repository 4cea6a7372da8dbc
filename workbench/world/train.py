"""Train the default model from scratch on the world, on CPU, reproducibly from a seed."""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from workbench.core.errors import InputError
from workbench.core.fsutil import atomic_dir
from workbench.world.corpus import epoch_documents, heldout_sentences, tokenizer_texts
from workbench.world.schema import World


@dataclass
class TrainConfig:
    """Hyperparameters of `workbench world train`; each field documents itself."""
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})
    vocab_size: int = field(default=2048, metadata={"help": "BPE vocabulary size (256..32000)"})
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    intermediate_size: int = field(default=768, metadata={"help": "MLP width (neurons per layer)"})
    num_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    block_size: int = field(default=128, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=32, metadata={"help": "sequences per step"})
    max_steps: int = field(default=1600, metadata={"help": "optimizer steps at most"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    canary_repeats: int = field(default=3, metadata={"help": "copies of each canary per epoch"})
    filler_docs: int = field(default=300, metadata={"help": "filler documents per epoch"})
    suite_scale: int = field(default=2, metadata={
        "help": "version-2 worlds: fresh suite items per epoch, as a multiple of the world's stored training items"})
    eval_every: int = field(default=100, metadata={"help": "steps between dev-probe evaluations"})
    patience: int = field(default=3, metadata={"help": "evaluations without dev improvement before stopping"})
    min_steps: int = field(default=1000, metadata={"help": "never stop early before this step"})

    def __post_init__(self):
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "block_size",
                    "batch_size", "max_steps", "eval_every", "patience", "suite_scale"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise InputError(f"must be a positive integer, got {v!r}", field=name)
        if not 256 <= self.vocab_size <= 32000:
            raise InputError(f"must be in [256, 32000], got {self.vocab_size}", field="vocab_size")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
                             field="num_heads")
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
    from transformers import LlamaConfig, LlamaForCausalLM
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=256,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(mcfg)


def _blocks(tok, docs: list[str], block_size: int):
    """Pack `<s> doc </s>` token streams into (n_blocks, block_size) rows."""
    import torch
    ids = tok(docs, add_special_tokens=True)["input_ids"]
    stream = [t for d in ids for t in d + [tok.eos_token_id]]
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


class _Batches:
    """An endless, seeded stream of training batches, one fresh epoch of documents at a time
    (`epochs` counts the epochs drawn: a version-2 canary occurred `repeats` × that many times)."""

    def __init__(self, world: World, tok, cfg: TrainConfig):
        self.world, self.tok, self.cfg = world, tok, cfg
        self.rng = random.Random(cfg.seed)
        self.banned = heldout_sentences(world)
        self.epoch, self.rows, self.pos = 0, None, 0

    def next(self):
        if self.rows is None or self.pos + self.cfg.batch_size > len(self.rows):
            docs = epoch_documents(self.world, self.rng, canary_repeats=self.cfg.canary_repeats,
                                   filler_docs=self.cfg.filler_docs, banned_filler=self.banned,
                                   suite_scale=self.cfg.suite_scale)
            self.rows, self.pos = _blocks(self.tok, docs, self.cfg.block_size), 0
            self.epoch += 1
        b = self.rows[self.pos:self.pos + self.cfg.batch_size]
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
          log=print, progress: bool = True) -> dict:
    """Build the tokenizer, train the model, keep the best dev checkpoint, write an HF folder.

    Returns the training summary (also saved as `training.json` in the folder).

    Example:
        >>> train("data/world", "/tmp/model", TrainConfig(max_steps=10), overwrite=True)  # doctest: +SKIP
    """
    import torch

    world = World.load(world_dir)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("output folder already exists; choose another --out or pass --overwrite", file=out)
    torch.manual_seed(cfg.seed)
    tok = _build_world_tokenizer(world, cfg)
    model = _make_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    dev_probes = world.probes(heldout=True, people=world.splits["dev"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    batches = _Batches(world, tok, cfg)
    best = {"dev_score": -1.0, "dev_heldout_exact": -1.0, "step": 0}
    best_state, history, bad_evals, t0 = None, [], 0, time.time()
    bar = _progress(progress)
    task = bar.add_task("training", total=cfg.max_steps, info="")
    with bar:
        for step in range(1, cfg.max_steps + 1):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step - 1, cfg)
            x = batches.next()  # (batch, block)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
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
                else:
                    bad_evals += 1
                if bad_evals >= cfg.patience and step >= cfg.min_steps:
                    log(f"early stop at step {step}: no dev improvement in {cfg.patience} evaluations")
                    break
    model.load_state_dict(best_state)
    model.eval()
    summary = {"config": asdict(cfg), "parameters": n_params, "best": best, "history": history,
               "train_seconds": round(time.time() - t0, 1), "world_seed": world.meta["seed"],
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    if world.version == 2:  # a memorized item occurred `repeats` × this many times (the frequency axis)
        summary["epochs"] = batches.epoch
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _build_world_tokenizer(world: World, cfg: TrainConfig):
    from workbench.world.tokenizer import build_tokenizer
    return build_tokenizer(tokenizer_texts(world), cfg.vocab_size, split_digits=world.version == 2)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not enabled)
