"""The CLI through its real entry point: exit codes, messages, formats, and no heavy imports."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode
from recipecli.shipped import SCHEMA_PATH

from .conftest import RECIPES, heavy_imports


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_validate_several_files_with_summary(make_recipe):
    good = make_recipe(name="good.yaml")
    bad = make_recipe({"lora": {"r": 0}}, name="bad.yaml")
    result = invoke("validate", good, bad)
    assert result.exit_code == ExitCode.INVALID
    lines = result.output.splitlines()
    assert lines[0] == f"{good}: ok"
    assert lines[1].startswith(f"{bad}:") and "$.lora.r" in lines[1]
    assert lines[-1] == "2 files: 1 valid, 1 invalid (1 problem)"


def test_validate_ok_exit_code(make_recipe):
    assert invoke("validate", make_recipe()).exit_code == ExitCode.OK


def test_validate_json_carries_every_field(make_recipe):
    bad = make_recipe({"training": {"grad_accum": 4}})
    result = invoke("validate", "--format", "json", bad)
    report = json.loads(result.output)
    assert report["invalid"] == 1
    (problem,) = report["files"][0]["problems"]
    assert problem["path"] == "$.training.grad_accum"
    assert problem["line"] > 1 and problem["hint"] == "did you mean 'gradient_accumulation_steps'?"


def test_usage_errors_exit_2():
    assert invoke("validate").exit_code == ExitCode.USAGE
    assert invoke("nonsense").exit_code == ExitCode.USAGE


def test_show_prints_resolved_recipe_in_schema_order(make_recipe):
    result = invoke("show", make_recipe(), "--set", "lora.r=4")
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["lora"]["r"] == 4 and shown["training"]["optimizer"] == "adamw_torch"
    assert list(shown)[:3] == ["recipe_version", "name", "model"]


def test_show_of_invalid_recipe_is_a_message_not_a_traceback(make_recipe):
    result = invoke("show", make_recipe({"lora": {"r": 0}}))
    assert result.exit_code == ExitCode.INVALID
    assert "$.lora.r" in result.output and "Traceback" not in result.output


def test_diff_lists_changed_fields(make_recipe):
    a = make_recipe(name="a.yaml")
    b = make_recipe({"lora": {"r": 64}, "training": {"optimizer": "paged_adamw_8bit"}}, name="b.yaml")
    result = invoke("diff", a, b)
    assert result.exit_code == 0
    assert result.output.splitlines() == ["~ lora.r: 16 -> 64", "~ training.optimizer: adamw_torch -> paged_adamw_8bit"]
    assert invoke("diff", a, a).output.strip() == "no differences"


def test_schema_command():
    assert invoke("schema", "--path").output.strip() == str(SCHEMA_PATH)
    assert json.loads(invoke("schema").output)["$id"]


def test_validate_never_imports_heavy_libraries():
    assert heavy_imports(["validate", *(str(p) for p in sorted(RECIPES.rglob("*.yaml")))]) == []


def test_console_script_runs(make_recipe):
    recipe_bin = __import__("shutil").which("recipe", path=str(__import__("pathlib").Path(sys.executable).parent))
    proc = subprocess.run([recipe_bin, "validate", str(make_recipe())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.endswith("1 file: 1 valid, 0 invalid (0 problems)\n")


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Example: recipe" in result.output, name


def test_trust_remote_code_is_shown(make_recipe):
    result = invoke("validate", make_recipe({"model": {"trust_remote_code": True}}))
    assert result.exit_code == 0
    assert "$.model.trust_remote_code: warning: this recipe runs Python code" in result.output


def test_every_command_reports_domain_errors_itself_even_run_alone():
    # check_gpu.py runs `gpu` without the group: its errors must still be messages and exit codes.
    from recipecli.cli import Command, gpu_command

    assert all(isinstance(command, Command) for command in main.commands.values())
    result = CliRunner().invoke(gpu_command, ["--gpu", "rtx2090"])
    assert result.exit_code == ExitCode.USAGE and isinstance(result.exception, SystemExit)  # not a traceback
    assert result.output.startswith("--gpu: unknown GPU 'rtx2090'")
    assert CliRunner().invoke(gpu_command, ["-h"]).output.startswith("Usage: gpu [OPTIONS]")  # -h alone too


# lora.target_modules as a pattern, hostile: what `recipe validate` refuses, and what only the model's
# names refuse (`recipe fit-check`): each located at its field, exit 1, no traceback.
TARGET_PATTERNS = {
    "invalid": ({"pattern": "model.layers.[\\d+"}, "validate", "$.lora.target_modules.pattern",
                "not a regular expression: unterminated character set"),
    "a number": ({"pattern": 5}, "validate", "$.lora.target_modules.pattern", "expected text, got int 5"),
    "an extra key": ({"pattern": "model.layers.[\\d]+.self_attn.q_proj", "exclude": "lm_head"}, "validate",
                     "$.lora.target_modules.exclude", "unknown key 'exclude'"),
    "matches nothing": ({"pattern": "q_proj"}, "fit-check", "$.lora.target_modules",
                        "q_proj matches no linear layer of this llama model, whose linear layers are named "
                        "model.layers.0.self_attn.q_proj"),
    "matches the head": ({"pattern": "lm_head|model.layers.[\\d]+.self_attn.q_proj"}, "fit-check",
                         "$.lora.target_modules", "matches the output head lm_head"),
}


@pytest.mark.parametrize("name", sorted(TARGET_PATTERNS))
def test_a_hostile_target_pattern_is_a_located_message(make_recipe, offline, name):
    targets, command, path, words = TARGET_PATTERNS[name]
    recipe = make_recipe({"lora": {"target_modules": targets}})
    result = CliRunner().invoke(main, [command, str(recipe), *(["--gpu", "t4"] if command == "fit-check" else [])])
    assert result.exit_code == ExitCode.INVALID, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    key = "exclude" if path.endswith("exclude") else "pattern"  # a mapping's value is located at its first line
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if text.strip().startswith(key + ":"))
    assert re.search(rf"{re.escape(str(recipe))}:{line}:\d+: {re.escape(path)}: ", result.output), result.output
    assert words in result.output and "hint: " in result.output
    if command == "validate":  # and fit-check refuses it the same way, before any estimate
        again = CliRunner().invoke(main, ["fit-check", str(recipe), "--gpu", "t4"])
        assert again.exit_code == ExitCode.INVALID and words in again.output
