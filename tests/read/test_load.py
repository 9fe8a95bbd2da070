"""Loading: extends, overrides, defaults from the schema, the typed Recipe."""
from __future__ import annotations

from pathlib import Path

import pytest

from recipecli.errors import InvalidRecipe
from recipecli.read.load import deep_merge, load_recipe, resolve
from recipecli.read.schema import schema


def test_minimal_recipe_gets_schema_defaults(make_recipe):
    recipe = load_recipe(make_recipe())
    props = schema()["properties"]
    assert recipe.training.micro_batch_size == props["training"]["properties"]["micro_batch_size"]["default"]
    assert recipe.lora.r == props["lora"]["properties"]["r"]["default"]
    # qlora without a quantization section gets the section's schema defaults
    assert recipe.quantization.bits == props["quantization"]["properties"]["bits"]["default"]
    assert recipe.output_dir == Path("runs/t")
    assert recipe.wandb is None


def test_full_has_neither_lora_nor_quantization(make_recipe):
    recipe = load_recipe(make_recipe({"method": "full"}))
    assert recipe.lora is None and recipe.quantization is None


def test_lora_method_has_no_quantization(make_recipe):
    recipe = load_recipe(make_recipe({"method": "lora", "lora": {"target_modules": ["q_proj", "v_proj"]}}))
    assert recipe.quantization is None and recipe.lora.target_modules == ("q_proj", "v_proj")


def test_extends_deep_merges_and_lists_replace(make_recipe, tmp_path):
    (tmp_path / "base").mkdir()
    base = make_recipe({"abstract": True, "name": None, "lora": {"r": 64, "alpha": 128},
                        "data": {"datasets": [{"path": "a/b", "format": "text"}, {"path": "c/d", "format": "text"}]}},
                       name="base/b.yaml")
    child = make_recipe({"extends": "base/b.yaml", "lora": {"r": 8},
                         "data": {"datasets": [{"path": "e/f", "format": "chat"}]}}, name="child.yaml")
    assert base.exists()
    recipe = load_recipe(child)
    assert (recipe.lora.r, recipe.lora.alpha) == (8, 128)
    assert [d.path for d in recipe.data.datasets] == ["e/f"]


def test_abstract_base_validates_but_does_not_run(make_recipe):
    path = make_recipe({"abstract": True, "name": None, "model": None, "data": None})
    assert resolve(path).abstract
    with pytest.raises(InvalidRecipe, match="abstract base"):
        load_recipe(path)


def test_problem_in_base_points_into_the_base(make_recipe, tmp_path):
    make_recipe({"abstract": True, "lora": {"r": 0}}, name="b.yaml")
    child = make_recipe({"extends": "b.yaml"}, name="c.yaml")
    with pytest.raises(InvalidRecipe) as info:
        resolve(child)
    (problem,) = info.value.problems
    assert problem.location.file.endswith("b.yaml") and problem.path == "$.lora.r"


def test_local_paths_resolve_against_the_file_that_wrote_them(make_recipe, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jsonl").write_text('{"text": "x"}\n')
    make_recipe({"abstract": True, "data": {"datasets": [{"path": "d.jsonl", "format": "text"}]}},
                name="sub/base.yaml")
    recipe = load_recipe(make_recipe({"extends": "sub/base.yaml", "data": None}, name="top.yaml"))
    assert recipe.data.datasets[0].local_path == tmp_path / "sub" / "d.jsonl"


def test_overrides_apply_and_are_checked(make_recipe):
    path = make_recipe()
    recipe = load_recipe(path, ["training.learning_rate=1e-4", "lora.target_modules=[q_proj]"])
    assert recipe.training.learning_rate == 1e-4 and recipe.lora.target_modules == ("q_proj",)
    with pytest.raises(InvalidRecipe) as info:
        load_recipe(path, ["training.micro_batch_size=0"])
    (problem,) = info.value.problems
    assert problem.location.file == "--set training.micro_batch_size=0"
    assert problem.path == "$.training.micro_batch_size"
    with pytest.raises(InvalidRecipe, match="dotted.key=value"):
        load_recipe(path, ["training.learning_rate"])


def test_all_problems_of_a_file_are_reported(make_recipe):
    path = make_recipe({"lora": {"r": 0, "dropout": 2}, "training": {"optimizer": "adam", "grad_accum": 4}})
    with pytest.raises(InvalidRecipe) as info:
        resolve(path)
    assert {p.path for p in info.value.problems} == {
        "$.lora.r", "$.lora.dropout", "$.training.optimizer", "$.training.grad_accum"}


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": [1]}}
    out = deep_merge(base, {"a": {"c": [2]}})
    assert out == {"a": {"b": 1, "c": [2]}} and base == {"a": {"b": 1, "c": [1]}}
