"""A mixture of experts end to end on the CPU: a tiny Mixtral built here (the tiny Llama's tokenizer,
four experts, two per token) trained by the real stack, its experts quantized by bitsandbytes,
adapted by peft, its router loss added by TRL. Nothing of the training stack is mocked."""
from __future__ import annotations

import pytest

from recipecli.errors import InvalidRecipe, UnknownTargets
from recipecli.fit.precision import choose
from recipecli.read.load import load_recipe
from recipecli.train.model import fused_experts, load_model
from recipecli.train.runner import run

from ..conftest import RECIPES, two_step_run

TINY_MODEL = RECIPES / "models" / "tiny-llama"

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def _mixtral(folder, experts: int):
    """A tiny Mixtral with the tiny Llama's tokenizer, saved into ``folder``."""
    import torch
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=experts,
                           num_experts_per_tok=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    MixtralForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _gpt_oss_in_mxfp4(folder):
    """A tiny gpt-oss saved as gpt-oss ships: its experts' weights in MXFP4 (packed 4-bit values and a
    power-of-two scale per 32), quantization_config mxfp4 in config.json."""
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, GptOssConfig, GptOssForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    torch.manual_seed(0)
    config = GptOssConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                          num_experts_per_tok=2, max_position_embeddings=256, sliding_window=32,
                          layer_types=["sliding_attention", "full_attention"], bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    GptOssForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, fan_in, fan_out = tensor.shape  # stored (out, in / 32 groups, 16 bytes of two values)
            weights[f"{name}_blocks"] = torch.randint(0, 256, (experts, fan_out, fan_in // 32, 16), dtype=torch.uint8)
            weights[f"{name}_scales"] = torch.randint(120, 126, (experts, fan_out, fan_in // 32), dtype=torch.uint8)
        else:
            weights[name] = tensor
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    saved = json.loads((folder / "config.json").read_text())
    saved["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(saved))
    return folder


def test_a_base_stored_in_mxfp4_trains_dequantized_and_refuses_bitsandbytes(moe, tmp_path):
    # gpt-oss as it ships (Axolotl's model_quantization_config: Mxfp4Config, dequantize: true)
    import torch

    folder = _gpt_oss_in_mxfp4(tmp_path / "gpt-oss")
    with pytest.raises(InvalidRecipe) as sdpa:  # attention sinks: transformers runs gpt-oss' attention eagerly
        _loaded(moe({"model": {"id": str(folder)}, "method": "lora"}))
    assert sdpa.value.problems[0].path == "$.training.attention" and "eager" in sdpa.value.problems[0].hint
    shorthand = moe({"model": {"id": str(folder)}, "method": "lora", "training": {"attention": "eager"}})
    with pytest.raises(UnknownTargets, match="attention shorthand is not known for gpt_oss") as named:
        run(shorthand, gpus=())  # fit-check reads no gpt-oss layout to expand it from
    assert "self_attn.q_proj" in named.value.hint
    recipe = moe({"model": {"id": str(folder)}, "method": "lora", "training": {"attention": "eager"},
                  "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}})
    model = _loaded(recipe)
    stacks = [getattr(module, name) for module, name in fused_experts(model)]
    assert len(stacks) == 4 and all(s.dtype == torch.float32 and s.shape[0] == 4 for s in stacks)
    assert not getattr(model, "is_quantized", False)  # trainable: transformers refuses MXFP4 weights
    done = run(recipe, gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss
    with pytest.raises(InvalidRecipe) as refused:
        _loaded(moe({"model": {"id": str(folder)}, "training": {"attention": "eager"}}))  # method qlora
    (problem,) = refused.value.problems
    assert problem.path == "$.method" and "stored in MXFP4, which bitsandbytes cannot quantize again" in problem.message


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory):
    return _mixtral(tmp_path_factory.mktemp("tiny-mixtral"), experts=4)


@pytest.fixture
def moe(make_recipe, tmp_path, tiny_mixtral):
    """A qlora recipe on the tiny Mixtral plus a delta, training into tmp_path/run."""
    def make(delta: dict | None = None):
        base = two_step_run({"id": str(tiny_mixtral)}, "qlora", tmp_path / "run")
        return load_recipe(make_recipe(delta, base=base))
    return make


def _loaded(recipe):
    return load_model(recipe, choose(recipe, None), cuda=False)


def test_bitsandbytes_leaves_the_fused_experts_in_16_bits_and_peft_upcasts_them(moe):
    # why quantization.moe_experts exists, and why fit-check counts a qlora MoE's experts unquantized
    model = _loaded(moe())
    experts = fused_experts(model)
    assert [name for _, name in experts] == ["gate_up_proj", "down_proj"] * 2
    assert {getattr(m, name).dtype for m, name in experts} == {__import__("torch").float32}


def test_quantized_experts_are_stored_in_4_bits_and_train_beside_the_adapters(moe):
    import torch

    recipe = moe({"quantization": {"moe_experts": True}})
    model = _loaded(recipe)
    assert [name for _, name in fused_experts(model)] == ["gate_up_proj", "down_proj"] * 2
    for module, name in fused_experts(model):
        stored = module.parametrizations[name].original
        assert stored.dtype == torch.uint8 and stored.numel() * 2 == getattr(module, name).numel()
    done = run(recipe, gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN


def test_8_bit_experts_are_int8_rows_with_a_scale_each_dequantized_once_per_forward(moe, tiny_mixtral):
    # Axolotl's quantize_moe_experts with load_in_8bit: LLM.int8's row-wise absmax, which
    # bitsandbytes' parametrization (4-bit only) does not offer
    import torch
    from transformers import AutoModelForCausalLM

    original = {name: p for name, p in AutoModelForCausalLM.from_pretrained(tiny_mixtral).named_parameters()
                if "experts" in name}
    model = _loaded(moe({"quantization": {"bits": 8, "moe_experts": True}}))
    assert [name for _, name in fused_experts(model)] == ["gate_up_proj", "down_proj"] * 2
    for module, name in fused_experts(model):
        stored = module.parametrizations[name].original
        scales = module.parametrizations[name][0].scales
        weight = getattr(module, name)
        assert stored.dtype == torch.int8 and stored.shape == weight.shape and not stored.requires_grad
        assert scales.dtype == torch.float32 and scales.numel() == weight.shape[0] * weight.shape[1]
    # each row within half a quantization step (its absmax / 127) of the 16-bit weights
    for module, name in fused_experts(model):
        path = next(n for n, m in model.named_modules() if m is module)
        full, weight = original[f"{path}.{name}"], getattr(module, name)
        assert weight.dtype == full.dtype
        full, weight = full.float(), weight.float()
        step = full.abs().amax(dim=-1, keepdim=True) / 127
        assert ((weight - full).abs() <= step / 2 + 1e-3).all()
    # the experts' forward reads its stacks through the cache: one dequantization each
    import torch.nn.utils.parametrize as parametrize

    module, name = fused_experts(model)[0]
    calls = []
    parametrization = module.parametrizations[name][0]
    parametrization.register_forward_hook(lambda *_: calls.append(1))
    model(torch.tensor([[1, 2, 3, 4]]))
    assert len(calls) == 1 and parametrize._cache_enabled == 0 and not parametrize._cache


def test_8_bit_quantized_experts_train_beside_the_adapters(moe):
    done = run(moe({"quantization": {"bits": 8, "moe_experts": True}}), gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN


def test_adapters_on_the_fused_experts_train_and_are_saved(moe):
    from safetensors.torch import load_file

    done = run(moe({"lora": {"dropout": 0, "target_parameters": ["mlp.experts.gate_up_proj",
                                                                  "mlp.experts.down_proj"]}}), gpus=())
    saved = load_file(done.saved / "adapter_model.safetensors")
    experts = sorted(key for key in saved if "experts" in key and "lora_A" in key)
    assert len(experts) == 4, sorted(saved)  # two parameters in each of the two layers


def test_the_router_loss_is_added_only_when_the_recipe_asks(moe, tmp_path):
    plain = run(moe(), gpus=())
    recipe = moe({"training": {"router_aux_loss": True, "router_aux_loss_coef": 10.0},
                  "output": {"dir": str(tmp_path / "with-loss")}})
    with_loss = run(recipe, gpus=())
    # the same weights and batches: the difference is the weighted load-balancing loss (>= 1 for top-2 of 4)
    assert with_loss.final_loss - plain.final_loss > 5


def test_an_experts_kernel_reaches_the_model(moe):
    model = _loaded(moe({"model": {"experts_implementation": "eager"}}))
    assert model.config._experts_implementation == "eager"


def _dropouts(model) -> dict:
    """Each LoRA layer's input dropout probability by kind: linear layers and parameters (experts)."""
    import torch
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    found: dict = {"linear": set(), "parameters": set()}
    for module in model.modules():
        if isinstance(module, LoraLayer):
            kind = "parameters" if isinstance(module, ParamWrapper) else "linear"
            found[kind] |= {d.p if isinstance(d, torch.nn.Dropout) else 0.0 for d in module.lora_dropout.values()}
    return found


def test_all_linear_with_dropout_drops_the_linear_adapters_inputs_and_not_the_experts(moe):
    # peft adapts Mixtral's experts and routers as parameters under all-linear and refuses dropout
    # there; refused before, the run now gives them none and the attention's adapters the dropout
    from recipecli.train.model import adapter_dropout, drop_adapter_inputs, lora_config

    recipe = moe({"lora": {"target_modules": "all-linear", "dropout": 0.05}})
    done = run(recipe, gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN
    from peft import get_peft_model

    model = _loaded(recipe)
    assert adapter_dropout(0.05, "all-linear", (), model) == 0.0 and adapter_dropout(0.05, "attention", (), model) == 0.05
    peft_model = get_peft_model(model, lora_config(4, 8, 0.05, "all-linear", model))
    drop_adapter_inputs(peft_model, 0.05)
    assert _dropouts(peft_model) == {"linear": {0.05}, "parameters": {0.0}}


def test_adapters_on_named_parameters_take_no_dropout_and_the_others_theirs(moe):
    # lora.target_parameters with dropout was refused by a rule (peft refuses it for parameters);
    # Axolotl trains it with the dropout on the linear adapters alone, and so does recipe now
    from peft import get_peft_model

    from recipecli.train.model import drop_adapter_inputs, lora_config

    delta = {"lora": {"target_modules": "attention", "dropout": 0.05, "target_parameters": ["mlp.experts.down_proj"]}}
    done = run(moe(delta), gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN
    model = _loaded(moe(delta))
    peft_model = get_peft_model(model, lora_config(4, 8, 0.05, "attention", model, ["mlp.experts.down_proj"]))
    drop_adapter_inputs(peft_model, 0.05)
    assert _dropouts(peft_model) == {"linear": {0.05}, "parameters": {0.0}}


@pytest.mark.parametrize("delta, path", [
    ({"model": {"experts_implementation": "grouped_mm"}}, "$.model.experts_implementation"),
    ({"quantization": {"moe_experts": True}}, "$.quantization.moe_experts"),
    ({"training": {"router_aux_loss": True}}, "$.training.router_aux_loss"),
])
def test_expert_settings_on_a_dense_model_are_refused(moe, delta, path):
    recipe = moe({**delta, "model": {"id": str(TINY_MODEL), **delta.get("model", {})}})
    with pytest.raises(InvalidRecipe) as refused:
        _loaded(recipe)
    (problem,) = refused.value.problems
    assert problem.path == path and "is not a mixture of experts" in problem.message


@pytest.mark.parametrize("model, name, said", [
    ("mixtral", "mlp.experts.up_proj", "its fused expert parameters are"),
    ("dense", "mlp.experts.down_proj", "it has no fused experts"),
])
def test_target_parameters_that_name_nothing_are_located(moe, tiny_mixtral, model, name, said):
    # peft would adapt nothing there, with a warning only
    recipe = moe({"model": {"id": str(tiny_mixtral if model == "mixtral" else TINY_MODEL)},
                  "lora": {"dropout": 0, "target_parameters": [name]}})
    with pytest.raises(UnknownTargets) as refused:
        run(recipe, gpus=())
    assert refused.value.path == "$.lora.target_parameters" and refused.value.where is not None
    assert f"{name} match no parameter" in refused.value.message and said in refused.value.message
