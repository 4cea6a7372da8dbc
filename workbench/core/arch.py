"""Architecture adapter: the one place that knows how each model family names its modules.

Editors ask "the MLP output projection of layer 7" and get a module; they never spell
`model.layers.7.mlp.down_proj` themselves. The layout is read from the model itself
(`infer_spec`: the module tree, the config's depth and the weights' shapes), so a decoder-only
family nobody listed works as it loads; `ARCH_SPECS` keeps only the overrides a family needs
(OPT's flattened MLP rows), keyed by `config.model_type`, with "new|old" alternatives for names
a transformers release changed. Checked on tiny models of twenty families (tests/test_arch.py).

Example:
    >>> adapter = ArchAdapter.for_model(model)                      # doctest: +SKIP
    >>> layer = adapter.default_layer()                             # doctest: +SKIP
    >>> w = adapter.weight(adapter.mlp_out(layer))  # (hidden, n_neurons), a view  # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.core.registry import Registry

__all__ = ["ArchSpec", "ArchAdapter", "ARCH_SPECS", "UnsupportedArchitecture", "LayerIndexError",
           "get_adapter", "register_arch", "supported_model_types"]


class UnsupportedArchitecture(WorkbenchError):
    """The model's `config.model_type` has no entry in `ARCH_SPECS`, or an entry's path is missing."""


class LayerIndexError(WorkbenchError, IndexError):
    """A layer index outside the model's depth; also an IndexError, so list-style code still works."""


@dataclass(frozen=True)
class ArchSpec:
    """Where one model family keeps its parts, as dotted module paths.

    `blocks`, `embed`, `final_norm` and `unembed` are relative to the model (the
    `*ForCausalLM` object); `mlp_in`, `mlp_out`, `act` and `attn_out` are relative to one
    block. A path may list alternatives as "new|old", tried in order. Weight orientation is
    not stored here: it is read from the module type (nn.Linear vs GPT-2's Conv1D).

    Example:
        >>> ArchSpec(blocks="model.layers", mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        ...          mlp_out="mlp.down_proj", act="mlp.act_fn", attn_out="self_attn.o_proj",
        ...          embed="model.embed_tokens", final_norm="model.norm").gated
        True
    """

    blocks: str
    mlp_in: tuple[str, ...]           # gated MLPs: (gate, up); the gate comes first
    mlp_out: str
    act: str                          # the activation module inside the block
    attn_out: str
    embed: str
    final_norm: str
    unembed: str = "lm_head"
    act_config: tuple[str, ...] = ("hidden_act",)   # config attributes naming the activation
    flat_tokens: bool = False         # MLP runs on (batch*seq, d) rows instead of (batch, seq, d)
    fused_gate_up: bool = False       # one input projection computing [gate; up] (Phi-3's gate_up_proj)

    @property
    def gated(self) -> bool:
        """True when the MLP is act(gate(x)) * up(x): two input projections, or one fused."""
        return len(self.mlp_in) == 2 or self.fused_gate_up


# model_type -> ArchSpec: only the families whose layout the model tree does not tell (`infer_spec`
# reads every other one). OPT runs its MLP on flattened (batch*seq, d) rows, which no module name
# shows; its final norm is None in post-norm checkpoints (opt-350m). To add one, print(model) and
# put its paths here, or call register_arch().
ARCH_SPECS: Registry[ArchSpec] = Registry("architecture spec")
ARCH_SPECS.update({
    "opt": ArchSpec(blocks="model.decoder.layers", mlp_in=("fc1",), mlp_out="fc2",
                    act="activation_fn", attn_out="self_attn.out_proj",
                    embed="model.decoder.embed_tokens", final_norm="model.decoder.final_layer_norm",
                    act_config=("activation_function",), flat_tokens=True),
})

LAYER_COUNT = ("num_hidden_layers", "n_layer", "num_layers")  # config attributes giving the depth
# config attributes naming the activation, tried in order (Gemma 2/3: hidden_activation; Falcon: activation)
ACT_CONFIG = ("hidden_activation", "hidden_act", "activation_function", "activation")
# model_type -> whether attention and MLP read the same block input (GPT-J; Falcon and GPT-NeoX by config)
PARALLEL = {"gptj": lambda c: True, "falcon": lambda c: bool(getattr(c, "parallel_attn", False)),
            "gpt_neox": lambda c: bool(getattr(c, "use_parallel_residual", False)),
            "phi": lambda c: True}


