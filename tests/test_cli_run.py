"""`recipe run`, `merge` and `generate` through the real console entry point, as a user runs them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipecli.errors import ExitCode

from .conftest import RECIPES

RECIPE = Path(shutil.which("recipe", path=str(Path(sys.executable).parent)))
DEMO = RECIPES / "tiny-demo.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
pytestmark = pytest.mark.slow


def recipe(*args, timeout=300):
    return subprocess.run([str(RECIPE), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_demo_run_then_generate_and_merge(tmp_path):
    out = tmp_path / "demo"
    proc = recipe("run", DEMO, "--set", f"output.dir={out}", "--set", "training.max_steps=6",
                  "--set", "training.logging_steps=2")
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "done: 6 steps, final loss" in proc.stdout
    assert {"recipe.yaml", "run.yaml", "metrics.jsonl", "loss.png", "adapter"} <= {p.name for p in out.iterdir()}
    # the override is part of the recipe recorded in the run folder
    assert "max_steps: 6" in (out / "recipe.yaml").read_text()

    again = recipe("run", DEMO, "--set", f"output.dir={out}", "--set", "training.max_steps=6")
    assert again.returncode == ExitCode.USAGE and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr

    answers = [recipe("generate", out, "--prompt", "Reverse the words.", "--input", "red green blue",
                      "--max-new-tokens", "8") for _ in range(2)]
    assert [a.returncode for a in answers] == [ExitCode.OK] * 2, answers[0].stderr[-3000:]
    assert answers[0].stdout == answers[1].stdout  # greedy: the same answer twice

    merged = recipe("merge", out)
    assert merged.returncode == ExitCode.OK, merged.stderr[-3000:]
    assert (out / "merged" / "config.json").is_file()


def test_invalid_override_is_reported_like_the_file(tmp_path):
    proc = recipe("run", DEMO, "--set", "training.micro_batch_size=0", "--set", f"output.dir={tmp_path / 'x'}")
    assert proc.returncode == ExitCode.INVALID
    assert "--set training.micro_batch_size=0" in proc.stderr and "$.training.micro_batch_size" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_model_of_an_unknown_architecture_is_an_error_not_a_traceback(tmp_path):
    unknown = tmp_path / "qwen9"
    shutil.copytree(RECIPES / "models" / "tiny-llama", unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "qwen9_moe"}))
    proc = recipe("run", DEMO, "--set", f"model.id={unknown}", "--set", f"output.dir={tmp_path / 'run'}")
    assert proc.returncode == ExitCode.RUNTIME, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: cannot load the model" in proc.stderr and "qwen9_moe" in proc.stderr
    assert "Hint: an unknown model type needs a newer transformers" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["run", DEMO, "--set", f"output.dir={out}", "--set", "training.max_steps=400",
            "--set", "training.logging_steps=1", "--set", "training.save_steps=1000"]
    proc = subprocess.Popen([str(RECIPE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == ExitCode.INTERRUPTED, err[-3000:]
    assert "Traceback" not in err
    # The recipe as it ran, --set overrides included: resuming with it passes the changed-recipe check.
    assert f"Continue with: recipe run {out / 'recipe.yaml'} --resume" in err
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints, "a checkpoint was saved before exiting"
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert stopped_at < 400

    resumed = recipe("run", *args[1:], "--set", "training.max_steps=" + str(stopped_at + 2), "--resume")
    assert resumed.returncode == ExitCode.OK, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps[-1] == stopped_at + 2 and len(steps) == len(set(steps))
