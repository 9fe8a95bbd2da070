"""The schema itself: a valid 2020-12 schema, closed, every field described, defaults valid."""
from __future__ import annotations

import jsonschema
import pytest

from recipecli.errors import InvalidRecipe
from recipecli.read.load import resolve

from recipecli.read.schema import fill_defaults, schema


def walk(node, path="$"):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def test_schema_is_valid_2020_12_with_id():
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$id"] and schema()["$schema"].endswith("2020-12/schema")


def test_every_field_is_described_and_every_object_closed():
    for path, node in walk(schema()):
        if path.endswith("[]"):
            continue
        assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{path} is open"


def invalid_defaults(root: dict) -> dict:
    """JSON path -> why, for every default its own field's rules refuse."""
    found = {}
    for path, node in walk(root):
        if "default" in node:
            field = jsonschema.Draft202012Validator({k: v for k, v in node.items() if k != "default"})
            found.update({path: e.message for e in field.iter_errors(node["default"])})
    return found


def test_every_default_is_valid_for_its_field():
    assert invalid_defaults(schema()) == {}


def test_a_default_outside_its_bounds_is_found():
    broken = {"properties": {"lora": {"type": "object", "properties": {
        "r": {"type": "integer", "minimum": 1, "default": 0},
        "alpha": {"type": "number", "default": "32"}}}}}
    assert set(invalid_defaults(broken)) == {"$.lora.r", "$.lora.alpha"}


def test_fill_defaults_keeps_written_values():
    doc = fill_defaults({"training": {"seed": 7}})
    assert doc["training"]["seed"] == 7 and doc["training"]["epochs"] == 1
    assert "quantization" not in doc  # no section default: only qlora recipes get one, in load


def _problems(make_recipe, delta):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe(delta))
    return info.value.problems


@pytest.mark.parametrize("delta, path", [
    ({"lora": {"r": 8.0}}, "$.lora.r"), ({"training": {"micro_batch_size": 2.0}}, "$.training.micro_batch_size"),
    ({"training": {"max_steps": 1e12}}, "$.training.max_steps"), ({"training": {"seed": 1.0}}, "$.training.seed"),
    ({"model": {"pad_vocab_to_multiple_of": 32.0}}, "$.model.pad_vocab_to_multiple_of"),
    # enums of whole numbers: 4.0 == 4 for an enum, so the type says it
    ({"quantization": {"bits": 4.0}}, "$.quantization.bits"),
    ({"method": "full", "training": {"qat": {"group_size": 32.0}}}, "$.training.qat.group_size"),
])
def test_floats_are_not_whole_numbers(make_recipe, delta, path):
    """Defect 7: r: 8.0 and max_steps: 1e12 validated, then crashed deep in torch/TRL."""
    problem = next(p for p in _problems(make_recipe, delta) if "whole number" in p.message)
    assert problem.path == path and problem.hint


@pytest.mark.parametrize("field", [("data", "val_fraction"), ("training", "learning_rate"), ("lora", "dropout"),
                                   ("lora", "alpha"), ("training", "epochs"), ("training", "max_grad_norm"),
                                   ("training", "router_aux_loss_coef")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(make_recipe, field, value):
    """Defect 8: val_fraction: .nan crashed in data.py; lora.dropout: .nan trained as 0."""
    section, name = field
    (problem,) = _problems(make_recipe, {section: {name: value}})
    assert problem.path == f"$.{section}.{name}" and "not a finite number" in problem.message


@pytest.mark.parametrize("delta, key, hint", [
    ({"training": {"lr": 1e-4}}, "$.training.lr", "did you mean 'learning_rate'?"),
    ({"training": {"r": 8}}, "$.training.r", "'r' belongs in $.lora"),
    ({"datasets": []}, "$.datasets", "'datasets' belongs in $.data"),
    ({"training": {"num_epochs": 2}}, "$.training.num_epochs", "did you mean 'epochs'?"),
    ({"training": {"lora_r": 8}}, "$.training.lora_r", "did you mean 'r' in $.lora?"),
])
def test_hints_say_what_the_writer_meant(make_recipe, delta, key, hint):
    """Defect 17: lr -> lr_scheduler, r -> learning_rate, datasets -> data were the hints."""
    (problem,) = _problems(make_recipe, delta)
    assert problem.path == key and problem.hint == hint


def test_a_mapping_is_never_echoed_in_a_type_error(make_recipe):
    (problem,) = _problems(make_recipe, {"name": {"token": "SECRET"}})
    assert "SECRET" not in str(problem) and "a mapping" in problem.message


def test_an_empty_value_is_named_as_such(make_recipe):
    # `lora:` with nothing after it (or `lora: null`) read "got null None"
    path = make_recipe({"lora": None})
    path.write_text(path.read_text() + "lora:\n")
    with pytest.raises(InvalidRecipe) as info:
        resolve(path)
    (problem,) = info.value.problems
    assert problem.path == "$.lora" and problem.message.endswith("got null (an empty value)")


def test_yaml_1_1_booleans_get_a_hint(make_recipe):
    (problem,) = _problems(make_recipe, {"data": {"packing": "on"}})
    assert "true or false" in problem.hint
