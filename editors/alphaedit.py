"""`alphaedit`: AlphaEdit, null-space constrained knowledge editing (Fang et al., ICLR 2025), following
jianghoucheng/AlphaEdit `AlphaEdit/AlphaEdit_main.py` and its `hparams/AlphaEdit/*.json`.

MEMIT's targets, keys and layer-by-layer residual split (`editors.memit.spread_update`), with
MEMIT's solve replaced by the paper's (its eq. 15, as the reference code writes it):

    Δ = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K Rᵀ          (d_ff, hidden), written as ΔW = Δᵀ

- P (d_ff, d_ff) projects onto the null space of the preserved knowledge: U Uᵀ over the
  eigenvectors of C = E[k kᵀ] (keys on a generic corpus, the unedited model's statistics as for
  MEMIT) whose eigenvalue is below `nullspace_threshold` (the paper's absolute 2e-2). An update
  of the form Δ = P X leaves W k unchanged for every k in C's dominant directions.
- K_p: the keys every earlier AlphaEdit edit on this model wrote, read after its update, as the
  reference code's `cache_c` accumulates them across sequential batches — so a later batch does
  not undo an earlier one. Each patch carries its own batch's keys as an inert attachment
  (`AlphaEditKeys`): reverting an edit takes its keys out of the sum with it, replaying a
  history puts them back, and an exported checkpoint needs none of it.
- α = `L2` (the reference code's Llama-3-8B value, 10).

Layers, target optimisation and clamp are MEMIT's (`editors.memit`, same defaults, derived from
depth). AlphaEdit has no λ weighting the preserved statistics: P takes its place.

Example:
    >>> patch = AlphaEditEditor().edit(ctx, requests)               # doctest: +SKIP
    >>> patch.meta["nullspace_dim"]                                  # doctest: +SKIP
    {'0': 565, '1': 504}
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from editors.memit import SpreadHParams, edit_site, memit_keys, preserved_moments, spread_update
from editors.rome import SubjectEditor
from workbench.core.patch import Attachment, Patch, register_attachment
from workbench.editing.contract import Batch, Capabilities, EditContext, check_number
from workbench.editing.registry import register_editor

ATTR = "_workbench_alphaedit_keys"  # {edit uid: {layer: (n, d_ff) keys}}: a plain attribute, not a
# submodule, so the keys stay out of state_dict, weight hashes and saved checkpoints


@dataclass
class AlphaEditHParams(SpreadHParams):
    """Hyperparameters of `alphaedit`: MEMIT's fields, the null-space threshold and α.

    Example:
        >>> AlphaEditHParams().nullspace_threshold, AlphaEditHParams().L2
        (0.02, 10.0)
    """
    nullspace_threshold: float = field(default=2e-2, metadata={
        "help": "eigenvalues of the preserved keys' E[k kᵀ] below this span the null space the "
                "update is projected onto (> 0; the paper's 2e-2)"})
    L2: float = field(default=10.0, metadata={
        "help": "α: ridge weight of the update in the solve (> 0; the reference code's 10)"})

    def __post_init__(self):
        super().__post_init__()
        check_number(self.nullspace_threshold, "nullspace_threshold", "> 0", lambda v: v > 0)
        check_number(self.L2, "L2", "> 0", lambda v: v > 0)


def null_space_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """(d, d) P = U Uᵀ over C's eigenvectors with eigenvalue < threshold (float64).

    Example:
        >>> P = null_space_projector(torch.diag(torch.tensor([5.0, 1e-4, 3.0])), 2e-2)
        >>> P.diagonal().tolist()
        [0.0, 1.0, 0.0]
    """
    vals, vecs = torch.linalg.eigh(C.double())  # C is symmetric PSD: eigh is SVD here
    U = vecs[:, vals < threshold]  # (d, k)
    return U @ U.T


def alphaedit_solve(P: torch.Tensor, prior: torch.Tensor, K: torch.Tensor, share: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """(hidden, d_ff) ΔW for keys K (n, d_ff), the layer's residual share (n, hidden), the earlier
    edits' Σ K_pᵀ K_p `prior` (d_ff, d_ff) and the projector P (d_ff, d_ff); float64."""
    d = K.shape[1]
    A = P @ (K.T @ K + prior) + alpha * torch.eye(d, dtype=K.dtype, device=K.device)  # (d_ff, d_ff)
    delta = torch.linalg.solve(A, P @ K.T @ share)  # (d_ff, hidden)
    return delta.T


def written_keys(model) -> dict[str, dict[int, torch.Tensor]]:
    """The keys earlier AlphaEdit edits on this model wrote: {edit uid: {layer: (n, d_ff)}}."""
    return getattr(model, ATTR, None) or {}


def prior_moment(model, layer: int, d: int) -> torch.Tensor:
    """Σ K_pᵀ K_p (d, d) float64 over every earlier edit's keys at `layer`."""
    out = torch.zeros(d, d, dtype=torch.float64)
    for per_layer in written_keys(model).values():
        k = per_layer.get(layer)
        if k is not None:
            k = k.double().cpu()
            out += k.T @ k
    return out


def _uid(keys: dict[int, torch.Tensor], n_before: int) -> str:
    # Deterministic, so the same history writes the same patch files; unique within a history
    # because it counts the edits before it.
    h = hashlib.sha256(str(n_before).encode())
    for layer in sorted(keys):
        h.update(str(layer).encode() + keys[layer].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@register_attachment
class AlphaEditKeys(Attachment):
    """The keys one AlphaEdit edit wrote, kept on the model for the edits after it. Inert: it
    changes no output, so it neither blocks a checkpoint export nor enters the weights hash.

    Example:
        >>> att = AlphaEditKeys("e1", {0: torch.ones(2, 3)})
        >>> sorted(att.state()), att.config()
        (['layer0'], {'uid': 'e1'})
    """
    kind = "alphaedit_keys"
    inert = True

    def __init__(self, uid: str, keys: dict[int, torch.Tensor]):
        self.uid = uid
        self.keys = {int(layer): k.detach().float().cpu().clone() for layer, k in keys.items()}

    def attach(self, model, adapter) -> None:
        store = getattr(model, ATTR, None)
        if store is None:
            store = {}
            object.__setattr__(model, ATTR, store)  # plain attribute: nn.Module would not register a dict
        store[self.uid] = self.keys

    def detach(self, model, adapter) -> None:
        written_keys(model).pop(self.uid, None)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"layer{layer}": k for layer, k in self.keys.items()}

    def config(self) -> dict:
        return {"uid": self.uid}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "AlphaEditKeys":
        return cls(config["uid"], {int(name.removeprefix("layer")): t for name, t in state.items()})

    def describe(self, model) -> dict | None:
        return {"alphaedit keys": sum(int(k.shape[0]) for k in self.keys.values()),
                "layers": sorted(self.keys)}


@register_editor
class AlphaEditEditor(SubjectEditor):
    """MEMIT's batch update projected onto the preserved keys' null space. See the module docstring.

    Example:
        >>> patch = AlphaEditEditor().edit(ctx, requests)      # doctest: +SKIP
    """
    name = "alphaedit"
    capabilities = Capabilities(batch=True, sequential=True, forget=False, single_revert=False)
    hparams_class = AlphaEditHParams

    def run(self, ctx: EditContext, batch: Batch, hp: AlphaEditHParams) -> Patch:
        model, tok, adapter = ctx.model, ctx.tokenizer, ctx.adapter
        requests = list(batch)
        names = [adapter.param_name(adapter.mlp_out(layer)) for layer in hp.layers]
        rec = ctx.recorder(names)
        covs = preserved_moments(ctx, requests, hp)
        proj = {layer: null_space_projector(C, hp.nullspace_threshold) for layer, C in covs.items()}
        priors = {layer: prior_moment(model, layer, C.shape[0]) for layer, C in covs.items()}

        def solve(layer, K, share):
            return alphaedit_solve(proj[layer].to(K.device), priors[layer].to(K.device), K, share, hp.L2)

        stats = spread_update(ctx, requests, hp, solve)
        layers, _ = edit_site(ctx, requests, hp)
        # The keys as the edited model reads them, as the reference code adds them to cache_c.
        keys = {layer: memit_keys(model, tok, adapter, layer, requests) for layer in layers}
        patch = rec.patch(meta={**stats, "nullspace_dim": {str(layer): int(round(float(P.trace())))
                                                           for layer, P in proj.items()},
                                "prior_edits": len(written_keys(model))})
        patch.meta["params"] = [w.name for w in patch.weights]
        att = AlphaEditKeys(_uid(keys, len(written_keys(model))), keys)
        att.attach(model, adapter)
        ctx.on_error(lambda: att.detach(model, adapter))
        patch.attachments.append(att)
        return patch
