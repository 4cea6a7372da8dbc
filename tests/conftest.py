from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "data" / "world"
MODEL = REPO / "data" / "models" / "world-llama"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny and small models gain nothing from a second thread, and on a shared 2-core
    machine a 2-thread pool stalls whenever another process holds a core (10x slower)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shipped_world():
    from workbench.world import World
    return World.load(WORLD)


@pytest.fixture(scope="session")
def shipped_model():
    from workbench.model import load_model
    return load_model(MODEL)
