"""The adapter-merging benchmark: adapters per batch, merged by every chosen peft type, vs WISE."""
import pytest

from workbench.core.errors import InputError
from workbench.bench.merge import run, table

pytestmark = pytest.mark.usefixtures("one_thread")


def test_merge_rows_cat_is_exact_retrieval_routes_and_wise_is_compared():
    rows = run(batches=2, size=3, types=("cat", "ties"), lora_params={"steps": "25", "layers": "1,2"},
               progress=False)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["sources (all on)", "cat", "ties", "retrieval", "retrieval + refinement",
                        "MOS training + retrieval + refinement", "MOS training + sources (all on)",
                        "MOS training + cat", "MOS training + ties", "wise (TIES shards)"]
    src, cat = by["sources (all on)"], by["cat"]
    assert src["reliability"] >= 0.8
    # cat with weight 1 is the sum of the sources: the same model, the same scores and size
    assert all(abs(cat[k] - src[k]) < 1e-6 for k in ("reliability", "generality", "locality"))
    assert cat["bytes"] == src["bytes"] and cat["rank"] == 16 and by["ties"]["rank"] == 8
    assert by["wise (TIES shards)"]["bytes"] > 0 and by["wise (TIES shards)"]["reliability"] > 0.5
    for name in ("retrieval", "retrieval + refinement"):
        r = by[name]
        assert r["routing"]["edits_right"] == 1.0 and r["reliability"] >= src["reliability"] - 1e-9
        conf = r["routing"]["confusion"]
        assert conf["labels"] == ["lora0", "lora1", "none"]
        assert sum(map(sum, conf["counts"])) == 6 * (1 + 2 + 2)  # each edit, its 2 rephrasings and 2 locality probes
        assert isinstance(r["overhead"], float) and r["bytes"] > src["bytes"]
    from workbench.bench.plots import figures
    heat = figures(rows)["merge_routing"].data[0]
    assert heat.type == "heatmap" and list(heat.x) == ["lora0", "lora1", "none"]
    text = table(rows)
    assert "| cat | " in text and "| retrieval + refinement | 1.000 |" in text
    assert len(text.splitlines()) == 2 + len(rows) + 1 + 2 + 3


def test_bad_arguments_fail_before_any_work():
    with pytest.raises(InputError, match="combination type"):
        run(types=("average",), progress=False)
    with pytest.raises(InputError, match="1000"):
        run(batches=100, size=50, progress=False)
    with pytest.raises(InputError, match="positive"):
        run(batches=0, progress=False)
