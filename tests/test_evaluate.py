"""Evaluator: batched equals one-at-a-time, metrics behave, the CLI refuses bad input."""
import json
import subprocess
import sys

import pytest
import torch

from workbench.eval import evaluate as ev
from workbench.eval import metrics
from workbench.core.errors import InputError
from workbench.eval.requests import EditRequest, ForgetRequest, Probe

from .conftest import REPO


def _edits(world, n=12):
    rng = __import__("random").Random(3)
    out = []
    for k, p in enumerate(rng.sample(world.people, n)):
        others = [q for q in world.people if q["id"] != p["id"]][:2]
        out.append(EditRequest(prompt=world.probe(p, "pet", 0).prompt, target_new="iguana", subject=p["name"],
                               rephrase_prompts=(world.probe(p, "pet", 6).prompt,),
                               locality=tuple(Probe(world.probe(q, "employer", 1).prompt, q["facts"]["employer"])
                                              for q in others),
                               portability=(Probe(world.probe(p, "instrument", 0).prompt, p["facts"]["instrument"]),),
                               id=f"t{k}"))
    return out


def test_batched_evaluation_equals_one_at_a_time(shipped_world, shipped_model):
    model, tok = shipped_model
    reqs = _edits(shipped_world)
    ref = ev.reference(model, tok, reqs)
    batched = ev.evaluate_edits(model, tok, reqs, ref, batch_size=64)
    single = [ev.evaluate_edits(model, tok, [r], ev.reference(model, tok, [r]), batch_size=1)["per_request"][0]
              for r in reqs]
    assert batched["per_request"] == single


def test_locality_is_one_against_itself_and_drops_after_damage(shipped_world, shipped_model):
    import copy
    model, tok = shipped_model
    reqs = _edits(shipped_world)
    ref = ev.reference(model, tok, reqs)
    assert ev.evaluate_edits(model, tok, reqs, ref)["mean"]["locality"] == 1.0
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        for p in damaged.model.layers[1].mlp.parameters():
            p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    result = ev.evaluate_edits(damaged, tok, reqs, ref)
    out = result["mean"]
    assert out["locality"] < 0.9
    # each changed probe is listed with the tokens before and after, and they account for the mean
    changed = [c for r in result["per_request"] for c in r["locality_changed"]]
    assert changed and all(c["before"] != c["after"] and c["unchanged"] < 1.0 for c in changed)
    n_probes = sum(len(r.locality) for r in reqs)
    assert out["locality_exact"] == pytest.approx(1 - len(changed) / n_probes)
    # every mean has its interval, holding the mean; locality_exact here is a share per request (2 probes)
    for k, iv in result["intervals"].items():
        assert iv["lo"] - 1e-12 <= out[k] <= iv["hi"] + 1e-12 and iv["n"] == len(reqs), k
    assert result["intervals"]["reliability"]["method"] in ("wilson", "bootstrap")
    # Unedited model: the new targets are not known yet, the portability facts are.
    base = ev.evaluate_edits(model, tok, reqs, ref)["mean"]
    assert base["reliability"] < 0.5 and base["portability"] > 0.9


def test_canaries_are_recited_and_exposed(shipped_world, shipped_model):
    model, tok = shipped_model
    reqs = [ForgetRequest(kind="canary", prefix=c["prefix"], suffix=c["secret"], id=c["id"])
            for c in shipped_world.canaries if c.get("repeats", 8) >= 8][:10]  # v2: those seen 64+ times
    out = ev.evaluate_forgets(model, tok, reqs, exposure_samples=50)
    m = out["mean"]
    assert m["strict_recitation"] >= 0.9 and m["extraction_strength"] >= 0.9
    assert m["exposure"] > 0.8 * metrics.exposure(0.0, [-1.0] * 50)  # near the maximum log2(51)
    # A secret the model never saw is neither recited nor exposed.
    fake = [ForgetRequest(kind="canary", prefix=r.prefix, suffix="1 2 3 4 5 6", id=r.id) for r in reqs]
    f = ev.evaluate_forgets(model, tok, fake, exposure_samples=50)["mean"]
    assert f["strict_recitation"] <= 0.1 and f["exposure"] < m["exposure"] / 2


