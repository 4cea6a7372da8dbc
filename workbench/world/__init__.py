"""The generated world: fictional people, their facts, canaries and clean held-out text."""
from workbench.world.schema import FactQuery, World  # noqa: F401
