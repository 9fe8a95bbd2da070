"""`recipe run`, `merge` and `generate` through the real console entry point, as a user runs them."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode
from recipecli.fit import hardware

from .conftest import RECIPES

RECIPE = Path(shutil.which("recipe", path=str(Path(sys.executable).parent)))
DEMO = RECIPES / "tiny-demo.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
pytestmark = pytest.mark.slow


def recipe(*args, timeout=300, cwd=None, env=None):
    return subprocess.run([str(RECIPE), *map(str, args)], capture_output=True, text=True, env=env or ENV,
                          timeout=timeout, cwd=cwd)


def start(*args, cwd=None, env=None):
    """`recipe ...` in the background, as a second terminal or a scheduler starts it."""
    return subprocess.Popen([str(RECIPE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or ENV, cwd=cwd)


def wait_for(condition, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)


def test_demo_run_then_generate_and_merge(tmp_path, offline, monkeypatch):
    # In-process through CliRunner: torch, transformers and TRL are imported once for the whole
    # story instead of once per command. One generate still goes through the console script, in a
    # fresh process, so the entry point and a cold start are covered too.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "demo"

    def cli(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert "Traceback" not in result.output
        return result

    ran = cli("run", DEMO, "--set", f"output.dir={out}", "--set", "training.max_steps=6",
              "--set", "training.logging_steps=2")
    assert ran.exit_code == ExitCode.OK, ran.output[-3000:]
    assert "done: 6 steps, final loss" in ran.stdout
    assert {"recipe.yaml", "run.yaml", "metrics.jsonl", "loss.png", "adapter"} <= {p.name for p in out.iterdir()}
    # the override is part of the recipe recorded in the run folder
    assert "max_steps: 6" in (out / "recipe.yaml").read_text()

    again = cli("run", DEMO, "--set", f"output.dir={out}", "--set", "training.max_steps=6")
    assert again.exit_code == ExitCode.USAGE and "--overwrite" in again.stderr

    ask = ("generate", out, "--prompt", "Reverse the words.", "--input", "red green blue", "--max-new-tokens", "8")
    here, fresh = cli(*ask), recipe(*ask)
    assert here.exit_code == fresh.returncode == ExitCode.OK, (here.output + fresh.stderr)[-3000:]
    assert "Traceback" not in fresh.stderr
    assert here.stdout == fresh.stdout  # greedy: the same answer in both processes

    merged = cli("merge", out)
    assert merged.exit_code == ExitCode.OK, merged.output[-3000:]
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
    assert "  hint: an unknown model type needs a newer transformers" in proc.stderr
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


# --- the run folder: what it holds, who may write into it ----------------------------------------


def documented_entries() -> list[str]:
    """The run folder's entries as the README lists them (the first `name` of each bullet)."""
    readme = (RECIPES.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**The run folder**"):readme.index("**Who may write into it.**")]
    return re.findall(r"^- `([^`]+)`", section, re.M)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny demo trained for 5 steps, typed in another folder than the recipe's, output.dir relative."""
    root = tmp_path_factory.mktemp("finished")
    (root / "recipes").mkdir()
    for part in ("tiny-demo.yaml", "models", "data"):
        (shutil.copytree if (RECIPES / part).is_dir() else shutil.copy)(RECIPES / part, root / "recipes" / part)
    (root / "work").mkdir()
    proc = recipe("run", "../recipes/tiny-demo.yaml", "--set", "output.dir=runs/demo", "--set", "training.max_steps=5",
                  "--set", "training.logging_steps=1", cwd=root / "work")
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    return root, root / "work" / "runs" / "demo", proc


def snapshot(folder):
    """Every file below the folder with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_folder_holds_exactly_what_the_readme_lists(finished):
    root, run_dir, proc = finished
    documented = documented_entries()
    assert documented == ["run.lock", "recipe.yaml", "run.yaml", "estimate.json", "metrics.jsonl", "loss.png",
                          "accelerate.yaml", "adapter/", "checkpoint-N/", "merged/"]
    # Not in a single-process CPU run of 5 steps: the GPU estimate, a distributed run's launch
    # config, and what `recipe merge` writes later.
    expected = {name.rstrip("/").replace("-N", "-5") for name in documented} - {"estimate.json", "merged",
                                                                                "accelerate.yaml"}
    assert {p.name for p in run_dir.iterdir()} == expected  # no README.md model card, nothing else
    assert f"run folder {run_dir}\n" in proc.stdout


def test_every_file_of_a_run_lands_in_its_one_run_folder(finished):
    root, run_dir, _ = finished
    # Typed in work/ with a relative output.dir: the run folder is work/runs/demo, and nothing of the
    # run (a checkpoint, a cache, a second spelling of the folder) lands next to it or the recipe.
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if run_dir not in (p, *p.parents)
                  and not p.is_relative_to(root / "recipes")) == ["work", "work/runs"]
    assert sorted(p.name for p in (root / "recipes").iterdir()) == ["data", "models", "tiny-demo.yaml"]
    assert f"dir: {run_dir}\n" in (run_dir / "recipe.yaml").read_text()


@pytest.mark.parametrize("max_steps", [5, 3])
def test_resume_of_a_finished_run_says_nothing_to_resume_and_touches_nothing(finished, max_steps):
    root, run_dir, _ = finished
    before = snapshot(run_dir)
    proc = recipe("run", run_dir / "recipe.yaml", "--set", f"training.max_steps={max_steps}", "--resume",
                  cwd=root / "work")
    assert proc.returncode == ExitCode.USAGE, proc.stderr[-3000:]
    assert f"nothing to resume: the run finished at step 5 (this recipe ends at step {max_steps}); " \
           f"its adapter is in {run_dir / 'adapter'}" in proc.stderr
    assert "Traceback" not in proc.stderr and "done:" not in proc.stdout
    assert snapshot(run_dir) == before


def test_overwrite_through_a_symbolic_link_is_refused_before_anything_loads(finished, tmp_path):
    root, run_dir, _ = finished
    before = snapshot(run_dir)
    link = tmp_path / "latest"
    link.symlink_to(run_dir)
    proc = recipe("run", run_dir / "recipe.yaml", "--set", f"output.dir={link}", "--overwrite", cwd=root / "work")
    assert proc.returncode == ExitCode.USAGE, proc.stderr[-3000:]
    assert f"{link}: output.dir is a symbolic link (to {run_dir}); --overwrite does not delete through a link" \
        in proc.stderr
    assert "Traceback" not in proc.stderr and "note:" not in proc.stderr  # refused before the setup said anything
    assert snapshot(run_dir) == before


def test_two_runs_into_one_folder_at_once_one_trains_the_other_is_refused(tmp_path):
    """Started together, with output.dir under `~` (HOME points into tmp_path)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**ENV, "HOME": str(home)}
    args = ["run", DEMO, "--set", "output.dir=~/runs/same", "--set", "training.max_steps=30",
            "--set", "training.logging_steps=1"]
    procs = [start(*args, cwd=tmp_path, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [ExitCode.OK, ExitCode.USAGE], [o[1][-2000:] for o in outputs]
    refused = outputs[codes.index(ExitCode.USAGE)][1]
    run_dir = home / "runs" / "same"
    # Usually the second finds the first training and names it; on a loaded machine its imports can
    # take longer than the whole first run, and then it finds a finished run folder instead.
    # The holder's process id is named once it has written it into run.lock; a second run that
    # arrives between the holder's lock and that write says the same without it.
    busy = re.search(rf"{re.escape(str(run_dir))}: another `recipe run` (\(process {procs[codes.index(ExitCode.OK)].pid}\) )?"
                     "is using this run folder right now", refused)
    assert (busy or f"{run_dir}: already holds a finished run" in refused) and "Traceback" not in refused, refused
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 31))  # one run's metrics, each step once
    assert "max_steps: 30" in (run_dir / "recipe.yaml").read_text()
    assert not (tmp_path / "~").exists()


