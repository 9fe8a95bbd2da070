"""The codec: one translation between documents and Recipes, its invariants on every shipped
recipe and on generated ones, and the defects that two hand-written translations had."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.read import codec
from recipecli.read.load import load_recipe, resolve
from recipecli.read.recipe import TargetPattern
from recipecli.read.schema import schema
from recipecli.report.show import document

from ..conftest import SHIPPED


def _runnable(path: Path) -> bool:
    return not resolve(path).abstract


RUNNABLE = [p for p in SHIPPED if _runnable(p)]


def _round_trip(recipe, folder: Path):
    """to_document, saved as YAML in another folder, loaded again."""
    again = folder / "again.yaml"
    again.write_text(codec.dump(codec.to_document(recipe)))
    return load_recipe(again)


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_load_document_load_is_the_identity_for_every_shipped_recipe(path, tmp_path):
    recipe = load_recipe(path)
    assert _round_trip(recipe, tmp_path) == recipe


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_show_output_validates_wherever_it_is_saved(path, tmp_path, monkeypatch):
    shown = CliRunner().invoke(main, ["show", str(path)])
    assert shown.exit_code == 0, shown.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "shown.yaml").write_text(shown.output)
    checked = CliRunner().invoke(main, ["validate", "shown.yaml"])
    assert checked.exit_code == 0, checked.output
    assert "warning" not in checked.output  # the tool's own output trips none of its checks


# Generated recipes: every combination of the fields whose defaults depend on another field.
_DELTAS = [
    dict(method=m, quantization=q, training=t)
    for m, q, t in itertools.product(
        ["qlora", "lora", "full"],
        [None, {"bits": 8}, {"bits": 4, "type": "fp4", "double_quant": False}, {"compute_dtype": "float32"}],
        [{}, {"max_steps": 7}, {"epochs": 2.5}, {"max_steps": 3, "epochs": 2}])
    if not (q and m != "qlora")
] + [  # issue 10: a dataset's own field and role names, a named chat template
    {"method": "lora", "data": {"chat_template": "llama3", "datasets": [
        {"path": "org/c", "format": "chat", "fields": {"messages": "dialog"}, "roles": {"assistant": ["bot", "gpt"]}},
        {"path": "org/a", "format": "alpaca", "fields": {"instruction": "q", "input": "ctx", "output": "a"}}]}},
    # a turn's reasoning: the template's key defaulted (reasoning_content) or given, beside renamed turns
    {"method": "lora", "data": {"datasets": [
        {"path": "org/t", "format": "chat", "fields": {"thinking": "thinking"}},
        {"path": "org/g", "format": "sharegpt", "fields": {"thinking": "reasoning", "content": "text"},
         "template_thinking_key": "thinking"}]}},
    # knobs of one optimizer or schedule, written out with the others (defaults must not fire their rules)
    {"method": "lora", "training": {"optimizer": "sgd", "lr_scheduler": "constant"}},
    {"method": "lora", "training": {"adam_beta2": 0.95, "min_lr_ratio": 0.1}},
    # per-epoch saves and evaluations: save_steps' default is not written beside them (found by converting
    # Axolotl's examples there and back: `recipe show` wrote both, which validate refuses)
    {"method": "lora", "training": {"saves_per_epoch": 2, "evals_per_epoch": 4}, "data": {"val_fraction": 0.1}},
    {"method": "lora", "training": {"saves_per_epoch": 1, "evals_per_epoch": 2, "early_stopping_patience": 2},
     "data": {"val_fraction": 0.1}},
    # the new fields of this wave, with their defaults written out
    {"method": "full", "training": {"qat": {"activation_dtype": "int8"}, "warmup_shape": "quadratic",
                                    "loss": "dft"}},
    {"method": "lora", "training": {"lr_scheduler": "rex", "min_lr_ratio": 0.1, "attention": "flex_attention"}},
    # a template of several lines, special tokens
    {"method": "lora", "training": {"liger_kernel": ["rope", "layer_norm"]}, "data": {"chat_template": "jinja", "special_tokens": {"eos_token": "<|im_end|>"},
                                "chat_template_jinja": "{% for m in messages %}\n{{ m['content'] }}  \n{% endfor %}\n",
                                "datasets": [{"path": "org/c", "format": "chat"}]}},
]


@pytest.mark.parametrize("delta", _DELTAS, ids=str)
def test_identity_and_validity_on_generated_recipes(make_recipe, delta, tmp_path):
    extra = {"lora": {"r": 4}} if delta["method"] != "full" else {}
    recipe = load_recipe(make_recipe({**delta, **extra}))
    assert _round_trip(recipe, tmp_path) == recipe
    doc = codec.to_document(recipe)
    assert resolve(tmp_path / "again.yaml").raw == doc  # what is written is exactly the document


def test_a_header_line_yaml_cannot_hold_as_written_is_escaped_and_the_file_still_loads():
    odd = "made from x\x7fy.yaml\u2028then\x85and\rback \ufffe é 😀"
    text = codec.dump({"name": "n"}, header=odd)
    assert yaml.safe_load(text) == {"name": "n"} and text.count("\n") == 2
    assert text.startswith("# made from x\\u007fy.yaml\\u2028then\\u0085and\\u000dback \\ufffe é 😀\n")


def test_text_of_several_lines_is_written_as_a_block_where_yaml_can_hold_it():
    assert codec.block_yaml({"t": "a\nb\n"}) == "t: |\n  a\n  b\n"
    awkward = "a  \n\tb"  # trailing spaces and a tab: quoted instead, the same text read back
    assert yaml.safe_load(codec.block_yaml({"t": awkward})) == {"t": awkward}


def test_an_8bit_recipe_shows_as_a_valid_8bit_recipe(make_recipe):
    """The schema's 4-bit defaults used to be filled into 8-bit sections, which validate refuses."""
    doc = codec.to_document(load_recipe(make_recipe({"quantization": {"bits": 8}})))
    assert doc["quantization"] == {"bits": 8, "compute_dtype": "auto", "moe_experts": False}
    four = codec.to_document(load_recipe(make_recipe()))
    assert four["quantization"] == {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "auto",
                                    "moe_experts": False}


@pytest.mark.parametrize("targets, typed", [
    ("attention", "attention"), (["q_proj", "v_proj"], ("q_proj", "v_proj")),
    ({"pattern": r"model.layers.[\d]+.self_attn.(q|v)_proj"},
     TargetPattern(r"model.layers.[\d]+.self_attn.(q|v)_proj")),
])
def test_each_form_of_target_modules_is_typed_and_written_back_as_it_was(make_recipe, targets, typed, tmp_path):
    recipe = load_recipe(make_recipe({"lora": {"target_modules": targets}}))
    assert recipe.lora.target_modules == typed
    assert codec.to_document(recipe)["lora"]["target_modules"] == targets
    assert _round_trip(recipe, tmp_path) == recipe


def test_epochs_is_filled_only_without_max_steps(make_recipe):
    assert load_recipe(make_recipe({"training": {"max_steps": 5}})).training.epochs is None
    assert load_recipe(make_recipe()).training.epochs == 1


def test_full_and_lora_methods_get_only_their_sections(make_recipe):
    full = load_recipe(make_recipe({"method": "full"}))
    lora = load_recipe(make_recipe({"method": "lora"}))
    assert (full.lora, full.quantization) == (None, None)
    assert lora.lora is not None and lora.quantization is None


def test_every_schema_section_is_a_recipe_field():
    """A field added to the schema without its dataclass field (or back) fails here."""
    def walk(node, kind, where):
        fields = dict(codec._fields(kind))
        props = {k for k in node.get("properties", {}) if k not in ("$schema", "extends", "abstract")}
        assert props == set(fields), where
        for name in props:
            sub, hint = node["properties"][name], fields[name]
            inner = [a for a in getattr(hint, "__args__", ()) if hasattr(a, "__dataclass_fields__")]
            if inner and sub.get("type") == "object":
                walk(sub, inner[0], f"{where}.{name}")
            elif hasattr(hint, "__dataclass_fields__"):
                walk(sub, hint, f"{where}.{name}")
    from recipecli.read.recipe import Recipe
    walk(schema(), Recipe, "$")


def test_diff_compares_meaning_not_spelling(tmp_path):
    """Defect 15: a recipe and its run folder's recipe.yaml (absolute paths) do not differ."""
    recipe = load_recipe(SHIPPED[-1] if _runnable(SHIPPED[-1]) else RUNNABLE[0])
    saved = tmp_path / "recipe.yaml"
    saved.write_text(codec.dump(codec.to_document(recipe)))
    result = CliRunner().invoke(main, ["diff", str(recipe.source), str(saved)])
    assert result.output.strip() == "no differences", result.output
    assert document(resolve(saved)) == codec.to_document(recipe)


def test_a_stored_recipe_means_the_same_from_any_directory(tmp_path, monkeypatch):
    """Defect 14: runs/sig/recipe.yaml stored output.dir as runs/sig, so --resume from another
    directory found no checkpoint. Stored absolute, it names the same folder from anywhere."""
    recipe = load_recipe(RUNNABLE[-1])
    stored = tmp_path / "run" / "recipe.yaml"
    stored.parent.mkdir()
    stored.write_text(codec.dump(codec.to_document(recipe)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = load_recipe(stored)
    assert again.output_dir == recipe.output_dir and again.model == recipe.model and again.data == recipe.data


def test_the_template_s_reasoning_key_is_filled_only_beside_fields_thinking(make_recipe):
    datasets = load_recipe(make_recipe({"data": {"datasets": [
        {"path": "org/t", "format": "chat", "fields": {"thinking": "thinking"}},
        {"path": "org/p", "format": "chat", "fields": {"messages": "dialog"}},
        {"path": "org/g", "format": "chat", "fields": {"thinking": "thinking"}, "template_thinking_key": "thinking"},
    ]}})).data.datasets
    assert [(d.thinking, d.template_thinking_key) for d in datasets] == [
        ("thinking", "reasoning_content"), (None, None), ("thinking", "thinking")]
