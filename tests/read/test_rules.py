"""Each cross-field rule fires on a minimal recipe plus the delta that breaks it, and only then."""
from __future__ import annotations

import os

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
    "model_is_a_folder_or_a_hub_id": ({"model": {"id": "../nowhere/model"}}, "$.model.id"),
    "datasets_are_files_or_hub_ids": ({"data": {"datasets": [{"path": "missing.csv", "format": "alpaca"}]}},
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


@pytest.mark.parametrize("model_id", [" ", "a/b/c", "https://huggingface.co/org/name", "org/name;rm -rf /",
                                      "org/../name", "org--x/name", "-org/name", "org/name.", "x" * 97])
def test_a_model_id_is_a_hub_id_or_an_existing_folder(make_recipe, model_id):
    """Defect 13: ids the hub would refuse are refused here, before any download is tried."""
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"model": {"id": model_id}}))
    (problem,) = info.value.problems
    assert problem.path == "$.model.id" and "neither a hub id nor an existing folder" in problem.message
    assert "org/name" in problem.hint


@pytest.mark.parametrize("path", ["a/b/c", "http://x/y", "x;y"])
def test_a_dataset_is_a_hub_id_or_a_data_file(make_recipe, path):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": path, "format": "alpaca"}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].path"]


def test_a_fifo_is_no_dataset_file(make_recipe, tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "pipe.jsonl", "format": "alpaca"}]}}))
    assert "not a regular file" in info.value.problems[0].message
