"""Llama 4 with linearized experts (model.linearized_experts), as Axolotl's linearized checkpoints
store it, and the checks of what a checkpoint stores: a tiny Llama 4 built here (Scout's
multimodal layout, the tiny Llama's tokenizer) saved fused as transformers stores it and linearized
from the same weights; loaded, quantized and trained by the real stack."""
from __future__ import annotations

import pytest

from recipecli.errors import InvalidRecipe
from recipecli.fit.precision import choose
from recipecli.read.load import load_recipe
from recipecli.train.llama4 import LinearizedExperts
from recipecli.train.model import load_model
from recipecli.train.runner import run

from ..conftest import RECIPES, two_step_run

TINY_MODEL = RECIPES / "models" / "tiny-llama"
DATA = RECIPES / "data"

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def _llama4(folder):
    """A tiny Llama 4 (Llama4ForConditionalGeneration, as Scout ships) with the tiny Llama's tokenizer."""
    import torch
    from transformers import AutoTokenizer, Llama4Config, Llama4ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=32, intermediate_size_mlp=96,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                num_experts_per_tok=1, interleave_moe_layer_step=1, max_position_embeddings=256,
                no_rope_layers=[1, 1], attention_chunk_size=64, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14, projector_input_dim=64, projector_output_dim=64, vision_output_dim=64)
    Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config=vision)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _linearize(fused, folder):
    """The same checkpoint with each layer's experts as Axolotl's linearized ones store them: one
    (out, in) linear weight per expert and projection; transformers' gate_up_proj holds the gate's
    columns, then the up projection's."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(fused, folder)
    weights = {}
    for name, tensor in load_file(fused / "model.safetensors").items():
        prefix, _, kind = name.rpartition(".")
        if kind == "gate_up_proj":
            width = tensor.shape[-1] // 2
            for i, stack in enumerate(tensor):
                weights[f"{prefix}.gate_projs.{i}.weight"] = stack[:, :width].T.contiguous()
                weights[f"{prefix}.up_projs.{i}.weight"] = stack[:, width:].T.contiguous()
        elif kind == "down_proj" and prefix.endswith("experts"):
            for i, stack in enumerate(tensor):
                weights[f"{prefix}.down_projs.{i}.weight"] = stack.T.contiguous()
        else:
            weights[name] = tensor
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(fused, linearized): the same tiny Llama 4 in both layouts."""
    root = tmp_path_factory.mktemp("llama4")
    fused = _llama4(root / "fused")
    return fused, _linearize(fused, root / "linearized")


@pytest.fixture
def llama4(make_recipe, tmp_path, checkpoints):
    """A lora recipe on the linearized tiny Llama 4 plus a delta, training into tmp_path/run."""
    def make(delta: dict | None = None):
        base = two_step_run({"id": str(checkpoints[1]), "linearized_experts": True}, "lora", tmp_path / "run")
        return load_recipe(make_recipe(delta, base=base))
    return make


def _loaded(recipe):
    return load_model(recipe, choose(recipe, None), cuda=False)


def _logits(model, tokens=((5, 9, 14, 3, 7, 21, 2, 11),)):
    import torch

    with torch.no_grad():
        return model(torch.tensor(tokens)).logits


def test_linearized_experts_load_as_linear_layers_and_compute_what_the_fused_ones_do(llama4, checkpoints):
    import torch

    linearized = _loaded(llama4())
    fused = _loaded(llama4({"model": {"id": str(checkpoints[0]), "linearized_experts": None}}))
    experts = linearized.model.layers[0].feed_forward.experts
    assert isinstance(experts, LinearizedExperts) and len(experts.gate_projs) == 4
    assert isinstance(experts.down_projs[3], torch.nn.Linear) and experts.down_projs[3].weight.shape == (64, 32)
    assert torch.equal(_logits(linearized), _logits(fused))
    # the patch is undone once loaded: a model built afterwards gets transformers' own experts
    assert not isinstance(fused.model.layers[0].feed_forward.experts, LinearizedExperts)


def test_qlora_quantizes_the_linearized_experts_as_every_other_linear_layer(llama4):
    import bitsandbytes as bnb

    model = _loaded(llama4({"method": "qlora"}))
    experts = model.model.layers[1].feed_forward.experts
    assert all(isinstance(layer, bnb.nn.Linear4bit) for layer in (*experts.gate_projs, *experts.down_projs))