def test_forget_batched_equals_single(shipped_world, shipped_model):
    model, tok = shipped_model
    reqs = [ForgetRequest(kind="canary", prefix=c["prefix"], suffix=c["secret"], id=c["id"],
                          retain=(Probe("Q: Where was Thiobex Vethain born? A:", "Sorrento Vale"),))
            for c in shipped_world.canaries[:6]]
    batched = ev.evaluate_forgets(model, tok, reqs, exposure_samples=20, batch_size=64)["per_request"]
    single = [ev.evaluate_forgets(model, tok, [r], exposure_samples=20, batch_size=1)["per_request"][0] for r in reqs]
    for b, s in zip(batched, single):
        assert {k: v for k, v in b.items() if k not in ("exposure", "suffix_logprob")} == \
               {k: v for k, v in s.items() if k not in ("exposure", "suffix_logprob")}
        assert b["suffix_logprob"] == pytest.approx(s["suffix_logprob"], abs=1e-3)


def test_ndcg_is_one_against_itself(shipped_world, shipped_model):
    model, tok = shipped_model
    texts = [t["text"] for t in shipped_world.heldout_text[:8]]
    assert ev.next_token_ndcg(model, model, tok, texts) == pytest.approx(1.0)
    assert 1.0 < ev.perplexity(model, tok, texts) < 20


def test_target_that_tokenizes_to_nothing_is_refused():
    class NullTok:
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[1, 2] if add_special_tokens else [] for _ in texts]}
    req = EditRequest(prompt="Ada plays the", target_new="\u200b")
    with pytest.raises(InputError) as e:
        ev._pairs_checked(NullTok(), [(req.prompt, req.target_new)], [req], ["target_new"])
    assert e.value.field == "target_new"


def test_metric_edge_cases():
    assert metrics.extraction_strength([False]) == 0.0
    assert metrics.recitation([1, 2, 3, 4], [1, 2, 3, 4])["strict"]
    r = metrics.recitation([1, 2, 3, 9], [1, 2, 3, 4])
    assert r["loose"] and not r["strict"]
    assert not metrics.recitation([9, 9, 3, 4], [1, 2, 3, 4])["loose"]
    with pytest.raises(ValueError):
        metrics.secret_alternatives("7", [], 10, __import__("random").Random(0))  # only 9 exist
    ref = torch.softmax(torch.randn(5, 30), -1)
    assert metrics.ndcg_at_k(ref, ref.log(), 10) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(ref, -ref.log(), 10) < 0.5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench.cli", "eval", "--quiet", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_cli_eval_writes_per_request_and_aggregate_json(tmp_path):
    out = tmp_path / "r.json"
    r = _cli("--requests", REPO / "data" / "benchmarks" / "forget_canaries.jsonl", "--exposure-samples", "10",
             "--retain", REPO / "data" / "benchmarks" / "retain.jsonl", "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    n = sum(1 for line in (REPO / "data" / "benchmarks" / "forget_canaries.jsonl").open() if line.strip())
    assert n >= 20 and res["forget"]["n"] == n and len(res["forget"]["per_request"]) == n
    # five of the 30 were seen only 8 times, and the shipped model recites 3 of those (card: 0.933)
    assert res["forget"]["mean"]["strict_recitation"] >= 0.9 and res["forget"]["mean"]["retain_acc"] > 0.9
    assert "strict recit." in r.stdout and "intervals: " in r.stdout
    iv = res["forget"]["intervals"]["strict_recitation"]
    assert iv["method"] == "wilson" and iv["lo"] <= res["forget"]["mean"]["strict_recitation"] <= iv["hi"]


def test_cli_eval_bad_inputs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "edit", "prompt": "a", "target_new": "b"}\n{"type": "edit", "prompt": \n')
    out = tmp_path / "r.json"
    r = _cli("--requests", bad, "--json", out)
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type": "edit", "prompt": "a", "target_new": "  "}\n')
    r = _cli("--requests", empty)
    assert r.returncode == 2 and "target_new" in r.stderr
    r = _cli("--requests", bad, "--format", "nope")
    assert r.returncode == 2 and "zsre" in r.stderr and "tofu" in r.stderr
    good = tmp_path / "good.jsonl"
    good.write_text('{"type": "edit", "prompt": "a", "target_new": "b"}\n')
    r = _cli("--requests", good, "--model", tmp_path / "no-model", "--json", out)
    assert r.returncode == 2 and "no-model" in r.stderr and not out.exists()
