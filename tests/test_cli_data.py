"""`recipe data` through the real entry point: output, options, errors and hostile data."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode

from .conftest import RECIPES, ROOT

TINY = RECIPES / "models" / "tiny-llama"
DEMO = "recipes/tiny-demo.yaml"

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture
def tiny_recipe(make_recipe):
    def make(path, fmt="alpaca", **extra):
        return make_recipe({"model": {"id": str(TINY)}, "method": "lora", "quantization": None,
                            "data": {"datasets": [{"path": str(path), "format": fmt}]}, **extra})

    return make


def invoke(*args):
    return CliRunner().invoke(main, ["data", *map(str, args)])


def test_the_demo_shows_its_table_and_a_masked_example(at_root):
    result = invoke(DEMO, "--show", "1")
    assert result.exit_code == 0, result.output
    assert re.search(r"^recipes/data/tiny-alpaca.jsonl\s+alpaca\s+256\s", result.output, re.M)
    assert "32 steps per epoch" in result.output and "sha256:" in result.output
    # Not a terminal: markers, no colour codes; the answer and its end-of-turn token are trained.
    assert "\x1b" not in result.output
    assert re.search(r"### Response:\n\[\[[^\[\]]+<\|im_end\|>\]\]", result.output)


def test_the_readme_shows_what_recipe_data_prints(at_root):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\$ recipe data recipes/tiny-demo.yaml --show 1\n(.*?)```", readme, re.S)
    assert block, "README.md shows no output of `recipe data recipes/tiny-demo.yaml --show 1`"
    printed = invoke(DEMO, "--show", "1").output
    assert block.group(1).strip() == printed.strip()


def test_json_is_strict_and_complete(at_root):
    result = invoke(DEMO, "--format", "json", "--show", "2")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert out["mix"]["records"] == 256 and out["steps_per_epoch"] == 32 and len(out["examples"]) == 2
    assert any(s["trained"] for s in out["examples"][0]["segments"])


def test_plot_writes_a_png_and_a_folder_that_is_not_there_is_a_usage_error(at_root, tmp_path):
    png = tmp_path / "lengths.png"
    assert invoke(DEMO, "--plot", png).exit_code == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    result = invoke(DEMO, "--plot", tmp_path / "no" / "x.png")
    assert result.exit_code == ExitCode.USAGE
    assert "--plot: cannot write" in result.output and "Traceback" not in result.output


def test_bad_data_is_a_located_error(tiny_recipe):
    result = invoke(tiny_recipe(ROOT / "tests" / "train" / "data" / "latin1.jsonl"))
    assert result.exit_code == ExitCode.INVALID
    assert re.search(r"latin1.jsonl:2:32: not UTF-8 \(byte 0xe9\)\n  hint: ", result.output), result.output


def test_a_recipe_trusting_remote_code_is_refused_without_the_flag(tiny_recipe):
    recipe = tiny_recipe(RECIPES / "data" / "tiny-alpaca.jsonl",
                         model={"id": str(TINY), "trust_remote_code": True})
    result = invoke(recipe)
    assert result.exit_code == ExitCode.USAGE
    assert "$.model.trust_remote_code" in result.output and "--trust-remote-code" in result.output


def test_a_negative_show_is_a_usage_error(at_root):
    assert invoke(DEMO, "--show", "-1").exit_code == ExitCode.USAGE


def test_escape_sequences_in_the_data_are_shown_not_obeyed(tiny_recipe, tmp_path):
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text(json.dumps({"instruction": "x\u001b[2J", "output": "]]\u001b[31mred\u0007"}) + "\n")
    result = invoke(tiny_recipe(hostile), "--show", "1")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b[2J" in result.output and "\\x1b[31mred\\x07" in result.output


def test_a_shown_count_beyond_the_data_shows_every_record(tiny_recipe, tmp_path):
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps({"instruction": f"say {w}", "output": w}) + "\n" for w in ("a", "b")))
    result = invoke(tiny_recipe(two), "--show", "1000000")
    assert result.exit_code == 0 and result.output.count("\nexample ") == 2
