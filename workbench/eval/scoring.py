"""Teacher-forced scoring of answers after prompts, batched and padding-correct.

One implementation shared by the world's measuring command and the evaluator: for each
(prompt, answer) pair, the answer's tokens are scored given the prompt and the answer's own
earlier tokens. Greedy decoding reproduces an answer exactly iff every answer token is the
argmax at its position under teacher forcing, so exact match needs one forward pass, not a
generation loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AnswerScore:
    """Per-token results for one answer: argmax hits and log-probabilities of the targets."""
    hits: list[bool]
    logprobs: list[float]
    predicted: list[int]

    @property
    def token_accuracy(self) -> float:
        return sum(self.hits) / len(self.hits)

    @property
    def exact(self) -> bool:
        return all(self.hits)


def encode_pairs(tokenizer, prompts: list[str], answers: list[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids of each prompt (with the tokenizer's special prefix) and its answer.

    The answer is encoded on its own, with a leading space, so its tokens are the same
    whatever the prompt ends with; the caller passes answers without that space.
    """
    if not prompts:  # fast tokenizers fail on an empty batch (a request without locality probes)
        return []
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    a_ids = tokenizer([" " + a for a in answers], add_special_tokens=False)["input_ids"]
    return list(zip(p_ids, a_ids))


def answer_rows(tokenizer, prompts: list[str], answers: list[str], batch_size: int = 32):
    """Each prompt followed by its answer (tokenized as `encode_pairs`), right-padded in batches of
    `batch_size` in input order: yields (ids, attention_mask), each (batch, seq)."""
    pairs = encode_pairs(tokenizer, prompts, answers)
    for s in range(0, len(pairs), batch_size):
        yield right_pad([p + a for p, a in pairs[s:s + batch_size]], pad_id(tokenizer))


def pad_id(tokenizer) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else its end of text, else 0.
    Which one does not change a score: padding sits after real tokens and is masked."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (batch, max_len). Right padding keeps real tokens at
    positions 0..n-1, so a padded row scores exactly as it would alone."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids, mask


def length_sorted_batches(n: int, batch_size: int, lengths: list[int]):
    # Sort by length so each batch pads little; yield index lists in that order.
    order = sorted(range(n), key=lambda i: lengths[i])
    for s in range(0, n, batch_size):
        yield order[s:s + batch_size]


@torch.no_grad()
def score_answers(model, pairs: list[tuple[list[int], list[int]]], *, batch_size: int = 64,
                  pad_id: int = 0, progress=None) -> list[AnswerScore]:
    """Score each answer under teacher forcing. Results come back in the input order.

    Example:
        >>> pairs = encode_pairs(tok, ["Ada Lovelace was born in"], ["London"])  # doctest: +SKIP
        >>> score_answers(model, pairs)[0].exact  # doctest: +SKIP
        True
    """
    device = next(model.parameters()).device
    out: list[AnswerScore | None] = [None] * len(pairs)
    lengths = [len(p) + len(a) for p, a in pairs]
    for idx in length_sorted_batches(len(pairs), batch_size, lengths):
        ids, mask = right_pad([pairs[i][0] + pairs[i][1] for i in idx], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # (batch, seq, vocab)
        for r, i in enumerate(idx):
            p, a = pairs[i]
            # Position t predicts token t+1: answer tokens sit at len(p)..len(p)+len(a)-1.
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(a), device=logp.device)
            tgt = torch.tensor(a, device=logp.device)
            row = logp[r, pos]  # (answer_len, vocab)
            pred = row.argmax(-1)
            out[i] = AnswerScore(hits=(pred == tgt).tolist(), logprobs=row.gather(-1, tgt[:, None])[:, 0].tolist(),
                                 predicted=pred.tolist())
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


@torch.no_grad()
def token_nll(model, texts_ids: list[list[int]], *, batch_size: int = 32, pad_id: int = 0) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and token count of each text's tokens after its first.

    perplexity = exp(nll / count).
    """
    nll, count = text_nll(model, texts_ids, batch_size=batch_size, pad_id=pad_id)
    return sum(nll), sum(count)


@torch.no_grad()
def text_nll(model, texts_ids: list[list[int]], *, batch_size: int = 32, pad_id: int = 0
             ) -> tuple[list[float], list[int]]:
    """Per text, in the given order: the summed negative log-likelihood (nats) of its tokens after
    its first, and how many there are (the units a perplexity's interval resamples)."""
    device = next(model.parameters()).device
    nll, count = [0.0] * len(texts_ids), [0] * len(texts_ids)
    for idx in length_sorted_batches(len(texts_ids), batch_size, [len(t) for t in texts_ids]):
        ids, mask = right_pad([texts_ids[i] for i in idx], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (batch, seq, vocab)
        tok_nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                                    reduction="none")  # (batch, seq-1)
        keep = mask[:, 1:].to(tok_nll.dtype)  # (batch, seq-1)
        for row, i in enumerate(idx):
            nll[i] = float((tok_nll[row] * keep[row]).sum())
            count[i] = int(keep[row].sum())
    return nll, count


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) padded on the left, as generation needs: every row's last real
    token sits in the last column, so new tokens append to all rows at once."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids, mask


@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], lengths: list[int], *, batch_size: int = 32,
                         pad_id: int = 0, progress=None) -> list[list[int]]:
    """Greedy continuation of each prompt, `lengths[i]` new tokens (stops at nothing: a fixed
    length makes recitation comparable with the true suffix). Input order is kept."""
    device = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(prompts)
    for idx in length_sorted_batches(len(prompts), batch_size, [len(p) for p in prompts]):
        ids, mask = left_pad([prompts[i] for i in idx], pad_id)
        n_new = max(lengths[i] for i in idx)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n_new,
                             min_new_tokens=n_new, do_sample=False, pad_token_id=pad_id)
        for r, i in enumerate(idx):
            out[i] = gen[r, ids.shape[1]:ids.shape[1] + lengths[i]].tolist()
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]
