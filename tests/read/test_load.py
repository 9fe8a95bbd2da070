"""Loading: extends, overrides, defaults from the schema, the typed Recipe."""
from __future__ import annotations

from pathlib import Path

import pytest

from click.testing import CliRunner

from recipecli.cli import main
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
    assert recipe.output_dir == Path.cwd() / "runs" / "t"  # absent: runs/<name> where the command runs
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
    assert resolve(base).abstract  # the base stays a base...
    recipe = load_recipe(child)  # ...and the child is runnable: abstract is not inherited
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


def _problem(path, overrides=()):
    with pytest.raises(InvalidRecipe) as info:
        resolve(path, overrides)
    return info.value.problems[0]


@pytest.mark.parametrize("content", ["root:$6$secret:19000:0:99999:7:::\n", "token: SECRET-VALUE-123\n",
                                     '{"token": {"value": "SECRET-VALUE-123"}}\n'])
@pytest.mark.parametrize("suffix", [".yaml", ".json", ""])
def test_a_base_that_is_not_a_recipe_is_named_and_never_echoed(make_recipe, tmp_path, content, suffix):
    """Defect 1: extends: /etc/shadow printed its lines as unknown keys; a JSON base leaked values."""
    secret = tmp_path / f"secret{suffix}"
    secret.write_text(content)
    result = CliRunner().invoke(main, ["validate", str(make_recipe({"extends": str(secret)}))])
    assert result.exit_code == 1
    assert "SECRET" not in result.output and "secret:19000" not in result.output and "$6$" not in result.output
    assert "$.extends" in result.output


def test_a_base_must_be_a_yaml_recipe_file(make_recipe):
    problem = _problem(make_recipe({"extends": "/etc/passwd"}))
    assert problem.path == "$.extends" and ".yaml or .yml" in problem.message


def test_an_empty_extends_says_so(make_recipe):
    """Defect 17: extends: "" said `base recipe not found: <folder>`."""
    problem = _problem(make_recipe({"extends": ""}))
    assert problem.message == "extends is empty"


def test_extends_through_a_symlink_loop_is_a_message(make_recipe, tmp_path):
    """Defect 9."""
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    result = CliRunner().invoke(main, ["validate", str(make_recipe({"extends": "a.yaml"}))])
    assert result.exit_code == 1 and "Traceback" not in result.output and "cannot open" in result.output


def test_override_paths_resolve_against_the_current_directory(make_recipe, tmp_path, monkeypatch):
    """Defect 6: --set model.id=./models/x resolved against the text of the override."""
    (tmp_path / "here" / "models" / "x").mkdir(parents=True)
    (tmp_path / "here" / "d.jsonl").write_text('{"text": "a"}\n')
    recipe_file = make_recipe()
    monkeypatch.chdir(tmp_path / "here")
    recipe = load_recipe(recipe_file, ["model.id=./models/x", "data.datasets=[{path: d.jsonl, format: text}]",
                                       "output.dir=out"])
    assert recipe.model.local_path == tmp_path / "here" / "models" / "x"
    assert recipe.data.datasets[0].local_path == tmp_path / "here" / "d.jsonl"
    assert recipe.output_dir == tmp_path / "here" / "out"


def test_output_dir_expands_home_and_is_absolute(make_recipe, tmp_path, monkeypatch):
    """Defects 4 and 14: ~/x was a literal ./~/x; a relative dir is absolute in the Recipe."""
    monkeypatch.chdir(tmp_path)
    assert load_recipe(make_recipe({"output": {"dir": "~/x"}})).output_dir == Path.home() / "x"
    assert load_recipe(make_recipe({"output": {"dir": "runs/y"}})).output_dir == tmp_path / "runs" / "y"


def test_a_bare_existing_model_folder_is_local(make_recipe, tmp_path):
    """Defect 13: model.id models/tiny-llama (no ./) was taken for a hub id."""
    (tmp_path / "models" / "m").mkdir(parents=True)
    assert load_recipe(make_recipe({"model": {"id": "models/m"}})).model.local_path == tmp_path / "models" / "m"


def test_a_tokenizer_folder_is_made_absolute_like_the_model_s_and_a_hub_tokenizer_kept(make_recipe, tmp_path,
                                                                                       monkeypatch):
    (tmp_path / "tokenizers" / "t").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "tokenizers")  # relative to the recipe, not to where one stands
    recipe = load_recipe(make_recipe({"model": {"tokenizer": "tokenizers/t"}}))
    assert (recipe.model.tokenizer, recipe.model.tokenizer_path) == (str(tmp_path / "tokenizers" / "t"),
                                                                     tmp_path / "tokenizers" / "t")
    hub = load_recipe(make_recipe({"model": {"tokenizer": "EleutherAI/gpt-neox-20b"}}))
    assert (hub.model.tokenizer_source, hub.model.tokenizer_path) == ("EleutherAI/gpt-neox-20b", None)
    own = load_recipe(make_recipe())
    assert (own.model.tokenizer, own.model.tokenizer_source) == (None, own.model.id)
    monkeypatch.setenv("HOME", str(tmp_path / "tokenizers"))  # ~ expanded once, as for model.id
    home = load_recipe(make_recipe({"model": {"tokenizer": "~/t"}}))
    assert home.model.tokenizer_path == tmp_path / "tokenizers" / "t"


def test_an_override_value_is_one_line(make_recipe):
    """Defect 22: --set 'name=x<newline>w: 1' silently dropped the second line."""
    problem = _problem(make_recipe(), ["name=x\nw: 1"])
    assert "one line" in problem.message and problem.path == "$.name"
