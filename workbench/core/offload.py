"""Weights of a model split across devices by accelerate (`device_map`), some of them offloaded.

A model loaded with `device_map="auto"` and a `max_memory` it does not fit in keeps some
modules "offloaded": their parameters are `meta` tensors (shape and dtype, no values) and an
accelerate `AlignDevicesHook` on the module reads the real values from its `weights_map`
(the checkpoint's safetensors file, an offload folder, or CPU RAM) just before each forward
pass and drops them again after it. Every place in the workbench that reads or writes a
weight by itself, rather than through a forward pass, goes through this module:

- `onload(module)` (writes, and reads an editor computes with): load the module's real values
  onto its execution device for good and tell its hook to stop offloading it. The arch
  adapter's `weight(module)` and the patch code's `tensor(model, name)` call it, so an
  editor's in-place write lands in the tensor the next forward pass uses, an optimizer holds
  the very Parameter the forward pass differentiates, and a revert restores it bit for bit.
- `read(model, name, t)` (reads only: hashing, snapshots of what is not edited): the real
  values of a state_dict entry, from the hook's `weights_map` when the module is offloaded,
  without keeping them resident.

Why onload instead of writing the edit back into the `weights_map`: with disk offload of a
safetensors checkpoint, accelerate's map points *into the user's own model files*
(`{"safetensors_file": ..., "weight_name": ...}`), so writing there would change the base
checkpoint every workspace is hashed against; with an offload folder or CPU offload the map
would have to be rewritten on every optimizer step of a training editor. Editors touch a few
modules (one MLP projection, a handful of layers), so keeping those resident costs little,
and the rest of the model stays offloaded. Offloaded storage is therefore never written,
which is what makes `read` of a still-offloaded module always the base values.

A model without accelerate hooks takes the fast path everywhere (one `getattr`).

Example:
    >>> w = ArchAdapter.weight(module)          # onloads `module` if it was offloaded  # doctest: +SKIP
    >>> offloaded_modules(model)[:1]            # doctest: +SKIP
    ['model.layers.2.self_attn.q_proj']
"""
from __future__ import annotations

import torch
from torch import nn


def _offload_hook(module: nn.Module):
    """The module's accelerate hook if it currently offloads the module's tensors, else None."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return None
    from accelerate.utils import has_offloaded_params  # only dispatched models get here
    return hook if has_offloaded_params(module) else None


def is_offloaded(module: nn.Module) -> bool:
    """True when `module`'s own tensors live in an accelerate offload map, not in the module."""
    return _offload_hook(module) is not None


def is_dispatched(model: nn.Module) -> bool:
    """True when accelerate placed the model with a device map (hooks on its modules)."""
    return getattr(model, "hf_device_map", None) is not None


def offloaded_modules(model: nn.Module) -> list[str]:
    """Dotted names of the modules whose tensors are offloaded right now, in model order."""
    if not is_dispatched(model):
        return []
    return [n for n, m in model.named_modules() if is_offloaded(m)]


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its hook's execution device, else where its first tensor is."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    t = next(iter(module.parameters()), None)
    return t.device if t is not None else torch.device("cpu")


def onload(module: nn.Module) -> None:
    """Make `module`'s offloaded tensors resident for good (no-op if they already are).

    Loads each tensor the hook would load before a forward pass (accelerate's own
    `named_module_tensors` and `set_module_tensor_to_device`, as `AlignDevicesHook.pre_forward`
    does) and switches the hook's offloading off, so its `post_forward` no longer swaps them
    back to `meta`; the hook keeps moving inputs to the execution device.
    """
    hook = _offload_hook(module)
    if hook is None:
        return
    from accelerate.utils import named_module_tensors, set_module_tensor_to_device
    for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                        recurse=hook.place_submodules, remove_non_persistent=True):
        # clone: with CPU offload the map's tensor would otherwise become the module's storage,
        # and an edit would silently rewrite the map too.
        value = hook.weights_map[name].clone()
        set_module_tensor_to_device(module, name, hook.execution_device, value=value)
    hook.offload = False


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The live parameter or buffer `name` (a state_dict key), resident: for writing.

    Raises AttributeError when the model has no such tensor (as `get_parameter` does).
    """
    try:
        module, attr = _owner(model, name)
    except AttributeError:
        raise AttributeError(name) from None
    onload(module)
    if attr in module._parameters and module._parameters[attr] is not None:
        return module._parameters[attr]
    if attr in module._buffers and module._buffers[attr] is not None:
        return module._buffers[attr]
    raise AttributeError(name)


def live(model: nn.Module, name: str) -> torch.Tensor | None:
    """The tensor object `name` refers to now (maybe `meta`), without loading anything."""
    try:
        module, attr = _owner(model, name)
    except AttributeError:
        return None
    return module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr)


def read(model: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
    """The real values of state_dict entry `name`, whose live tensor is `t`.

    `t` itself unless it is a `meta` stand-in of an offloaded module; then the values the
    module's hook would load (a fresh CPU/device tensor; the offloaded storage is not touched).
    """
    if not t.is_meta:
        return t
    module, attr = _owner(model, name)
    hook = _offload_hook(module)
    if hook is None:
        raise RuntimeError(f"{name} is a meta tensor with no offload hook to read its values from")
    return hook.weights_map[attr]


def state_values(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Sorted (state_dict key, real values) of the whole model, offloaded entries included.

    Example:
        >>> dict(state_values(model))["lm_head.weight"].device   # doctest: +SKIP
        device(type='cpu')
    """
    return [(n, read(model, n, t)) for n, t in sorted(model.state_dict(keep_vars=True).items())]
