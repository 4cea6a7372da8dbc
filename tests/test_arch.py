"""The architecture adapter, checked on tiny random models of every supported family.

Each model is built from its config here (no downloads), so a transformers release that
renames a module fails these tests rather than an editor deep inside an edit.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from types import SimpleNamespace

import pytest
import torch
import transformers as T
from torch import nn

from workbench.core.arch import (ARCH_SPECS, ArchAdapter, ArchSpec, LayerIndexError, UnsupportedArchitecture,
                                 get_adapter, infer_spec, register_arch, supported_model_types)
from workbench.core.errors import WorkbenchError
from workbench.core.registry import Registry

from .tiny_models import CONFIGS as TINY, FF, HIDDEN, LAYERS, REFUSED

VOCAB = 96  # smaller than the grid's byte vocabulary: these tests feed random ids
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA_LIKE = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=FF, vocab_size=VOCAB,
                  max_position_embeddings=64, **IDS)

# model_type -> the activation its config declares (None: BLOOM's is fixed in code)
ACTIVATIONS = {
    "gpt2": "gelu_new", "llama": "silu", "mistral": "silu", "qwen2": "silu", "qwen3": "silu",
    "gemma": "gelu_pytorch_tanh", "gemma2": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh",
    "gpt_neox": "gelu", "opt": "relu", "phi": "gelu_new", "bloom": None, "gpt_neo": "gelu_new",
    "gptj": "gelu_new", "olmo2": "silu", "starcoder2": "gelu_pytorch_tanh", "falcon": "gelu", "phi3": "silu",
    "stablelm": "silu",
}
ARCHS = sorted(TINY)
WIDTH = {"bloom": 4 * HIDDEN}  # BLOOM's MLP is always 4x the hidden width

# The real state_dict key of layer 1's MLP out-projection weight, spelled out independently
# of the adapter so a wrong reading of the module tree cannot pass by agreeing with itself.
MLP_OUT_NAMES = {
    "gpt2": "transformer.h.1.mlp.c_proj.weight",
    "gpt_neox": "gpt_neox.layers.1.mlp.dense_4h_to_h.weight",
    "opt": "model.decoder.layers.1.fc2.weight",
    "phi": "model.layers.1.mlp.fc2.weight",
    **{t: "model.layers.1.mlp.down_proj.weight"
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "phi3", "stablelm")},
    "bloom": "transformer.h.1.mlp.dense_4h_to_h.weight",
    "falcon": "transformer.h.1.mlp.dense_4h_to_h.weight",
    "gpt_neo": "transformer.h.1.mlp.c_proj.weight",
    "gptj": "transformer.h.1.mlp.fc_out.weight",
    "starcoder2": "model.layers.1.mlp.c_proj.weight",
}


def ff(arch: str) -> int:
    return WIDTH.get(arch, FF)


def build(model_type: str, **overrides) -> nn.Module:
    """A fresh tiny random model of `model_type` in eval mode."""
    config = TINY[model_type]()
    for k, v in {"vocab_size": VOCAB, **overrides}.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(config).eval()


@lru_cache(maxsize=None)
def shared(model_type: str) -> nn.Module:
    """A cached model for tests that only read it."""
    return build(model_type)


def ids(batch: int = 2, seq: int = 5) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))


def test_twenty_families_and_every_table_entry_have_a_tiny_model():
    assert set(ARCH_SPECS) <= set(TINY) and len(TINY) + len(REFUSED) >= 20
    assert set(ACTIVATIONS) == set(TINY) and supported_model_types() == sorted(ARCH_SPECS)


@pytest.mark.parametrize("arch", ARCHS)
def test_depth_and_widths(arch):
    model = shared(arch)
    a = ArchAdapter.for_model(model)
    assert a.model_type == arch
    assert a.num_layers == LAYERS == len(a.blocks())
    assert isinstance(a.blocks(), nn.ModuleList)
    assert a.hidden_size == HIDDEN
    assert [a.num_neurons(i) for i in range(LAYERS)] == [ff(arch)] * LAYERS
    assert a.mlp_act_name() == ACTIVATIONS[arch]
    assert repr(a) == f"ArchAdapter({arch}, layers={LAYERS}, hidden={HIDDEN})"


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_weights_as_out_in_views(arch):
    a = get_adapter(shared(arch))
    for i in range(LAYERS):
        ins = a.mlp_in(i)
        assert len(ins) == (2 if a.spec.gated and not a.spec.fused_gate_up else 1)
        for m in ins:
            assert tuple(a.weight(m).shape) == ((2 if a.spec.fused_gate_up else 1) * a.num_neurons(i), HIDDEN)
        assert tuple(a.weight(a.mlp_out(i)).shape) == (HIDDEN, a.num_neurons(i))
        assert a.weight(a.attn_out(i)).shape[0] == HIDDEN
        # The view shares storage with the parameter: writes through it reach the model.
        assert a.weight(a.mlp_out(i)).data_ptr() == a.mlp_out(i).weight.data_ptr()
    expected = "in_out" if arch == "gpt2" else "out_in"
    assert a.orientation(a.mlp_out(0)) == a.orientation(a.mlp_in(0)[0]) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_and_projections_compose_to_the_neurons(arch):
    """The neurons equal act(gate(x)) * up(x) (or act(fc_in(x))): gate/up order and act are right."""
    model, layer = shared(arch), 1
    a = get_adapter(model)
    seen = {}
    h1 = a.mlp_in(layer)[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    h2 = a.mlp_out(layer).register_forward_pre_hook(lambda m, args: seen.setdefault("acts", args[0]))
    try:
        with torch.no_grad():
            model(ids())
            x, ins, act = seen["x"], a.mlp_in(layer), a.mlp_act(layer)
            if a.spec.fused_gate_up:  # Phi-3: one projection gives [gate; up]
                gate, up = ins[0](x).chunk(2, dim=-1)
                expected = act(gate) * up
            else:
                expected = act(ins[0](x)) * ins[1](x) if a.spec.gated else act(ins[0](x))
    finally:
        h1.remove(), h2.remove()
    torch.testing.assert_close(seen["acts"], expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_neuron_hook_sees_batch_seq_neurons(arch):
    model = shared(arch)
    a = get_adapter(model)
    raw, hooked = [], []
    h_raw = a.mlp_out(-1).register_forward_pre_hook(lambda m, args: raw.append(args[0].shape))
    with a.hook_mlp_neurons(-1, lambda acts: hooked.append(acts.shape)), torch.no_grad():
        model(ids(batch=2, seq=5))
    h_raw.remove()
    assert hooked == [torch.Size([2, 5, ff(arch)])]
    # OPT's decoder layer flattens tokens before its MLP; the adapter's hook hides that.
    assert raw == [torch.Size([10, FF]) if arch == "opt" else torch.Size([2, 5, ff(arch)])]


@pytest.mark.parametrize("arch", ARCHS)
def test_ablating_a_neuron_by_hook_equals_zeroing_its_weight_column(arch):
    """Same edit two ways: zero neuron 7's activation, or column 7 of the (out, in) view."""
    model, neuron, x = build(arch), 7, ids()
    a = get_adapter(model)
    with torch.no_grad():
        before = model(x).logits

        def ablate(acts):
            acts = acts.clone()
            acts[..., neuron] = 0
            return acts

        with a.hook_mlp_neurons(1, ablate):
            by_hook = model(x).logits
        a.weight(a.mlp_out(1))[:, neuron] = 0
        by_weight = model(x).logits
    assert not torch.allclose(before, by_hook)
    torch.testing.assert_close(by_hook, by_weight)


