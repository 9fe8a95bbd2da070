"""The suggestion search: the smallest change that fits, re-estimated and reloadable."""
from __future__ import annotations

import pytest
import yaml

from recipecli.read import load
from recipecli.fit.gpu_catalog import card
from recipecli.fit.verdict import check
from recipecli.fit.suggest import suggest

RTX2080 = card("rtx2080")
SEVEN_B = {"model": {"id": "mistralai/Mistral-7B-v0.1"}}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _fits_after(make_recipe, path, gpu, suggestion):
    """Write the suggested recipe, load it like a user would, and check it again."""
    fitted = make_recipe(base=load.deep_merge(load.resolve(path).raw, suggestion.patch), name="fitted.yaml")
    return check(load.load_recipe(fitted), gpu)


@pytest.mark.parametrize("delta, gpu", [
    ({**SEVEN_B, "method": "lora"}, RTX2080),  # 16-bit 7B: 4-bit base needed
    ({**SEVEN_B, "method": "full"}, RTX2080),  # full 7B: only a change of method fits
    ({**SEVEN_B, "method": "full"}, card("4090")),
    ({"data": {"max_seq_length": 4096}, "training": {"micro_batch_size": 8, "gradient_accumulation_steps": 2,
                                                      "gradient_checkpointing": False}}, RTX2080),
])
def test_suggestions_really_fit_when_reloaded(make_recipe, delta, gpu):
    path = make_recipe(delta)
    recipe = load.load_recipe(path)
    assert not check(recipe, gpu).fits
    suggestion = suggest(recipe, gpu)
    assert suggestion is not None and suggestion.verdict.fits and suggestion.changes
    again = _fits_after(make_recipe, path, gpu, suggestion)
    assert again.fits and again.estimate.device_bytes == suggestion.verdict.estimate.device_bytes


def test_a_full_fine_tune_a_gib_over_gets_torchao_s_4bit_adamw_first(make_recipe):
    # TinyLlama in full, pure fp16, 8-bit AdamW: 6.9 GiB; a 4-bit state saves a byte per weight, a
    # smaller change than training adapters instead
    from pathlib import Path

    from recipecli.fit.gpu_catalog import gpu_from_vram

    bench = yaml.safe_load((Path(__file__).parents[2] / "benchmarks" / "recipes" / "tinyllama-full-pure-fp16.yaml")
                           .read_text())
    path = make_recipe(base=bench)
    gpu = gpu_from_vram(7.0)
    suggestion = suggest(load.load_recipe(path), gpu)
    assert suggestion.patch == {"training": {"optimizer": "adamw_torch_4bit"}}
    assert "recipecli[torchao]" in suggestion.changes[0]
    assert _fits_after(make_recipe, path, gpu, suggestion).fits
    # under DeepSpeed torchao's AdamW is refused (rules.py): never suggested there
    deep = make_recipe(load.deep_merge(bench, {"distributed": {"strategy": "deepspeed_zero2", "processes_per_node": 1},
                                               "training": {"precision": "fp16"}}), name="deep.yaml", base={})
    from recipecli.fit import suggest as suggest_module

    assert [m.patch for m in suggest_module._optimizer(load.load_recipe(path))] == [
        {"training": {"optimizer": "adamw_torch_4bit"}}]
    assert list(suggest_module._optimizer(load.load_recipe(deep))) == []


def test_micro_batch_suggestion_keeps_the_effective_batch(make_recipe):
    path = make_recipe({"data": {"max_seq_length": 4096}, "training": {
        "micro_batch_size": 8, "gradient_accumulation_steps": 2, "gradient_checkpointing": False}})
    suggestion = suggest(load.load_recipe(path), RTX2080)
    training = suggestion.patch["training"]
    assert training["micro_batch_size"] * training["gradient_accumulation_steps"] == 16
    assert training["gradient_checkpointing"] is True
    assert "data" not in suggestion.patch  # speed-only changes suffice: no truncation


def test_cheapest_change_first(make_recipe):
    # On a 24 GB card checkpointing alone is enough: nothing that costs quality is proposed.
    recipe = load.load_recipe(make_recipe({"data": {"max_seq_length": 4096}, "training": {
        "micro_batch_size": 8, "gradient_accumulation_steps": 2, "gradient_checkpointing": False}}))
    suggestion = suggest(recipe, card("4090"))
    assert suggestion.patch == {"training": {"gradient_checkpointing": True}}


def test_lora_to_qlora_patch_is_a_valid_recipe(make_recipe):
    suggestion = suggest(load.load_recipe(make_recipe({**SEVEN_B, "method": "lora"})), RTX2080)
    assert suggestion.patch["method"] == "qlora"
    assert suggestion.patch["quantization"] == {"bits": 4, "type": "nf4", "double_quant": True, "moe_experts": False}
    assert yaml.safe_load(yaml.safe_dump(suggestion.patch)) == suggestion.patch  # plain YAML values


def test_nothing_fits_70b_on_8gb(make_recipe):
    recipe = load.load_recipe(make_recipe({"model": {"id": "meta-llama/Llama-2-70b-hf"}}))
    assert suggest(recipe, RTX2080) is None


def test_no_suggestion_for_a_recipe_that_fits(make_recipe):
    assert suggest(load.load_recipe(make_recipe()), RTX2080) is None