def _projections(root: nn.Module) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, out_features, in_features) of every Linear or Conv1D under `root`, in order."""
    out = []
    for name, m in root.named_modules():
        if isinstance(m, nn.Linear) or _is_conv1d(m):
            o, i = tuple(m.weight.shape)[::-1] if _is_conv1d(m) else tuple(m.weight.shape)
            out.append((name, m, int(o), int(i)))
    return out


def infer_spec(model: nn.Module) -> ArchSpec:
    """The layout of a decoder-only model read from its module tree, config and shapes: the block
    list (the ModuleList as long as the config's depth), each block's MLP output projection (the one
    projection from a width other than the residual's back to it), its input projection(s) beside it
    (gate before up; one fused [gate; up] of twice the width), the activation beside them, the
    attention output (the last other projection back to the residual), and the embeddings, final norm
    and unembedding. Raises UnsupportedArchitecture, saying why, where the tree does not tell (e.g. a
    mixture-of-experts MLP)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)

    def refuse(why: str, hint: bool = True):
        return UnsupportedArchitecture(
            f"architecture model_type {model_type!r} ({type(model).__name__}): {why}" + (
                "; put an ArchSpec entry for it in ARCH_SPECS in workbench/core/arch.py (print(model) shows the "
                "paths) or call register_arch()" if hint else ""))
    depth = next((getattr(config, a) for a in LAYER_COUNT if isinstance(getattr(config, a, None), int)), None)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = next((n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == depth
                   and depth), None)
    if blocks is None:
        raise refuse(f"no list of {depth} blocks (the config's depth) among its modules")
    emb, unemb = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is None or unemb is None or id(emb) not in names or id(unemb) not in names:
        raise refuse("no input or output embedding module")
    hidden = int(emb.weight.shape[1])
    block = model.get_submodule(blocks)[0]
    experts = [n for n, p in block.named_parameters() if p.ndim > 2]
    if experts or any("expert" in type(m).__name__.lower() for m in block.modules()):
        raise refuse("its MLP is a mixture of experts (" + (f"every expert in one {experts[0]!r} tensor"
                     if experts else "expert modules behind a router") + "); the editors change one dense "
                     "MLP per layer, and editing experts one by one is not supported", hint=False)
    projections = _projections(block)
    outs = [p for p in projections if p[2] == hidden and p[3] != hidden]
    if len(outs) > 1:  # the attention output also maps heads x head_dim back when that differs from hidden
        outs = [p for p in outs if not any(k in seg for seg in p[0].split(".")[:-1] for k in ("attn", "attention"))]
    if not outs:  # an MLP as wide as the residual: the last projection back to it inside the one named MLP
        mlps = [n for n, _ in block.named_children() if any(k in n.lower() for k in ("mlp", "ffn", "feed_forward"))]
        outs = [p for p in projections if len(mlps) == 1 and p[0].startswith(mlps[0] + ".") and p[2] == hidden][-1:]
    if len(outs) != 1:
        raise refuse(f"{len(outs)} projections back to the residual width {hidden} from another width "
                     f"({', '.join(p[0] for p in outs) or 'none'}); cannot tell the MLP output projection")
    out_name, _, _, d_ff = outs[0]
    parent = out_name.rpartition(".")[0]
    mine = [p for p in projections if p[0].rpartition(".")[0] == parent and p[3] == hidden and p[0] != out_name]
    plain = [p for p in mine if p[2] == d_ff]
    fused = [p for p in mine if p[2] == 2 * d_ff]
    if len(plain) == 2:  # gated: the gate first (its name says so; else the order of definition)
        plain.sort(key=lambda p: 0 if any(k in p[0].rpartition(".")[2] for k in ("gate", "w1")) else 1)
        mlp_in, is_fused = tuple(p[0] for p in plain), False
    elif len(plain) == 1 and not fused:
        mlp_in, is_fused = (plain[0][0],), False
    elif len(fused) == 1 and not plain:
        mlp_in, is_fused = (fused[0][0],), True
    else:
        raise refuse(f"cannot tell the MLP input projection(s) beside {out_name!r}")
    holder = block.get_submodule(parent) if parent else block
    acts = [n for n, m in holder.named_children() if not any(True for _ in m.parameters())
            and not isinstance(m, nn.Dropout) and not list(m.children())]
    if len(acts) != 1:
        raise refuse(f"cannot tell the MLP activation among {acts or 'no parameter-free modules'} beside {out_name!r}")
    attn = [p for p in projections if p[2] == hidden and p[0] != out_name
            and not (parent and p[0].startswith(parent + "."))]
    if not attn:
        raise refuse("no attention output projection back to the residual width")
    # q_proj may also map the residual width to itself: an output's usual name wins, else the last defined
    named = [p for p in attn if p[0].rpartition(".")[2] in ("o_proj", "out_proj", "dense", "c_proj", "wo")]
    attn = named or attn
    block_prefix = blocks + "."
    norms = [n for n, m in model.named_modules() if not n.startswith(block_prefix) and n != blocks
             and "norm" in type(m).__name__.lower() and any(True for _ in m.parameters())]
    if not norms:
        raise refuse("no final norm outside the blocks")
    act = f"{parent}.{acts[0]}" if parent else acts[0]
    return ArchSpec(blocks=blocks, mlp_in=mlp_in, mlp_out=out_name, act=act, attn_out=attn[-1][0],
                    embed=names[id(emb)], final_norm=norms[-1], unembed=names[id(unemb)], act_config=ACT_CONFIG,
                    fused_gate_up=is_fused)


def register_arch(model_type: str, spec: ArchSpec, *, replace: bool = False) -> None:
    """Add a family to the table (e.g. from a plugin for a trust_remote_code model).

    Example:
        >>> register_arch("opt", ARCH_SPECS["opt"])
        Traceback (most recent call last):
        ...
        ValueError: model_type 'opt' already has an ArchSpec; pass replace=True to override it
    """
    if model_type in ARCH_SPECS and not replace:
        raise ValueError(f"model_type {model_type!r} already has an ArchSpec; pass replace=True to override it")
    ARCH_SPECS[model_type] = spec


def supported_model_types() -> list[str]:
    """Sorted model_type names with an ArchSpec entry; every other decoder-only family is read
    from its module tree (`infer_spec`).

    Example:
        >>> "opt" in supported_model_types()
        True
    """
    return sorted(ARCH_SPECS)


def _resolve(root: nn.Module, path: str, *, model_type: str, what: str):
    """Follow a dotted path ("a.b.0.c"; "x|y" = alternatives) from `root`; may return None."""
    for alt in path.split("|"):
        obj, ok = root, True
        for part in alt.split("."):
            if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential)):
                obj = obj[int(part)]
            elif hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                ok = False
                break
        if ok:
            return obj
    import transformers  # only on this error path: say which version renamed the module
    raise UnsupportedArchitecture(
        f"the {what} path {path!r} of the ArchSpec for model_type {model_type!r} does not exist in "
        f"this model ({type(root).__name__}, transformers {transformers.__version__}); "
        f"fix that entry of ARCH_SPECS in workbench/core/arch.py (print(model) shows the real names)")