def test_adapters_on_linearized_experts_train_and_are_saved(llama4):
    from safetensors.torch import load_file

    done = run(llama4({"method": "qlora", "lora": {"target_modules": ["q_proj", "experts.gate_projs.0",
                                                                      "experts.down_projs.3"]}}), gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN
    adapted = {key.split(".lora_A")[0].split("layers.")[1] for key in load_file(done.saved / "adapter_model.safetensors")
               if "lora_A" in key}
    assert {"0.feed_forward.experts.gate_projs.0", "1.feed_forward.experts.down_projs.3"} <= adapted


@pytest.mark.parametrize("layout", ["fused", "linearized"])
def test_experts_stored_the_other_way_are_refused_not_started_from_random_values(llama4, checkpoints, layout):
    # transformers builds the missing layout's weights from random values and says so in a log line
    fused = layout == "fused"
    recipe = llama4({"model": {"id": str(checkpoints[0] if fused else checkpoints[1]),
                               "linearized_experts": True if fused else None}})
    with pytest.raises(InvalidRecipe) as refused:
        _loaded(recipe)
    problem = refused.value.problems[0]
    assert problem.path == "$.model.linearized_experts"
    assert problem.hint == ("remove model.linearized_experts" if fused else "set model.linearized_experts: true")


def test_linearized_experts_on_another_model_are_refused_before_it_loads(llama4):
    with pytest.raises(InvalidRecipe) as refused:
        _loaded(llama4({"model": {"id": str(TINY_MODEL)}}))
    assert refused.value.problems[0].path == "$.model.linearized_experts"
    assert "llama model" in refused.value.problems[0].message


@pytest.fixture(scope="module")
def saved_in_4_bits(checkpoints, tmp_path_factory):
    """The linearized tiny Llama 4 saved quantized by bitsandbytes (nf4, double quant), as Axolotl's
    axolotl-quants checkpoints are."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from recipecli.train.llama4 import linearized_llama4

    folder = tmp_path_factory.mktemp("llama4-nf4")
    with linearized_llama4():
        AutoModelForCausalLM.from_pretrained(checkpoints[1], quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)).save_pretrained(folder)
    for tokenizer_file in checkpoints[1].glob("tokenizer*"):
        shutil.copy(tokenizer_file, folder / tokenizer_file.name)
    return folder


def test_a_checkpoint_saved_in_4_bits_loads_as_stored_in_the_recipe_s_compute_dtype(llama4, saved_in_4_bits):
    import bitsandbytes as bnb
    import torch

    recipe = llama4({"model": {"id": str(saved_in_4_bits)}, "method": "qlora"})
    model = _loaded(recipe)
    layer = model.model.layers[0].feed_forward.experts.up_projs[2]
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    # stored bf16; on the CPU the recipe computes in fp32
    assert layer.compute_dtype == torch.float32 == getattr(torch, choose(recipe, None).weight_dtype)


@pytest.mark.parametrize("delta, path, hint", [
    ({"method": "lora"}, "$.method", "use method qlora, with quantization as the checkpoint stores it"),
    ({"method": "qlora", "quantization": {"bits": 8}}, "$.quantization.bits", "set quantization.bits: 4"),
    ({"method": "qlora", "quantization": {"type": "fp4"}}, "$.quantization.type", "set quantization.type: nf4"),
    ({"method": "qlora", "quantization": {"double_quant": False}}, "$.quantization.double_quant",
     "set quantization.double_quant: true"),
])
def test_a_recipe_that_says_otherwise_than_the_stored_quantization_is_refused(llama4, saved_in_4_bits, delta,
                                                                               path, hint):
    # transformers loads a checkpoint saved by bitsandbytes as saved, whatever it is asked for
    with pytest.raises(InvalidRecipe) as refused:
        _loaded(llama4({"model": {"id": str(saved_in_4_bits)}, **delta}))
    assert [(p.path, p.hint) for p in refused.value.problems] == [(path, hint)]


def test_llama_4_trains_under_trl_s_fused_output_head(llama4, checkpoints):
    # transformers' Llama4ForCausalLM names its backbone after the multimodal checkpoints' prefix, so
    # model.base_model, which TRL's fused head runs, was the whole model: the first step failed
    done = run(llama4({"model": {"id": str(checkpoints[0]), "linearized_experts": None},
                       "lora": {"target_modules": ["q_proj", "v_proj"]}}), gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN
