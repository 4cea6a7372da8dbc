import contextlib

import pytest

from workbench.core.paths import DEFAULT_MODEL as MODEL, REPO, WORLD  # noqa: F401 (tests import them from here)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Statistics caches (K-FAC factors, key covariances) go to a temporary folder, never
    to the user's ~/.cache, and start empty for every test run."""
    import os
    old = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("workbench-cache"))
    yield
    if old is None:
        os.environ.pop("WORKBENCH_CACHE", None)
    else:
        os.environ["WORKBENCH_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _library_log_handlers():
    """transformers binds its log handler to whatever sys.stderr is when it first logs; if that
    is one test's captured stream (a CLI test calling main() in-process), every later warning
    fails with "I/O operation on closed file". Bind it once, to the session's stream, first."""
    from transformers.utils import logging as hf_logging
    hf_logging.get_logger("transformers")  # configures the library's root handler now
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny and small models gain nothing from a second thread, and on a shared 2-core
    machine a 2-thread pool stalls whenever another process holds a core (10x slower)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def wb(tmp_path):
    """A session on the shipped model in a fresh workspace, author "tester" (the session tests)."""
    from workbench.editing.session import Workbench
    w = Workbench(None, tmp_path / "ws", author="tester")
    yield w
    w.close()


@pytest.fixture(scope="session")
def shipped_world():
    from workbench.world import World
    return World.load(WORLD)


@pytest.fixture(scope="session")
def shipped_model():
    from workbench.core.model import load_model
    return load_model(MODEL)


@contextlib.contextmanager
def model_left_unchanged(model):
    """Around a test: the model's weights (bit for bit) and `requires_grad` flags must be as
    they were when it ends (the shared shipped model is reused by every test)."""
    from workbench.core.patch import weights_hash
    before = weights_hash(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    yield
    assert weights_hash(model) == before, "the test left the shipped model edited"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


def assert_patch_round_trips(model, adapter, patch, h0: str, h1: str, path) -> None:
    """With the model in the edited state `h1`: reverting gives `h0`, and the patch saved to
    `path` and loaded back re-applies to `h1` and reverts to `h0`, all bit for bit."""
    from workbench.core.patch import Patch, weights_hash
    patch.revert(model, adapter)
    assert weights_hash(model) == h0
    patch.save(path)
    loaded = Patch.load(path)
    loaded.apply(model, adapter)
    assert weights_hash(model) == h1
    loaded.revert(model, adapter)
    assert weights_hash(model) == h0


def assert_batched_equals_alone(model, tok, texts: list[str]) -> None:
    """A right-padded batch of `texts` gives each row the logits it gets alone (1e-4): a router
    that decides per example never lets one row, or padding, change another."""
    import torch
    from workbench.eval.scoring import right_pad
    seqs = tok(texts)["input_ids"]
    ids, mask = right_pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for r, s in enumerate(seqs):
            alone = model(input_ids=torch.tensor([s])).logits[0]
            torch.testing.assert_close(batched[r, :len(s)], alone, rtol=1e-4, atol=1e-4)