def _is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D (transformers.pytorch_utils) is a Linear with its weight stored as
    # (in, out). Matching by name avoids importing transformers here and also catches
    # copies of the class in remote-code models.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class ArchAdapter:
    """Architecture facts for one loaded model: blocks, MLP projections, norms, embeddings.

    Layer indices behave like list indices (negative counts from the end). Weights are
    handed out as (out_features, in_features) views whatever the module stores, so an
    editor writes rows and columns the same way on GPT-2 as on Llama.

    Example:
        >>> adapter = ArchAdapter.for_model(model)           # doctest: +SKIP
        >>> adapter.num_layers, adapter.num_neurons(-1)      # doctest: +SKIP
        (8, 1024)
        >>> adapter.param_name(adapter.mlp_out(3))           # doctest: +SKIP
        'model.layers.3.mlp.down_proj.weight'
    """

    def __init__(self, model: nn.Module, spec: ArchSpec, model_type: str):
        self.model, self.spec, self.model_type = model, spec, model_type
        # attention and MLP both read the block's input (GPT-J): nothing here depends on it, since
        # every editor reads and writes at the projections themselves; said for the record
        config = getattr(model, "config", None)
        self.parallel_blocks = bool(PARALLEL.get(model_type, lambda c: False)(config))
        self._names: dict[int, str] | None = None
        # Resolve every path once now, so a renamed module fails at load time with the
        # path's name, not deep inside an editor.
        self.embeddings(), self.final_norm(), self.unembedding()
        if self.num_layers:
            self.mlp_in(0), self.mlp_out(0), self.mlp_act(0), self.attn_out(0)

    @classmethod
    def for_model(cls, model: nn.Module) -> "ArchAdapter":
        """The adapter for `model`, chosen by `model.config.model_type`.

        Example:
            >>> ArchAdapter.for_model(model).model_type      # doctest: +SKIP
            'llama'
        """
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        spec = ARCH_SPECS.get(model_type) if isinstance(model_type, str) else None
        return cls(model, spec or infer_spec(model), model_type)

    def __repr__(self) -> str:
        return f"ArchAdapter({self.model_type}, layers={self.num_layers}, hidden={self.hidden_size})"

    # -- depth -------------------------------------------------------------------------
    def _get(self, root: nn.Module, path: str, what: str):
        return _resolve(root, path, model_type=self.model_type, what=what)

    def blocks(self) -> nn.ModuleList:
        """The list of transformer blocks, in order."""
        return self._get(self.model, self.spec.blocks, "blocks")

    @property
    def num_layers(self) -> int:
        return len(self.blocks())

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream (the MLP output projection's out_features)."""
        return int(self._shape(self.mlp_out(0))[0])

    def layer_index(self, i: int) -> int:
        """`i` as a non-negative index; negative counts from the end, like a list.

        Example:
            >>> ArchAdapter.for_model(model).layer_index(-1)   # doctest: +SKIP
            7
        """
        n = self.num_layers
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"a layer index must be an int, got {type(i).__name__}")
        if not -n <= i < n:
            raise LayerIndexError(f"layer {i} is out of range: this {self.model_type} model has {n} "
                                  f"layers (valid: 0..{n - 1}, or -{n}..-1 from the end)")
        return i % n

    def layer(self, i: int) -> nn.Module:
        """Block `i`."""
        return self.blocks()[self.layer_index(i)]

    def default_layer(self, fraction: float = 0.8) -> int:
        """The block at `fraction` of the depth (0 = first, 1 = last), rounded half up.

        Editors use this instead of a per-model "which layer" setting, e.g. WISE at ~80%.
        For 5 layers, 0.8 gives round(4 * 0.8) = 3; for 32 layers, round(31 * 0.8) = 25.

        Example:
            >>> ArchAdapter.for_model(model).default_layer(0.5)   # doctest: +SKIP
            4
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1 (depth share), got {fraction}")
        # floor(x + 0.5) rather than round(): Python's round() rounds halves to even.
        return int(math.floor((self.num_layers - 1) * fraction + 0.5))

    # -- per-layer modules -------------------------------------------------------------
    def mlp_in(self, i: int) -> list[nn.Module]:
        """The MLP input projection(s) of layer `i`: [gate, up] for gated MLPs, else [fc_in]."""
        block = self.layer(i)
        return [self._get(block, p, "mlp_in") for p in self.spec.mlp_in]

    def mlp_out(self, i: int) -> nn.Module:
        """The MLP output projection of layer `i` (its input holds the neuron activations)."""
        return self._get(self.layer(i), self.spec.mlp_out, "mlp_out")

    def attn_out(self, i: int) -> nn.Module:
        """The attention output projection of layer `i`."""
        return self._get(self.layer(i), self.spec.attn_out, "attn_out")

    def mlp_act(self, i: int) -> nn.Module:
        """The MLP activation module of layer `i` (callable on a tensor)."""
        return self._get(self.layer(i), self.spec.act, "act")

    def mlp_act_name(self) -> str | None:
        """The activation's name from the config (e.g. "silu", "gelu_new"), or None."""
        for attr in self.spec.act_config:
            name = getattr(self.model.config, attr, None)
            if name:
                return str(name)
        return None

    def num_neurons(self, i: int) -> int:
        """Width of layer `i`'s MLP hidden layer (d_ff): the out-projection's in_features."""
        return int(self._shape(self.mlp_out(i))[1])

    # -- model-level modules -----------------------------------------------------------
    def embeddings(self) -> nn.Embedding:
        """Token embeddings (Gemma's scale by sqrt(hidden) happens inside this module in 5.x)."""
        return self._get(self.model, self.spec.embed, "embeddings")

    def final_norm(self) -> nn.Module | None:
        """The norm before the unembedding; None where the model has none (post-norm OPT)."""
        return self._get(self.model, self.spec.final_norm, "final_norm")

    def unembedding(self) -> nn.Module:
        """The output projection to vocabulary logits; weight (vocab, hidden)."""
        return self._get(self.model, self.spec.unembed, "unembedding")

    @property
    def tied_embeddings(self) -> bool:
        """True when the unembedding shares its weight tensor with the embeddings."""
        return self.unembedding().weight is self.embeddings().weight

    # -- weights and names -------------------------------------------------------------
    @staticmethod
    def orientation(module: nn.Module) -> str:
        """"out_in" for nn.Linear (weight is (out, in)), "in_out" for GPT-2's Conv1D."""
        if _is_conv1d(module):
            return "in_out"
        if isinstance(module, nn.Linear):
            return "out_in"
        raise TypeError(f"{type(module).__name__} is neither nn.Linear nor Conv1D; no weight orientation")

    @classmethod
    def weight(cls, module: nn.Module) -> torch.Tensor:
        """`module`'s weight as an (out_features, in_features) view sharing its storage.

        In-place writes (under torch.no_grad()) change the model, whatever the orientation.
        A module that accelerate offloaded (device_map) is made resident first, for good
        (`workbench.core.offload.onload`), so the view holds real values and writes reach the
        forward pass.

        Example:
            >>> w = adapter.weight(adapter.mlp_out(3))   # (hidden, d_ff)   # doctest: +SKIP
            >>> with torch.no_grad(): w[:, 17] = 0       # silence neuron 17 # doctest: +SKIP
        """
        from workbench.core.offload import onload
        onload(module)
        w = module.weight
        return w.T if cls.orientation(module) == "in_out" else w

    @classmethod
    def _shape(cls, module: nn.Module) -> tuple[int, int]:
        """(out_features, in_features) of `module`'s weight, without loading an offloaded one
        (a meta stand-in has the shape)."""
        shape = tuple(module.weight.shape)
        return shape[::-1] if cls.orientation(module) == "in_out" else shape

    @classmethod
    def set_weight(cls, module: nn.Module, value: torch.Tensor) -> None:
        """Copy an (out_features, in_features) tensor into `module`'s weight, in place."""
        view = cls.weight(module)
        if tuple(value.shape) != tuple(view.shape):
            raise ValueError(f"weight shape {tuple(value.shape)} does not match the module's "
                             f"(out, in) shape {tuple(view.shape)}")
        with torch.no_grad():
            view.copy_(value.to(dtype=view.dtype, device=view.device))

    def module_name(self, module: nn.Module) -> str:
        """Dotted name of `module` inside the model, as in `model.named_modules()`."""
        name = self._module_names().get(id(module))
        if name is None:  # modules may have been attached since the last look
            self._names = None
            name = self._module_names().get(id(module))
        if name is None:
            raise ValueError(f"{type(module).__name__} is not a submodule of this model")
        return name

    def _module_names(self) -> dict[int, str]:
        if self._names is None:
            self._names = {}
            for name, mod in self.model.named_modules(remove_duplicate=False):
                self._names.setdefault(id(mod), name)
        return self._names

    def param_name(self, module: nn.Module, param: str = "weight") -> str:
        """Dotted state_dict key of `module`'s parameter; the ledger stores patches by it.

        Example:
            >>> adapter.param_name(adapter.mlp_out(0))   # doctest: +SKIP
            'transformer.h.0.mlp.c_proj.weight'
        """
        return f"{self.module_name(module)}.{param}"

    # -- neuron activations --------------------------------------------------------------
    def hook_mlp_neurons(self, i: int, fn) -> "_Handles":
        """Call `fn(acts)` with layer `i`'s neuron activations, shaped (batch, seq, d_ff).

        `acts` is the input of the MLP out-projection. If `fn` returns a tensor of the same
        shape it replaces the activations (for ablation or routing). OPT runs its MLP on
        flattened (batch*seq, d) rows, so the batch shape is taken from the block's input.
        Returns a handle; call `.remove()` when done.

        Example:
            >>> seen = []
            >>> h = adapter.hook_mlp_neurons(-1, lambda a: seen.append(a.detach()))  # doctest: +SKIP
            >>> model(ids); h.remove()                                                # doctest: +SKIP
        """
        i = self.layer_index(i)
        lead: list[torch.Size] = []  # (batch, seq) of the current forward, for flat_tokens

        def block_pre(_mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            lead[:] = [x.shape[:-1]]

        def out_pre(_mod, args):
            x = args[0]                                   # (batch, seq, d_ff) or (batch*seq, d_ff)
            shape = x.shape
            acts = x.view(*lead[0], shape[-1]) if self.spec.flat_tokens else x
            new = fn(acts)
            if new is None:
                return None
            if new.shape != acts.shape:
                raise ValueError(f"hook returned shape {tuple(new.shape)}, expected {tuple(acts.shape)}")
            return (new.reshape(shape),) + tuple(args[1:])

        handles = [self.mlp_out(i).register_forward_pre_hook(out_pre)]
        if self.spec.flat_tokens:
            handles.append(self.layer(i).register_forward_pre_hook(block_pre, with_kwargs=True))
        return _Handles(handles)


class _Handles:
    """Several hook handles removed together (also usable as a context manager)."""

    def __init__(self, handles):
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def get_adapter(model: nn.Module) -> ArchAdapter:
    """Shorthand for `ArchAdapter.for_model(model)`.

    Example:
        >>> get_adapter(model).mlp_out(-1)     # doctest: +SKIP
        Linear(in_features=1024, out_features=256, bias=False)
    """
    return ArchAdapter.for_model(model)
