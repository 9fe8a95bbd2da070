"""`recipe run`, `merge` and `generate` through click: remote code needs the flag on the command
line, and a run whose loss turns NaN ends with exit code 4 and the step, not a traceback."""
from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode
from recipecli.read.load import load_recipe
from recipecli.train import runfolder

from .conftest import RECIPES

TINY_MODEL = RECIPES / "models" / "tiny-llama"
pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def trusting(make_recipe, tmp_path):
    """A recipe whose model ships its own code (on the hub: loading it would download)."""
    return make_recipe({"model": {"id": "someone/model-with-code", "trust_remote_code": True},
                        "output": {"dir": str(tmp_path / "run")}})


def _line_of(path, text):
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_run_refuses_remote_code_without_the_flag(trusting, tmp_path):
    result = invoke("run", trusting)
    assert result.exit_code == ExitCode.USAGE, result.output
    line = _line_of(trusting, "trust_remote_code")
    assert result.output.startswith(f"{trusting}:{line}:")
    assert "$.model.trust_remote_code: the recipe trusts the Python code shipped with someone/model-with-code" \
        in result.output
    assert f"  hint: read the model's code first, then: recipe run {trusting} --trust-remote-code" in result.output
    assert not (tmp_path / "run").exists() and "Traceback" not in result.output


def test_run_with_the_flag_goes_on_to_load_the_model(trusting):
    result = invoke("run", trusting, "--trust-remote-code")
    assert result.exit_code == ExitCode.RUNTIME  # offline: the download is what fails now
    assert "warning: model.trust_remote_code is true and --trust-remote-code is given" in result.output
    assert "cannot load the tokenizer of someone/model-with-code" in result.output


@pytest.mark.parametrize("command", [("merge",), ("generate", "--prompt", "hi")], ids=["merge", "generate"])
def test_merge_and_generate_refuse_remote_code_without_the_flag(trusting, tmp_path, command):
    run_dir = tmp_path / "finished"
    run_dir.mkdir()
    runfolder.write_recipe(run_dir, load_recipe(trusting))
    (run_dir / runfolder.ADAPTER).mkdir()
    result = invoke(command[0], run_dir, *command[1:])
    assert result.exit_code == ExitCode.USAGE, result.output
    recorded = run_dir / runfolder.RECIPE
    assert result.output.startswith(f"{recorded}:{_line_of(recorded, 'trust_remote_code')}:")
    assert "$.model.trust_remote_code" in result.output and f"recipe {command[0]} {run_dir}" in result.output
    with_flag = invoke(command[0], run_dir, *command[1:], "--trust-remote-code")
    assert with_flag.exit_code == ExitCode.RUNTIME and "cannot load" in with_flag.output  # went on to load


@pytest.mark.slow
def test_a_loss_that_turns_nan_exits_4_naming_the_step(tmp_path):
    """A base model with a NaN in its final norm (a corrupted download, say): the first loss is NaN."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-llama"
    shutil.copytree(TINY_MODEL, model)
    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(yaml.safe_dump({
        "recipe_version": 1, "name": "nan", "model": {"id": str(model)}, "method": "lora", "lora": {"r": 4},
        "data": {"datasets": [{"path": str(RECIPES / "data" / "tiny-alpaca.jsonl"), "format": "alpaca",
                               "max_samples": 8}], "max_seq_length": 64},
        "training": {"max_steps": 3, "micro_batch_size": 2, "logging_steps": 1},
        "output": {"dir": str(tmp_path / "run")}}))
    result = invoke("run", recipe)
    assert result.exit_code == ExitCode.RUNTIME, result.output
    assert "error: the training loss became nan at step 1; training stopped" in result.output
    assert "hint: the learning rate (0.0002) is likely too high" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / runfolder.ADAPTER).exists()
    assert "result" not in yaml.safe_load((tmp_path / "run" / runfolder.RUN).read_text())  # it did not finish
