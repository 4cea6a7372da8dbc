"""Tiny random models of every supported family, plus a byte-level tokenizer, for grid tests.

Built from configs here (no downloads, no files): each model has 3 layers of width 32 and a
vocabulary that covers the tokenizer's 256 bytes + 3 specials, so any text can be fed to any
of them. The config table follows tests/test_arch.py (which keeps its own copy, with a
smaller vocabulary, for the adapter's tests).

Example:
    >>> from tests.tiny_models import tiny_model, tiny_tokenizer
    >>> model, tok = tiny_model("llama"), tiny_tokenizer()
    >>> tok("ab")["input_ids"]  # BOS, then one token per byte
    [1, 67, 68]
"""
from __future__ import annotations

from functools import lru_cache

import torch
import transformers as T

HIDDEN, FF, LAYERS = 32, 64, 3
SPECIALS = ("<pad>", "<s>", "</s>")          # ids 0, 1, 2
VOCAB = len(SPECIALS) + 256                  # every byte is one token
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_LLAMA_LIKE = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                   num_key_value_heads=2, intermediate_size=FF, vocab_size=VOCAB,
                   max_position_embeddings=128, **IDS)

# model_type -> config factory: every family the grid runs (tests/test_editor_grid.py), those with an
# ArchSpec entry and those the adapter reads from the module tree alike.
CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_inner=FF,
                                 vocab_size=VOCAB, n_positions=128, **IDS),
    "llama": lambda: T.LlamaConfig(**_LLAMA_LIKE),
    "mistral": lambda: T.MistralConfig(**_LLAMA_LIKE),
    "qwen2": lambda: T.Qwen2Config(**_LLAMA_LIKE),
    "qwen3": lambda: T.Qwen3Config(head_dim=16, **_LLAMA_LIKE),
    "gemma": lambda: T.GemmaConfig(head_dim=16, **_LLAMA_LIKE),
    "gemma2": lambda: T.Gemma2Config(head_dim=16, **_LLAMA_LIKE),
    "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=16, **_LLAMA_LIKE),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                                        intermediate_size=FF, vocab_size=VOCAB, rotary_pct=0.25,
                                        max_position_embeddings=128, **IDS),
    "opt": lambda: T.OPTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, ffn_dim=FF,
                               vocab_size=VOCAB, word_embed_proj_dim=HIDDEN, max_position_embeddings=128, **IDS),
    "phi": lambda: T.PhiConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                               intermediate_size=FF, vocab_size=VOCAB, partial_rotary_factor=0.5,
                               max_position_embeddings=128, **IDS),
    # families read from the module tree alone (no ArchSpec entry)
    "bloom": lambda: T.BloomConfig(hidden_size=HIDDEN, n_layer=LAYERS, n_head=2, vocab_size=VOCAB, **IDS),
    "gpt_neo": lambda: T.GPTNeoConfig(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=2, intermediate_size=FF,
                                      vocab_size=VOCAB, max_position_embeddings=128, window_size=16,
                                      attention_types=[[["global", "local"], 1], [["global"], 1]], **IDS),
    "gptj": lambda: T.GPTJConfig(n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_inner=FF, rotary_dim=8,
                                 vocab_size=VOCAB, n_positions=128, **IDS),
    "olmo2": lambda: T.Olmo2Config(**_LLAMA_LIKE),
    "starcoder2": lambda: T.Starcoder2Config(**_LLAMA_LIKE),
    "falcon": lambda: T.FalconConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                                     ffn_hidden_size=FF, vocab_size=VOCAB, **IDS),
    "phi3": lambda: T.Phi3Config(**_LLAMA_LIKE),
    "stablelm": lambda: T.StableLmConfig(**_LLAMA_LIKE),
}
# Families the adapter refuses, each with the reason a user is told.
REFUSED = {
    "mixtral": (lambda: T.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **_LLAMA_LIKE),
                "mixture of experts"),
}
MODEL_TYPES = sorted(CONFIGS)


def tiny_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A fresh tiny random `model_type` causal LM in eval mode, the same for the same seed.

    Example:
        >>> tiny_model("gpt2").config.n_layer
        3
    """
    if model_type not in CONFIGS:
        raise KeyError(f"no tiny config for {model_type!r}; known: {', '.join(MODEL_TYPES)}")
    config = CONFIGS[model_type]()
    for k, v in overrides.items():
        setattr(config, k, v)
    with torch.random.fork_rng(devices=[]):  # reproducible init without moving the caller's RNG
        torch.manual_seed(seed)
        model = T.AutoModelForCausalLM.from_config(config)
    return model.eval()


@lru_cache(maxsize=4)
def tiny_tokenizer(words: tuple[str, ...] = ()) -> T.PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per UTF-8 byte, no merges) that prepends BOS.

    `words`: strings that become one token each (ids from VOCAB on, in order), as whole
    words are in a real tokenizer; a model for it needs `vocab_size=len(tok)`.

    Built with the `tokenizers` library, like a real checkpoint's tokenizer.json, so code
    under test sees the same `transformers` tokenizer API as with the shipped model.
    A leading space is its own token (byte-level "Ġ"), as in GPT-2-style tokenizers.

    Example:
        >>> tok = tiny_tokenizer()
        >>> tok.decode(tok(" héllo", add_special_tokens=False)["input_ids"])
        ' héllo'
        >>> tiny_tokenizer((" Rome",))(" Rome", add_special_tokens=False)["input_ids"]
        [259]
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for bytes
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({c: len(SPECIALS) + i for i, c in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.add_special_tokens(list(SPECIALS))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                        special_tokens=[("<s>", IDS["bos_token_id"])])
    tok = T.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.add_tokens([AddedToken(w, normalized=False) for w in words])
    return tok
