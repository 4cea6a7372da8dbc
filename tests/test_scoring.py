"""Batched teacher-forced scoring equals one-at-a-time scoring (padding-correct)."""
import math

import pytest
import torch

from workbench.eval.scoring import score_answers, token_nll


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_batched_scores_equal_single_scores(tiny_llama):
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(3, 50, (int(n),), generator=g).tolist(), torch.randint(3, 50, (int(m),), generator=g).tolist())
             for n, m in zip(torch.randint(1, 12, (20,), generator=g), torch.randint(1, 5, (20,), generator=g))]
    batched = score_answers(tiny_llama, pairs, batch_size=8)
    single = [score_answers(tiny_llama, [p], batch_size=1)[0] for p in pairs]
    for b, s in zip(batched, single):
        assert b.hits == s.hits and b.predicted == s.predicted
        assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(b.logprobs, s.logprobs))


def test_exact_requires_every_answer_token(tiny_llama):
    prompt = [5, 6, 7]
    s = score_answers(tiny_llama, [(prompt, [8, 9])])[0]
    # Feed the model's own predictions back: that answer must be an exact hit.
    first = s.predicted[0]
    s2 = score_answers(tiny_llama, [(prompt, [first])])[0]
    assert s2.exact and s2.token_accuracy == 1.0
    wrong = (first + 1) % 50
    assert not score_answers(tiny_llama, [(prompt, [wrong])])[0].exact


def test_token_nll_batched_equals_single(tiny_llama):
    texts = [[1, 5, 9, 3], [1, 7], [1, 4, 4, 4, 4, 4, 8]]
    total, count = token_nll(tiny_llama, texts, batch_size=3)
    parts = [token_nll(tiny_llama, [t], batch_size=1) for t in texts]
    assert count == sum(c for _, c in parts) == 3 + 1 + 6
    assert math.isclose(total, sum(t for t, _ in parts), rel_tol=1e-5)
