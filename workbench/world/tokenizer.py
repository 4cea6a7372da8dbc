"""A byte-level BPE tokenizer for the world, built with the `tokenizers` library."""
from __future__ import annotations

from typing import Iterable

SPECIAL = ["<pad>", "<s>", "</s>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int, *, split_digits: bool = False):
    """Train a byte-level BPE on `texts`; returns a transformers fast tokenizer.

    Encoding a single text prepends `<s>`, as Llama tokenizers do; encode answers with
    `add_special_tokens=False`. `split_digits`: every digit is its own token (no merges across
    digits), so "37 + 52" is a rule over digits rather than a table of number tokens.

    Example:
        >>> tok = build_tokenizer(["Ada was born in Paris."] * 10, 300)  # doctest: +SKIP
        >>> tok("Ada")["input_ids"][0] == tok.bos_token_id  # doctest: +SKIP
        True
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=256)
