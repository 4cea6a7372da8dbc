"""Where the shipped data lives. The one module that computes a data path; everything else
imports these names (the repository is installed editable, so they point into the checkout).

Example:
    >>> from workbench.core.paths import DEFAULT_MODEL
    >>> DEFAULT_MODEL.name
    'world-llama'
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
WORLD = DATA / "world"                      # the generated world (world.json, people, canaries)
MODELS = DATA / "models"
DEFAULT_MODEL = MODELS / "world-llama"      # the small model trained on the world
MODELS_V1 = MODELS / "world-llama-v1"       # the model of world version 1, for workspaces made on it
GPTJ_MODEL = MODELS / "world-gptj"          # the same world and recipe in GPT-J's family (ROME's and MEMIT's)
ORACLE_MODEL = MODELS / "world-llama-oracle"  # the default model's recipe without every benchmark forget set
BENCHMARKS = DATA / "benchmarks"            # request sets written by `workbench world requests`
COUNTERFACTUAL = BENCHMARKS / "edits_counterfactual.jsonl"
FORGET_SETS = {"canaries": BENCHMARKS / "forget_canaries.jsonl",
               "people": BENCHMARKS / "forget_people.jsonl",
               "quotes": BENCHMARKS / "forget_quotes.jsonl"}
HOLDOUT_SETS = {name: BENCHMARKS / f"holdout_{name}.jsonl" for name in FORGET_SETS}  # never-seen twins
CAPABILITY_SETS = {"arithmetic": BENCHMARKS / "forget_arithmetic.jsonl"}  # a skill to remove, not strings
RETAIN_SKILLS = BENCHMARKS / "retain_skills.jsonl"  # trained items of every skill: what unlearning keeps
RETAIN = BENCHMARKS / "retain.jsonl"
BENCH_RESULTS = REPO / "bench" / "results"  # measured benchmark rows (JSON) the README quotes
