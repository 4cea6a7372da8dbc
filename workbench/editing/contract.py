"""The editor contract and template: what an editor declares, what it is given, what it returns.

An editor subclasses `Editor` and writes only its method:

- `name`: the registry name ("ft", "wise", ...);
- `capabilities`: a `Capabilities` (what the session may ask of it; the session reads these
  flags and never checks editor names);
- `hparams_class`: a dataclass subclassing `HParams` (fields with `metadata={"help": ...}`,
  validation in `__post_init__` with the `check_*` helpers below, model-dependent `None`
  defaults filled in `derive`, layers resolved through the architecture adapter);
- `run(ctx, batch, hp) -> Patch`: change `ctx.model` so that it satisfies the checked requests
  in `batch`, and return the change as a `Patch` (use `ctx.recorder(...)` to capture the
  before/after of the weights it touches, `ctx.on_error(...)` to undo anything else it adds,
  `ctx.choose(hp)` when it picked hyper-parameters from the data, so the ledger records those).

`Editor` owns the ritual every method shares (peft's `BaseTuner` is the model): one
validation pass of the requests (`Editor.check`, which the session runs once before it
measures), model-derived hyper-parameters (`prepare`), eval mode and `requires_grad` flags
put back afterwards, torch's generators seeded from `ctx.seed` inside and restored after (so
the caller's streams are untouched; Python's `random` and numpy are the editor's to seed),
everything restored if the method raises, and the standard patch meta. `apply` returns the patch with the **effective**
hyper-parameters (`effective_hparams`: what really ran, e.g. WISE's layer when a memory is
already in place) — the ledger records those.

Example:
    >>> @register_editor                                    # doctest: +SKIP
    ... class Noop(Editor):
    ...     name = "noop"; capabilities = Capabilities(batch=True)
    ...     hparams_class = HParams
    ...     def run(self, ctx, batch, hp): return Patch()
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch

from workbench.core.errors import InputError, WorkbenchError


@dataclass(frozen=True)
class Capabilities:
    """What an editor can do; declared once, read by the session.

    batch: accepts several requests in one `edit` call (else exactly one).
    sequential: can be applied on top of earlier edits (lifelong editing).
    forget: takes `ForgetRequest`s (unlearning) instead of `EditRequest`s.
    single_revert: one of its edits can be reverted out of the middle of a history
        (its patch touches state that later edits do not depend on).
    composes: it works on what earlier edits left in the model (merging or switching
        recorded adapters) rather than on the requests, which it only lets the session measure.
    """
    batch: bool = False
    sequential: bool = True
    forget: bool = False
    single_revert: bool = False
    composes: bool = False


# ---------------------------------------------------------------------------- checks

def check_number(value, name: str, allowed: str, ok: Callable[[Any], bool] = lambda v: True, *,
                 integer: bool = False) -> None:
    """Raise InputError naming `name` unless `value` is a finite real number (an int when
    `integer`) with `ok(value)`; `allowed` says what is allowed, e.g. "> 0 (learning rate)".

    Example:
        >>> check_number(0.5, "lr", "> 0", lambda v: v > 0)
        >>> check_number(0, "lr", "> 0", lambda v: v > 0)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "lr": must be > 0; got 0
    """
    good = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (not integer or isinstance(value, int)) and ok(value))
    if not good:
        raise InputError(f"must be {allowed}; got {value!r}", field=name)


def check_choice(value, name: str, choices) -> None:
    """Raise InputError naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise InputError(f"must be one of {', '.join(map(str, choices))}; got {value!r}", field=name)


def check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise InputError(f"must be true or false; got {value!r}", field=name)


