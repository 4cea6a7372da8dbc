"""Loading a local Hugging Face causal LM and its tokenizer, never from a hub."""
from __future__ import annotations

from pathlib import Path

from workbench.core.errors import InputError

from workbench.core.paths import DEFAULT_MODEL, MODELS


def model_path(model_dir: str | Path | None) -> Path:
    """The folder a model argument names: `None` is the shipped model, a bare name that is no
    folder here is a shipped model under `data/models/` (e.g. "world-llama-oracle").

    Example:
        >>> model_path("world-llama").parent.name
        'models'
    """
    if model_dir is None:
        return DEFAULT_MODEL
    path = Path(model_dir)
    if not path.exists() and len(path.parts) == 1 and (MODELS / path).is_dir():
        return MODELS / path
    return path


# A checkpoint folder's tokenizer is one of these (fast JSON, SentencePiece, BPE vocab, or a config
# that names one); without any, transformers fails with "Couldn't instantiate the backend tokenizer".
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


def load_model(model_dir: str | Path | None = None, *, trust_remote_code: bool = False, dtype=None,
               device_map=None, max_memory: dict | None = None, offload_folder: str | Path | None = None):
    """(model in eval mode, tokenizer) from a local folder; `None` means the shipped model.

    `device_map`, `max_memory` and `offload_folder` go to `from_pretrained` (accelerate), for
    a model bigger than one device: e.g. `device_map="auto", max_memory={"cpu": "200MB"}`
    keeps what fits in 200 MB resident and offloads the rest, to be loaded at each forward.
    Editors work the same on such a model (see `workbench.core.offload`).

    Example:
        >>> model, tok = load_model()  # doctest: +SKIP
        >>> model, tok = load_model(None, device_map="auto", max_memory={"cpu": "20MB"})  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # our own bars report long work; loading is quick
    # "Token indices sequence length is longer than the specified maximum": our own check
    # (evaluate.check_context) refuses such a request by name before anything runs
    hf_logging.get_logger("transformers.tokenization_utils_base").setLevel(hf_logging.ERROR)
    path = model_path(model_dir)
    if not path.is_dir():
        raise InputError("model folder not found", file=path)
    if not (path / "config.json").is_file():
        raise InputError("not a Hugging Face model folder: config.json is missing", file=path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise InputError("the folder holds no tokenizer (none of " + ", ".join(TOKENIZER_FILES) + "); save it "
                         "beside the weights with tokenizer.save_pretrained(folder)", file=path)
    placement = _placement(device_map, max_memory, offload_folder)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                     trust_remote_code=trust_remote_code, **placement)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, SafetensorError, ...: any unreadable folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not load the model ({type(e).__name__}: {first})", file=path) from None
    if placement:
        _check_inputs_resident(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def _placement(device_map, max_memory, offload_folder) -> dict:
    """The from_pretrained keywords for a device map, checked before anything loads."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise InputError("max_memory and offload_folder need a device map (e.g. device_map='auto')",
                             field="device_map")
        return {}
    try:
        import accelerate  # noqa: F401 - transformers needs it for any device_map
    except ImportError:
        raise InputError("device_map needs the accelerate package (pip install accelerate)",
                         field="device_map") from None
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise InputError(f"unknown device_map {device_map!r}; use auto, balanced, balanced_low_0 or "
                         f"sequential (or a dict of module name -> device)", field="device_map")
    out = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = _max_memory(max_memory)
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def _max_memory(max_memory) -> dict:
    """{device: bytes}; sizes may be ints or accelerate's strings ("200MB", "2GiB")."""
    from accelerate.utils import convert_file_size_to_int
    if not isinstance(max_memory, dict) or not max_memory:
        raise InputError(f"max_memory must map devices to sizes, e.g. {{'cpu': '200MB'}}; got {max_memory!r}",
                         field="max_memory")
    out = {}
    for dev, size in max_memory.items():
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)  # a GPU index given as text ("0=10GiB" on the command line)
        if not (dev in ("cpu", "disk", "mps") or (isinstance(dev, int) and dev >= 0)):
            raise InputError(f"unknown device {dev!r} in max_memory; use cpu, a GPU index (0, 1, ...) or disk",
                             field="max_memory")
        try:
            if isinstance(size, str) and size.strip().isdigit():
                size = int(size)  # bytes, as "cpu=200000000" on the command line
            value = convert_file_size_to_int(size) if isinstance(size, str) else int(size)
        except (ValueError, TypeError):
            value = -1
        if value < 0 or isinstance(size, bool):
            raise InputError(f"cannot read {size!r} as a memory size for {dev!r}; write e.g. 200MB or 2GiB",
                             field="max_memory")
        out[dev] = value
    return out


def _check_inputs_resident(model) -> None:
    # Inputs are sent to the device of the first parameter (the token embeddings) throughout
    # the workbench; an offloaded embedding is a meta tensor there, so refuse that split.
    from workbench.core.offload import is_offloaded
    if is_offloaded(model.get_input_embeddings()):
        raise InputError("max_memory is too small: even the input embeddings were offloaded; "
                         "give the first device room for at least the embeddings", field="max_memory")
