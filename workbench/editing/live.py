"""The live model: one owner of the loaded model, its tokenizer, architecture adapter and
weights-hash cache, whose `apply`/`revert` keep the cache right themselves.

Hashing the whole model after every change would read every byte; the cache re-reads only the
tensors a patch names (and the module list when a patch adds or resizes modules). Keeping the
invalidation beside the only calls that change the model means no caller can forget it.

Example:
    >>> live = LiveModel.load(None)                 # the shipped model   # doctest: +SKIP
    >>> live.apply(patch); live.hash() != base      # doctest: +SKIP
    True
"""
from __future__ import annotations

from workbench.core.patch import HashCache, Patch, weights_hash


class LiveModel:
    """A loaded model whose every patch goes through here."""

    def __init__(self, model, tokenizer, adapter):
        self.model, self.tok, self.adapter = model, tokenizer, adapter
        self._hashes = HashCache()  # per-tensor digests: hashing after an edit reads what it touched

    @classmethod
    def load(cls, model_dir, **placement) -> "LiveModel":
        """Load a local HF checkpoint (`workbench.core.model.load_model`) with its adapter."""
        from workbench.core.arch import get_adapter
        from workbench.core.model import load_model
        model, tok = load_model(model_dir, **placement)
        return cls(model, tok, get_adapter(model))

    def apply(self, patch: Patch) -> None:
        patch.apply(self.model, self.adapter)
        self._invalidate(patch)

    def revert(self, patch: Patch) -> None:
        patch.revert(self.model, self.adapter)
        self._invalidate(patch, structure=True)

    def edited(self, patch: Patch) -> None:
        """An editor just changed the model in place (and may have replaced modules)."""
        self._invalidate(patch, structure=True)

    def hash(self) -> str:
        """sha256 of the current weights (see `workbench.core.patch.weights_hash`)."""
        return weights_hash(self.model, self._hashes)

    def _invalidate(self, patch: Patch, *, structure: bool = False) -> None:
        resized = any(w.resizes for w in patch.weights)
        self._hashes.invalidate((w.name for w in patch.weights),
                                structure=structure or resized or bool(patch.attachments))
