"""Loading a local Hugging Face causal LM and its tokenizer, never from a hub."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "models" / "world-llama"


def load_model(model_dir: str | Path | None = None, *, trust_remote_code: bool = False, dtype=None):
    """(model in eval mode, tokenizer) from a local folder; `None` means the shipped model.

    Example:
        >>> model, tok = load_model()  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # our own bars report long work; loading is quick
    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL
    if not path.is_dir():
        raise InputError("model folder not found", file=path)
    if not (path / "config.json").is_file():
        raise InputError("not a Hugging Face model folder: config.json is missing", file=path)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, SafetensorError, ...: any unreadable folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not load the model ({type(e).__name__}: {first})", file=path) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok
