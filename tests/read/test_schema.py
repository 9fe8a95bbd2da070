"""The schema itself: a valid 2020-12 schema, closed, every field described, defaults valid."""
from __future__ import annotations

import jsonschema

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


def test_every_default_is_valid_for_its_field():
    for path, node in walk(schema()):
        if "default" in node:
            jsonschema.Draft202012Validator({k: v for k, v in node.items() if k != "default"}).validate(
                node["default"]), path


def test_fill_defaults_keeps_written_values():
    doc = fill_defaults({"training": {"seed": 7}})
    assert doc["training"]["seed"] == 7 and doc["training"]["epochs"] == 1
    assert "quantization" not in doc  # no section default: only qlora recipes get one, in load