def check_layer_value(value, name: str = "layer") -> None:
    """A layer field holds an int or None (the model decides in `derive`)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"must be an integer layer index or None; got {value!r}", field=name)


def resolve_layer(adapter, layer: int | None, *, depth: float = 0.8, name: str = "layer") -> int:
    """`layer` as a non-negative block index of this model (None: the block at `depth` of it);
    out of range -> InputError naming `name` (the adapter's own range check, reworded for a field)."""
    from workbench.core.arch import LayerIndexError
    if layer is None:
        return adapter.default_layer(depth)
    check_layer_value(layer, name)
    try:
        return adapter.layer_index(layer)
    except LayerIndexError:
        n = adapter.num_layers
        raise InputError(f"must be in 0..{n - 1} (or -{n}..-1 from the end) for this {n}-layer model; "
                         f"got {layer}", field=name) from None


def resolve_layers(adapter, layers, *, default=None, name: str = "layers") -> tuple[int, ...]:
    """A sorted tuple of distinct non-negative block indices; `default` (indices) when None."""
    if layers is None:
        return tuple(default if default is not None else range(adapter.num_layers))
    out = tuple(sorted({resolve_layer(adapter, i, name=name) for i in layers}))
    if not out:
        raise InputError("no layers chosen", field=name)
    return out


# ---------------------------------------------------------------------------- hyper-parameters

@dataclass
class HParams:
    """Base for hyperparameter dataclasses.

    Fields carry `metadata={"help": "..."}`; validation goes in `__post_init__` (the `check_*`
    helpers raise `InputError(..., field=name)` naming the allowed range). A field whose
    default is `None` may be filled from the model in `derive` (e.g. the layer at ~80% depth).
    """

    def derive(self, adapter) -> "HParams":
        """Return a copy with model-dependent `None` fields filled in; default: unchanged."""
        return self

    @classmethod
    def from_strings(cls, values: dict[str, str | Any]) -> "HParams":
        """Build from CLI-style `k=v` values, converting each to its field's type.

        Example:
            >>> HParams.from_strings({})
            HParams()
        """
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, raw in values.items():
            if key not in known:
                raise InputError(f"unknown hyperparameter; known: {', '.join(sorted(known)) or 'none'}", field=key)
            kwargs[key] = _convert(raw, known[key], key)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[dict]:
        """[{name, type, default, help, choices, applies_when}] for the CLI and UI to build their
        options from: `choices` from a field's `metadata={"choices": (...)}`; `applies_when`
        ({other field: values}) says the field is used only when another one has one of those values."""
        out = []
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append({"name": f.name, "type": _type_name(f), "default": default,
                        "help": f.metadata.get("help", ""), "choices": f.metadata.get("choices"),
                        "applies_when": f.metadata.get("applies_when")})
        return out


def _type_name(f) -> str:
    t = f.type
    if not isinstance(t, str):
        # Real annotations (no `from __future__ import annotations`): a generic such as
        # tuple[int, ...] has __name__ "tuple", which would lose the element type.
        plain = typing.get_origin(t) is None and isinstance(t, type)
        t = t.__name__ if plain else str(t).replace("typing.", "")
    if t.startswith("Optional[") and t.endswith("]"):
        t = t[len("Optional["):-1]
    return t.replace(" | None", "").replace("None | ", "")


def _convert(raw, f, key):
    if not isinstance(raw, str):
        return raw
    t = _type_name(f)
    try:
        if raw.lower() in ("none", "null", "auto") and f.default is None:
            return None
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
        if t.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if t.startswith(("tuple", "list")):
            inner = int if "int" in t else float if "float" in t else str
            return tuple(inner(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise InputError(f"cannot read {raw!r} as {t}", field=key) from None
    return raw


# ---------------------------------------------------------------------------- what an editor is given

@dataclass(frozen=True)
class Batch:
    """Requests that passed the one validation pass (`Editor.check`), with their token ids.

    `pairs[i]` = (prompt ids, answer ids) of `requests[i]`, tokenized exactly as the
    evaluator scores them (`scoring.encode_pairs`), so an editor trains the tokens measured.
    Iterating, `len` and indexing go to the requests.
    """
    requests: tuple
    pairs: tuple

    def __iter__(self):
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i):
        return self.requests[i]


class EditContext:
    """What an editor gets: the model, its tokenizer and architecture adapter, and a seed.

    `recorder(param_names)` snapshots those parameters so the editor can return
    `rec.patch()` with their exact before/after values; `on_error(fn)` registers an undo step
    for anything else it changes (an attachment installed). If the method raises, the
    template runs every undo step, newest first, so the model is left exactly as it was.
    """

    def __init__(self, model, tokenizer, adapter, seed: int = 0):
        self.model, self.tokenizer, self.adapter, self.seed = model, tokenizer, adapter, seed
        self._undo: list[Callable[[], None]] = []
        self.chosen: HParams | None = None

    def choose(self, hp: "HParams") -> None:
        """Report hyper-parameters the method chose from the data while running (e.g. K-FAC's
        `auto` layer and ρ sweep): the ledger then records these, not the ones it was given."""
        self.chosen = hp

    def recorder(self, param_names: list[str]):
        from workbench.core.patch import WeightRecorder
        rec = WeightRecorder(self.model, param_names)
        self._undo.append(rec.restore)
        return rec

    def on_error(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def _rollback(self) -> list[BaseException]:
        """Run every undo step, newest first, even if one fails; returns the failures."""
        failed = []
        for step in reversed(self._undo):
            try:
                step()
            except BaseException as e:  # keep undoing: a later step may still restore most of it
                failed.append(e)
        self._undo.clear()
        return failed


# ---------------------------------------------------------------------------- the template

class Editor:
    """Base class of every editor; see the module docstring for the contract.

    Example:
        >>> editor = get_editor("ft")(FTHParams())                   # doctest: +SKIP
        >>> patch = editor.edit(EditContext(model, tok, adapter), requests)  # doctest: +SKIP
    """
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    hparams_class: ClassVar[type[HParams]]

    def __init__(self, hparams: HParams | None = None):
        self.hparams = hparams if hparams is not None else self.hparams_class()

    # -- what a method writes ----------------------------------------------------------
    def run(self, ctx: EditContext, batch: Batch, hp: HParams):
        """Change `ctx.model` for the checked requests in `batch`; return a `Patch`."""
        raise NotImplementedError

    @classmethod
    def check_requests(cls, requests: list, adapter) -> None:
        """Editor-specific checks beyond kind, count and tokens (e.g. a subject that occurs in
        each prompt, a retain set given); raise `InputError` naming the field. Default: none."""

    @classmethod
    def charts(cls, patch) -> list["Chart"]:
        """What the UI draws after this editor's edit, read from its recorded `patch.meta`
        (pages never look into an editor's meta themselves). Default: nothing."""
        return []

    def effective_hparams(self, ctx: EditContext, hp: HParams) -> HParams:
        """The hyper-parameters that will really run, given the model's state (e.g. settings
        fixed by an earlier edit); default: `hp` as given."""
        return hp

    # -- the ritual --------------------------------------------------------------------
    @classmethod
    def prepare(cls, adapter, params: dict | None = None) -> HParams:
        """Parse `params` ("k" -> "v" strings or values) and fill model-derived defaults.
        Bad names or values raise `InputError` naming the field."""
        try:
            hp = cls.hparams_class.from_strings(dict(params or {}))
            return hp.derive(adapter) if adapter is not None else hp
        except InputError:
            raise
        except (TypeError, ValueError) as e:
            # __post_init__ should raise InputError; a plain ValueError/TypeError (e.g. a missing
            # required field) is still the user's input problem, so report it as one.
            raise InputError(f"editor {cls.name!r}: {e}", field="hparams") from e

    @classmethod
    def check(cls, requests, tokenizer, adapter=None, *, context: int | None = None) -> Batch:
        """The one validation pass: not empty, the request kind the editor takes, one request
        unless it batches, answers that tokenize to something, prompt + answer within the
        model's `context`, then the editor's own `check_requests`. Returns the checked `Batch`."""
        from workbench.eval.requests import EditRequest, ForgetRequest
        from workbench.eval.scoring import encode_pairs
        requests = list(requests)
        if not requests:
            raise InputError("no requests given", field="requests")
        want = ForgetRequest if cls.capabilities.forget else EditRequest
        for i, r in enumerate(requests):
            if not isinstance(r, want):
                raise InputError(f"request {i + 1} is a {type(r).__name__}, but editor {cls.name!r} takes "
                                 f"{want.__name__}s", field="requests")
        if len(requests) > 1 and not cls.capabilities.batch:
            raise InputError(f"editor {cls.name!r} edits one request at a time (no batch capability); "
                             f"got {len(requests)}", field="requests")
        texts = [r.pair() for r in requests]
        pairs = encode_pairs(tokenizer, [p for p, _ in texts], [a for _, a in texts])
        for i, (r, (p_ids, a_ids)) in enumerate(zip(requests, pairs)):
            if not p_ids or not a_ids:
                raise r.input_error(f"request {i + 1}: tokenizes to nothing",
                                    field=r.answer_field if p_ids else r.prompt_field)
        from workbench.eval.evaluate import check_context
        check_context(tokenizer, requests, context)  # every scored text, not only the edit's own
        cls.check_requests(requests, adapter)
        return Batch(tuple(requests), tuple(pairs))

    def apply(self, ctx: EditContext, batch: Batch) -> "Applied":
        """Run the method on checked requests inside the ritual; see the module docstring."""
        if not isinstance(batch, Batch):
            raise WorkbenchError("Editor.apply takes the Batch returned by Editor.check; use edit() for raw requests")
        hp = self.effective_hparams(ctx, self.hparams)
        model = ctx.model
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        was_training = model.training
        try:
            model.eval()  # no dropout: an edit is a deterministic function of weights, requests and seed
            with _seeded(ctx.seed):
                patch = self.run(ctx, batch, hp)
            hp = ctx.chosen if ctx.chosen is not None else hp
            from workbench.core.patch import Patch
            if not isinstance(patch, Patch):
                raise WorkbenchError(f"editor {self.name!r}: run() returned {type(patch).__name__}, not a Patch")
            patch.meta = {"editor": self.name, **_jsonable(hp.to_dict()), **patch.meta}
        except BaseException as e:
            failed = ctx._rollback()  # leave the model exactly as it was, then let the caller see why
            if failed:
                raise WorkbenchError(f"editor {self.name!r} failed ({type(e).__name__}: {e}) and undoing its "
                                     f"changes failed too ({type(failed[0]).__name__}: {failed[0]}); the model "
                                     f"may be changed: reload it") from e
            raise
        finally:
            model.train(was_training)
            _restore_requires_grad(model, flags)
        ctx._undo.clear()
        return Applied(patch, hp)

    def edit(self, ctx: EditContext, requests) -> Any:
        """Check, derive and apply in one call (scripts and tests); returns the `Patch`.
        The session calls `check` and `apply` itself, so it can measure in between."""
        limit = context_length(ctx.model)
        batch = requests if isinstance(requests, Batch) else self.check(requests, ctx.tokenizer, ctx.adapter,
                                                                         context=limit)
        if ctx.adapter is not None:
            self.hparams = self.hparams.derive(ctx.adapter)
        return self.apply(ctx, batch).patch


@dataclass
class Chart:
    """A chart an editor describes from its patch: plain data, drawn by the UI (plotly) or any
    other front end. `kind` "line": each series is y over x = index × `x_stride`; "histogram":
    each series is a sample. `marker` = (x, label) draws a vertical line (e.g. a cut)."""
    title: str
    kind: str
    series: dict[str, list[float]]
    x_label: str = ""
    y_label: str = ""
    log_y: bool = False
    x_stride: int = 1
    marker: tuple[float, str] | None = None


@dataclass
class Applied:
    """What `Editor.apply` returns: the change, and the hyper-parameters that produced it."""
    patch: Any
    hparams: HParams


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generators seeded with `seed` inside, and put back as they were after:
    the CPU one, and every CUDA device's once CUDA is in use, so the caller's random streams
    are untouched on any machine. (Seeding CUDA before it is initialized would queue a seed
    that lands on the caller's stream later, so an unused CUDA is left alone.)"""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


def _jsonable(value):
    """Tuples as lists, recursively: patch meta reads the same before and after a save/load."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def context_length(model) -> int | None:
    """The model's context window, where its config states one."""
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


@contextlib.contextmanager
def trainable_only(model, params=()):
    """Within: only `params` (Parameters of `model`) require grad. After: every parameter's
    `requires_grad` as it was, restored *by name*: accelerate's offload hooks (device_map)
    replace an offloaded module's Parameter objects at each forward pass, so flags kept by
    object would be put back on objects the model no longer holds.

    Example:
        >>> with trainable_only(model, [weight]):   # doctest: +SKIP
        ...     loss.backward()                      # only `weight` gets a .grad
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        _restore_requires_grad(model, flags)


def _restore_requires_grad(model, flags: dict[str, bool]) -> None:
    """Put back `requires_grad` from {parameter name: flag}. By name, not by object: accelerate's
    offload hooks replace an offloaded module's Parameter objects at each forward pass."""
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
