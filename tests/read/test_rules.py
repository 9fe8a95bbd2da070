"""Each cross-field rule fires on a minimal recipe plus the delta that breaks it, and only then."""
from __future__ import annotations

import pytest

from recipecli.read import rules
from recipecli.errors import InvalidRecipe
from recipecli.read.load import resolve

BREAKING = {
    "lora_with_full": ({"method": "full", "lora": {"r": 8}}, "$.lora"),
    "quantization_without_qlora": ({"method": "lora", "quantization": {"bits": 4}}, "$.quantization"),
    "four_bit_options_with_8bit": ({"quantization": {"bits": 8, "double_quant": True}},
                                   "$.quantization.double_quant"),
    "compute_dtype_against_precision": ({"quantization": {"compute_dtype": "float16"},
                                         "training": {"precision": "bf16"}}, "$.quantization.compute_dtype"),
    "flash_attention_needs_half": ({"training": {"attention": "flash_attention_2", "precision": "fp32"}},
                                   "$.training.attention"),
    "local_model_exists": ({"model": {"id": "../nowhere/model"}}, "$.model.id"),
    "local_datasets_exist": ({"data": {"datasets": [{"path": "missing.csv", "format": "alpaca"}]}},
                             "$.data.datasets[0].path"),
}


def test_every_rule_has_a_breaking_case():
    assert sorted(BREAKING) == sorted(rule.__name__ for rule in rules.RULES)


@pytest.mark.parametrize("name", sorted(BREAKING))
def test_rule_fires_on_its_delta_alone(make_recipe, name):
    delta, path = BREAKING[name]
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe(delta))
    assert [p.path for p in info.value.problems] == [path]


def test_rules_are_quiet_on_a_good_recipe(make_recipe, tmp_path):
    (tmp_path / "d.csv").write_text("instruction,output\nhi,there\n")
    (tmp_path / "model").mkdir()
    resolve(make_recipe({"model": {"id": "./model"}, "data": {"datasets": [{"path": "d.csv", "format": "alpaca"}]},
                         "quantization": {"bits": 8}, "training": {"precision": "fp16"}}))


@pytest.mark.parametrize("reference, local", [
    ("org/name", False), ("./model", True), ("../m", True), ("/abs/m", True), ("~/m", True),
    ("data.jsonl", True), ("sub/data.parquet", True), ("tatsu-lab/alpaca", False),
])
def test_local_reference(reference, local):
    assert rules.is_local_reference(reference) is local
