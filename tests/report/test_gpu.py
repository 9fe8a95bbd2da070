"""`recipe gpu` and check_gpu.py, run as real processes: the same command, errors and exit codes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipecli.errors import ExitCode
from recipecli.fit.architectures import CATALOG
from recipecli.fit.gpu_catalog import card
from recipecli.report.gpu import largest_qlora_model

from ..conftest import ROOT

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}
RECIPE = Path(sys.executable).parent / "recipe"


def check_gpu(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "check_gpu.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=OFFLINE, timeout=120)


def recipe_gpu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RECIPE), "gpu", *args], capture_output=True, text=True, cwd=ROOT, env=OFFLINE,
                          timeout=120)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_check_gpu_help_names_the_script_alone(flag, tmp_path):
    # Defect 21: it printed "Usage: check_gpu.py gpu [OPTIONS]", a command that does not exist.
    result = check_gpu(flag, cwd=tmp_path)  # from another folder, too
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: check_gpu.py [OPTIONS]\n")
    assert "--gpu NAME" in result.stdout and "--vram GIB" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--gpu", "rtx2090"], "--gpu: unknown GPU 'rtx2090'"),
    (["--gpu", "4060 ti"], "--gpu: GPU name '4060 ti' matches several cards: RTX 4060 Ti 8GB, RTX 4060 Ti 16GB"),
    (["--gpu", "3080 16gb"], "--gpu: there is no 16 GB RTX 3080 in the catalog: it comes with 10 GB or 12 GB"),
    (["--vram", "0"], "--vram: must be a number of GiB a card can have"),
    (["--vram", "8", "--gpu", "t4"], "--gpu: give --vram or --gpu, not both"),
])
def test_check_gpu_turns_errors_into_the_messages_and_exit_codes_of_recipe_gpu(args, message):
    script, command = check_gpu(*args), recipe_gpu(*args)
    assert script.returncode == command.returncode == ExitCode.USAGE
    assert script.stderr == command.stderr
    assert script.stderr.startswith(message) and "\n  hint: " in script.stderr
    assert "Traceback" not in script.stderr and script.stdout == ""


def test_check_gpu_prints_what_recipe_gpu_prints():
    script, command = check_gpu("--gpu", "t4"), recipe_gpu("--gpu", "t4")
    assert script.returncode == command.returncode == ExitCode.OK
    assert script.stdout == command.stdout and script.stdout.startswith("T4: 15.00 GiB, compute capability 7.5\n")


def test_check_gpu_rejects_an_unknown_option_as_a_usage_error():
    result = check_gpu("--bogus")
    assert result.returncode == ExitCode.USAGE
    assert "Usage: check_gpu.py [OPTIONS]" in result.stderr and "No such option '--bogus'" in result.stderr


def test_largest_qlora_model_shows_the_base_models_count():
    model, verdict = largest_qlora_model(card("t4"))
    assert verdict.estimate.base_params == CATALOG[model].param_count()
    assert verdict.estimate.trainable_params < verdict.estimate.base_params // 50
