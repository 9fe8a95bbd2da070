"""What the model loader (recipecli/train/model.py) refuses to train from: a checkpoint that lacks
weights of its model, and a base stored quantized by another method than bitsandbytes. The tiny
Llama's own checkpoint, cut or relabelled; loaded by the real transformers."""
from __future__ import annotations

import pytest

from recipecli.errors import InvalidRecipe, RecipeError
from recipecli.fit.precision import choose
from recipecli.read.load import load_recipe
from recipecli.train.model import load_model

from ..conftest import RECIPES

TINY_MODEL = RECIPES / "models" / "tiny-llama"
DATA = RECIPES / "data"

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def _loaded(recipe):
    return load_model(recipe, choose(recipe, None), cuda=False)


def test_weights_missing_from_a_checkpoint_are_refused(tmp_path, make_recipe):
    # a checkpoint cut short (here: one layer's weights gone) would train with random weights there
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cut"
    shutil.copytree(TINY_MODEL, folder)
    weights = {k: v for k, v in load_file(folder / "model.safetensors").items() if "layers.1.mlp" not in k}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    recipe = load_recipe(make_recipe({"model": {"id": str(folder)}, "method": "lora", "data": {"datasets": [
        {"path": str(DATA / "tiny-alpaca.jsonl"), "format": "alpaca"}]}}))
    with pytest.raises(RecipeError, match=r"3 of its weights are not in the checkpoint \(model.layers.1.mlp"):
        _loaded(recipe)


@pytest.mark.parametrize("method", ["gptq", "fp8", "compressed-tensors"])
def test_a_base_stored_in_another_quantization_is_refused_before_it_loads(tmp_path, make_recipe, method):
    # transformers would build that method's layers (or refuse bitsandbytes beside them) with its own message
    import json
    import shutil

    folder = tmp_path / "quantized"
    shutil.copytree(TINY_MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    recipe = load_recipe(make_recipe({"model": {"id": str(folder)}, "method": "lora", "data": {"datasets": [
        {"path": str(DATA / "tiny-alpaca.jsonl"), "format": "alpaca"}]}}))
    with pytest.raises(InvalidRecipe) as refused:
        _loaded(recipe)
    assert refused.value.problems[0].path == "$.model.id"
    assert f"stored quantized with {method}" in refused.value.problems[0].message


def test_a_model_without_sdpa_trains_with_attention_auto(tmp_path, make_recipe):
    # Gemma 2: transformers refuses sdpa for it (softcapping); auto was sdpa, so the run was refused
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    from recipecli.train.runner import run

    from ..conftest import two_step_run

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    torch.manual_seed(0)
    folder = tmp_path / "gemma2"
    Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = load_recipe(make_recipe(base=two_step_run({"id": str(folder)}, "lora", tmp_path / "run")))
    done = run(recipe, gpus=())
    assert done.steps == 2 and done.final_loss == done.final_loss  # finite, not NaN
