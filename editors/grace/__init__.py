"""`grace`: GRACE, a discrete key-value codebook on one layer (Hartvigsen et al. 2023).

"Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors" (NeurIPS 2023;
code: thartvigsen/grace, and EasyEdit's `easyeditor/models/grace/GRACE.py`). The model's
weights never change: a codebook on the MLP output projection of one block (default: the
block at ~80% depth, as EasyEdit wraps `model.layers[27].mlp.down_proj` of a 32-layer Llama)
maps keys to values. The algorithm per request, as in EasyEdit's `GRACEAdapter.forward`:

- key = the projection's *input* activation (the MLP neurons, d_ff) at the prompt's last token;
- no key within `eps_init` + its radius -> add a key with radius `eps_init`;
- nearest key close enough but a different target -> split: add the key, and set both radii
  to half their distance (the old one minus 1e-5, as EasyEdit does);
- same target -> expand: the nearest key's radius grows to the distance (`eps_expand=
  "coverage"`; "moving_average" also moves the key halfway), and its value is retrained;
- the chosen entry's value (cold: uniform [0, 1) like EasyEdit; warm: the layer's output at
  the key) is trained for `n_iter` Adam steps at `lr` on the target's cross-entropy, the
  model reading prompt + target, with the codebook routing exactly as it will at inference.

Which positions are replaced. EasyEdit's adaptor queries one position per forward,
`token_to_edit`: while editing, the prompt's last token (`key_id`); in `generate` the last
prompt token and then, with the KV cache, each generated token; in a teacher-forced forward
outside `generate`, whatever `key_id` the *last edit* left behind (a quirk: the position
depends on another request's prompt length). With `replace_last` (its default) only that
position's output is replaced. Here every position routes on its own activation (see
`codebook.route`): the value replaces the projection's output wherever that position's
nearest key is within its radius. On the positions EasyEdit queries this gives the same
decision; it needs no per-call state, so teacher-forced scoring, KV-cache generation and a
padded batch all route each row exactly as alone. `replace_all` is a causal version of
EasyEdit's: from the first hit on, every later position of the row takes the value (for
full-sequence forwards; a KV-cache step cannot see earlier hits). Targets are compared as
token ids (EasyEdit compares the mean of the label ids).

Deliberate differences: one entry per request, stored as its own submodule with exact
before/after of anything it changed, so one edit reverts exactly (`single_revert`); several
requests in one call are edited one after another (same result as separate calls); editing
the very same prompt again with another target overwrites that key's value and label (EasyEdit
would split at distance 0, leaving neither key reachable); `early_stop_loss` (0 = off, as in
EasyEdit) may end training early; an expanded radius is the distance × (1 + 1e-3), not the
distance itself, because routing recomputes distances by a matrix product (and reads the key
inside a longer sequence) whose rounding could leave the very query that expanded the key just
outside it — it did on this machine, and the expanded value then never trained. Only Euclidean distance exists, as in EasyEdit.

Example:
    >>> patch = GRACEEditor(GraceHParams(n_iter=50)).edit(ctx, [EditRequest("Ada lives in", "Paris")])  # doctest: +SKIP
    >>> patch.attachments[0].action                                     # doctest: +SKIP
    'add'
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_choice,
                                        check_layer_value, check_number, resolve_layer)
from workbench.editing.registry import register_editor

from .codebook import REPLACEMENTS, GraceCodebook, GraceEdit, GraceEntry, route  # noqa: F401 (re-exported)
from .train import edit_one

VAL_INITS = ("cold", "warm")
EXPANDS = ("coverage", "moving_average")
DISTS = ("euc",)


@dataclass
class GraceHParams(HParams):
    """Hyperparameters of `grace`; defaults are EasyEdit's (eps 1.0, 100 steps, lr 1.0, cold).

    Example:
        >>> GraceHParams(val_init="warm").eps_init
        1.0
        >>> GraceHParams(eps_init=0)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "eps_init": must be > 0 (initial deferral radius); got 0
    """
    layer: int | None = field(default=None, metadata={
        "help": "block whose MLP output projection gets the codebook; negative counts from the end; "
                "default: the block at ~80% depth"})
    eps_init: float = field(default=1.0, metadata={"help": "radius of a new key, Euclidean, in activation units (> 0)"})
    n_iter: int = field(default=100, metadata={"help": "optimizer steps training each value (1..10000)"})
    lr: float = field(default=1.0, metadata={"help": "Adam learning rate for the value (> 0)"})
    dist_fn: str = field(default="euc", metadata={"choices": DISTS, "help": "distance between keys: 'euc' (Euclidean; the only one "
                                                          "EasyEdit implements)"})
    val_init: str = field(default="cold", metadata={"choices": VAL_INITS, 
        "help": "'cold': value starts uniform in [0, 1); 'warm': starts at the layer's own output at the key"})
    replacement: str = field(default="replace_last", metadata={"choices": REPLACEMENTS, 
        "help": "'replace_last': replace each position whose own key matches; 'replace_all': also every "
                "later position of that sequence (full-sequence forwards only)"})
    eps_expand: str = field(default="coverage", metadata={"choices": EXPANDS, 
        "help": "same target near a key: 'coverage' grows its radius to the distance; 'moving_average' "
                "also moves the key halfway to the new one"})
    early_stop_loss: float = field(default=0.0, metadata={
        "help": "stop training a value once the loss is below this (>= 0; 0 = always n_iter steps, as EasyEdit)"})

    def __post_init__(self):
        check_layer_value(self.layer)
        check_number(self.eps_init, "eps_init", "> 0 (initial deferral radius)", lambda v: v > 0)
        check_number(self.n_iter, "n_iter", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)
        check_number(self.lr, "lr", "> 0 (Adam learning rate)", lambda v: v > 0)
        check_number(self.early_stop_loss, "early_stop_loss", ">= 0 (0 = off)", lambda v: v >= 0)
        for name, allowed in (("dist_fn", DISTS), ("val_init", VAL_INITS), ("replacement", REPLACEMENTS),
                              ("eps_expand", EXPANDS)):
            check_choice(getattr(self, name), name, allowed)

    def derive(self, adapter) -> "GraceHParams":
        """Fill `layer` from the model (~80% depth) and check it is inside the model."""
        return dataclasses.replace(self, layer=resolve_layer(adapter, self.layer))


@register_editor
class GRACEEditor(Editor):
    """Add (or split / expand) one GRACE codebook key per request. See the module docstring.

    Example:
        >>> patch = GRACEEditor().edit(ctx, requests)       # doctest: +SKIP
        >>> [a.uid for a in patch.attachments]               # doctest: +SKIP
        ['e0', 'e1']
    """
    name = "grace"
    capabilities = Capabilities(batch=True, sequential=True, forget=False, single_revert=True)
    hparams_class = GraceHParams

    def run(self, ctx: EditContext, batch: Batch, hp: GraceHParams) -> Patch:
        # One request after another (same result as separate calls), each with its own seed.
        done = [edit_one(ctx, pair, hp, seed=ctx.seed + i) for i, pair in enumerate(batch.pairs)]
        group = [a.uid for a in done]
        for a in done:
            a.group = group  # one patch attaches and detaches as a unit
        return Patch([], done, {"uids": group, "actions": [a.action for a in done], "train": [a.stats for a in done]})
