from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "data" / "world"
MODEL = REPO / "data" / "models" / "world-llama"


@pytest.fixture(scope="session")
def shipped_world():
    from workbench.world import World
    return World.load(WORLD)


@pytest.fixture(scope="session")
def shipped_model():
    from workbench.model import load_model
    return load_model(MODEL)
