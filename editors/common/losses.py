"""Answer log-likelihoods under teacher forcing: the loss every training editor builds on."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.eval.scoring import right_pad


def answer_logprobs(model, chunk, pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(b,) summed log-prob of each answer given its prompt, and (b,) its token count.

    `chunk`: (prompt ids, answer ids) pairs; the model reads prompt + answer, right-padded, and
    only the answer's tokens are scored (the FT-M / open-unlearning objective).

    Example:
        >>> logp, n = answer_logprobs(model, [([1, 5], [7, 8])], pad_id=0)   # doctest: +SKIP
        >>> mean_nll = -(logp / n)                                             # doctest: +SKIP
    """
    device = device if device is not None else next(model.parameters()).device
    ids, mask = right_pad([p + a for p, a in chunk], pad_id)  # (b, seq)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (b, seq, vocab)
    # Position t predicts token t+1; the answer's tokens sit at len(p)..len(p)+len(a)-1.
    labels = torch.full_like(ids, -100)  # (b, seq); -100 = prompt and padding, not scored
    for r, (p, a) in enumerate(chunk):
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
    labels = labels[:, 1:].to(device)  # (b, seq-1), aligned with logits[:, :-1]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")  # (b, seq-1); 0 where ignored
    keep = (labels != -100).float()
    return -(nll * keep).sum(1), keep.sum(1)


def retain_pairs(tokenizer, batch) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of the distinct retain probes attached to the batch's requests
    (`with_retain` often attaches one shared set to every request), in a fixed order."""
    from workbench.eval.scoring import encode_pairs
    unique = sorted({(p.prompt, p.answer) for r in batch for p in r.retain})
    pairs = encode_pairs(tokenizer, [p for p, _ in unique], [a for _, a in unique]) if unique else []
    return [pa for pa in pairs if pa[0] and pa[1]]