def test_sigterm_while_the_setup_loads_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    proc = start("run", DEMO, "--set", f"output.dir={out}")
    wait_for((out / "run.lock").exists, proc)  # the folder is taken; tokenizer, data and model load next
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err[-3000:]
    assert "interrupted before training started; nothing was saved" in err and "Traceback" not in err
    assert not out.exists()


def test_a_run_killed_before_its_first_checkpoint_is_rerun_in_its_folder(tmp_path):
    out = tmp_path / "run"
    args = ["run", DEMO, "--set", f"output.dir={out}", "--set", "training.max_steps=4"]
    proc = start(*args)
    wait_for((out / "run.yaml").exists, proc)  # written just before training starts
    proc.send_signal(signal.SIGKILL)  # no clean-up runs; the kernel releases the lock
    proc.wait()
    assert not list(out.glob("checkpoint-*")) and "run.lock" in {p.name for p in out.iterdir()}

    resumed = recipe(*args, "--resume")
    assert resumed.returncode == ExitCode.USAGE
    assert "no checkpoint was saved" in resumed.stderr and "hint: run without --resume" in resumed.stderr
    again = recipe(*args)  # as that hint says; it must not point back at --resume
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    assert "done: 4 steps" in again.stdout and (out / "adapter").is_dir()


@pytest.mark.skipif(bool(hardware.detect()), reason="a GPU is present: the CPU rule does not apply")
def test_a_13b_recipe_without_a_gpu_is_refused_before_any_download(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    started = time.monotonic()
    proc = recipe("run", RECIPES / "llama2-13b.yaml", "--set", f"output.dir={tmp_path / 'run'}",
                  env={**ENV, "HF_HUB_CACHE": str(cache)})
    assert proc.returncode == ExitCode.DOES_NOT_FIT, proc.stderr[-3000:]
    assert "no GPU here, and the CPU cannot train this recipe: meta-llama/Llama-2-13b-hf has 13.0B parameters" \
        in proc.stderr and "--force trains here anyway" in proc.stderr
    assert not any(cache.iterdir()) and not (tmp_path / "run").exists()
    assert time.monotonic() - started < 60