def test_gpt2_conv1d_is_read_and_written_as_out_in():
    model = build("gpt2")
    a = get_adapter(model)
    c_proj = a.mlp_out(0)
    assert type(c_proj).__name__ == "Conv1D" and tuple(c_proj.weight.shape) == (FF, HIDDEN)  # stored (in, out)
    w = a.weight(c_proj)                                                                    # (out, in)
    xs = torch.randn(4, FF)
    torch.testing.assert_close(c_proj(xs), nn.functional.linear(xs, w, c_proj.bias))
    with torch.no_grad():
        before = model(ids()).logits
        w[3] += 1.0                   # row 3 = output feature 3 = column 3 of the stored weight
        after = model(ids()).logits
    assert not torch.allclose(before, after)
    new = torch.randn(HIDDEN, FF)
    a.set_weight(c_proj, new)
    torch.testing.assert_close(c_proj.weight, new.T)
    with pytest.raises(ValueError, match=r"\(out, in\) shape \(32, 64\)"):
        a.set_weight(c_proj, new.T)


def test_set_weight_on_linear():
    model = build("llama")
    a = get_adapter(model)
    up = a.mlp_in(0)[1]
    new = torch.randn(FF, HIDDEN)
    a.set_weight(up, new)
    torch.testing.assert_close(up.weight, new)
    with pytest.raises(TypeError, match="neither nn.Linear nor Conv1D"):
        a.orientation(a.final_norm())


@pytest.mark.parametrize("arch", ARCHS)
def test_embeddings_final_norm_and_unembedding(arch):
    model = shared(arch)
    a = get_adapter(model)
    assert a.embeddings() is model.get_input_embeddings()
    assert a.unembedding() is model.get_output_embeddings()
    assert tuple(a.weight(a.unembedding()).shape) == (VOCAB, HIDDEN)
    assert tuple(a.embeddings().weight.shape) == (VOCAB, HIDDEN)
    assert a.tied_embeddings == bool(model.config.tie_word_embeddings)
    # The final norm's output is what the unembedding reads.
    seen = {}
    h1 = a.final_norm().register_forward_hook(lambda m, args, out: seen.setdefault("norm", out))
    h2 = a.unembedding().register_forward_pre_hook(lambda m, args: seen.setdefault("lm", args[0]))
    with torch.no_grad():
        model(ids())
    h1.remove(), h2.remove()
    torch.testing.assert_close(seen["norm"], seen["lm"])


@pytest.mark.parametrize("arch", ARCHS)
def test_param_names_are_state_dict_keys(arch):
    model = shared(arch)
    a = get_adapter(model)
    name = a.param_name(a.mlp_out(1))
    assert name == MLP_OUT_NAMES[arch]
    assert model.state_dict()[name].data_ptr() == a.mlp_out(1).weight.data_ptr()
    assert a.param_name(a.mlp_out(-1), "bias").endswith(".bias")
    with pytest.raises(ValueError, match="not a submodule"):
        a.module_name(nn.Linear(2, 2))


def test_layer_indices_behave_like_a_list():
    a = get_adapter(shared("llama"))
    assert a.layer(-1) is a.blocks()[LAYERS - 1] and a.layer(0) is a.blocks()[0]
    assert a.mlp_out(-LAYERS) is a.mlp_out(0)
    assert a.layer_index(-1) == LAYERS - 1
    for bad in (LAYERS, -LAYERS - 1):
        with pytest.raises(LayerIndexError, match=r"valid: 0\.\.2, or -3\.\.-1") as err:
            a.mlp_out(bad)
        assert isinstance(err.value, IndexError) and isinstance(err.value, WorkbenchError)
        assert "llama model has 3 layers" in str(err.value)
    with pytest.raises(TypeError):
        a.layer(True)


@pytest.mark.parametrize("layers, fraction, expected", [
    (5, 0.8, 3), (5, 0.0, 0), (5, 1.0, 4), (5, 0.5, 2), (3, 0.75, 2), (2, 0.5, 1), (1, 0.8, 0),
    (32, 0.8, 25), (12, 0.8, 9),
])
def test_default_layer_follows_depth(layers, fraction, expected):
    config = T.LlamaConfig(**{**LLAMA_LIKE, "hidden_size": 8, "intermediate_size": 8,
                              "num_hidden_layers": layers})
    a = get_adapter(T.AutoModelForCausalLM.from_config(config))
    assert a.default_layer(fraction) == expected
    assert a.default_layer() == a.default_layer(0.8)


def test_default_layer_rejects_fractions_outside_0_1():
    with pytest.raises(ValueError, match="between 0 and 1"):
        get_adapter(shared("gpt2")).default_layer(1.5)


def test_a_family_without_an_entry_is_read_from_its_module_tree():
    # BLOOM, GPT-J, Falcon... have no ArchSpec entry: the layout comes from the model itself
    for arch in ("bloom", "gptj", "falcon", "phi3"):
        assert arch not in ARCH_SPECS and get_adapter(shared(arch)).spec == infer_spec(shared(arch))
    # and the families that once had a table entry read the same paths it gave
    assert infer_spec(shared("gpt_neox")) == ArchSpec(
        blocks="gpt_neox.layers", mlp_in=("mlp.dense_h_to_4h",), mlp_out="mlp.dense_4h_to_h", act="mlp.act",
        attn_out="attention.dense", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
        act_config=infer_spec(shared("gpt_neox")).act_config)
    assert infer_spec(shared("phi3")).fused_gate_up and infer_spec(shared("phi3")).gated
    # attention and MLP side by side in GPT-J, Falcon, Phi and GPT-NeoX; one after the other in Llama
    assert [get_adapter(shared(a)).parallel_blocks for a in ("gptj", "falcon", "llama")] == [True, True, False]


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_a_mixture_of_experts_is_refused_with_its_reason(arch):
    factory, reason = REFUSED[arch]
    config = factory()
    config.vocab_size = VOCAB
    with pytest.raises(UnsupportedArchitecture, match=reason) as err:
        get_adapter(T.AutoModelForCausalLM.from_config(config))
    assert isinstance(err.value, WorkbenchError) and "\n" not in str(err.value)
    assert "ArchSpec" not in str(err.value)  # a table entry would not help: no false hint


def test_a_model_the_tree_does_not_explain_says_what_to_add():
    fake = nn.Linear(2, 2)
    fake.config = SimpleNamespace(model_type="mamba-like", num_hidden_layers=4)
    fake.get_input_embeddings = fake.get_output_embeddings = lambda: None
    with pytest.raises(UnsupportedArchitecture, match="'mamba-like'.*no list of 4 blocks.*ARCH_SPECS in workbench/core/arch.py"):
        get_adapter(fake)
    with pytest.raises(UnsupportedArchitecture, match="model_type None"):
        get_adapter(nn.Linear(2, 2))


def test_a_renamed_module_fails_at_load_naming_the_path(monkeypatch):
    broken = dataclasses.replace(infer_spec(shared("llama")), mlp_out="mlp.w2")
    monkeypatch.setitem(ARCH_SPECS, "llama", broken)
    with pytest.raises(UnsupportedArchitecture, match=r"mlp_out path 'mlp.w2'.*'llama'.*transformers"):
        get_adapter(shared("llama"))


def test_register_arch_rejects_duplicates_and_adds_new(monkeypatch):
    fresh = Registry("architecture spec")
    fresh.update(ARCH_SPECS)
    monkeypatch.setattr("workbench.core.arch.ARCH_SPECS", fresh)
    import workbench.core.arch as arch
    with pytest.raises(ValueError, match="already has an ArchSpec"):
        register_arch("opt", arch.ARCH_SPECS["opt"])
    register_arch("my_llama", infer_spec(shared("llama")))
    model = shared("llama")
    monkeypatch.setattr(model.config, "model_type", "my_llama")
    assert get_adapter(model).model_type == "my_llama"


def test_post_norm_opt_has_no_final_norm_and_a_projected_unembedding():
    config = TINY["opt"]()
    config.vocab_size, config.do_layer_norm_before, config.word_embed_proj_dim = VOCAB, False, 16
    a = get_adapter(T.AutoModelForCausalLM.from_config(config))
    assert a.final_norm() is None
    assert tuple(a.weight(a.unembedding()).shape) == (VOCAB, 16)
    assert a.hidden_size == HIDDEN


@pytest.mark.parametrize("arch, head_dim", [("qwen3", 32), ("gemma", 24), ("gemma2", 8)])
def test_an_attention_wider_or_narrower_than_the_residual_is_not_taken_for_the_mlp(arch, head_dim):
    # Qwen3-0.6B: 16 heads x 128 = 2048 against a residual of 1024; Gemma-2-2B: 8 x 256 against 2304.
    # The attention output then also maps another width back to the residual, as the MLP's does.
    model = build(arch, head_dim=head_dim)
    spec = infer_spec(model)
    assert (spec.mlp_out, spec.attn_out, spec.mlp_in) == ("mlp.down_proj", "self_attn.o_proj",
                                                         ("mlp.gate_proj", "mlp.up_proj"))
    assert get_adapter(model).weight(get_adapter(model).attn_out(0)).shape == (HIDDEN, 2 * head_dim)
