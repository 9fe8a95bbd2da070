"""The run folder: the recipe as it ran, checkpoints, metrics, the loss plot. Which run may take a
folder is test_claim.py's."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from recipecli.errors import UsageError
from recipecli.read import codec
from recipecli.read.load import load_recipe
from recipecli.train import runfolder


def test_resume_allows_only_length_logging_saving_and_output_to_change(make_recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    base = {"data": {"datasets": [{"path": "org/set", "format": "alpaca"}]}}
    runfolder.write_recipe(run_dir, load_recipe(make_recipe(base)))
    longer = {"training.max_steps": 50, "training.epochs": 2, "training.logging_steps": 3, "training.save_steps": 7,
              "training.save_total_limit": 1, "output.dir": str(tmp_path / "elsewhere")}
    runfolder.check_resumable(run_dir, load_recipe(make_recipe(base), [f"{k}={v}" for k, v in longer.items()]))
    changed = load_recipe(make_recipe(base), ["training.seed=1", "lora.r=4", "data.max_seq_length=64",
                                              "logging.wandb.project=p", "training.max_steps=50"])
    with pytest.raises(UsageError, match="changed recipe: data.max_seq_length, logging.wandb.mode, "
                                         "logging.wandb.project, logging.wandb.tags, lora.r, training.seed differ"):
        runfolder.check_resumable(run_dir, changed)


def test_resume_needs_the_recipe_the_run_started_with(make_recipe, tmp_path):
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"recipe.yaml:1:1: \$: file not found \(this run folder.s recipe, needed to resume"):
        runfolder.check_resumable(tmp_path / "run", load_recipe(make_recipe()))


def test_a_broken_stored_recipe_is_one_located_error_with_one_hint(make_recipe, tmp_path):
    """Found in review: the whole formatted error, hints and all, was nested inside the message."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("recipe_version: 1\nname: t\nlora: {r: 0}\n")
    with pytest.raises(UsageError) as refused:
        runfolder.check_resumable(tmp_path / "run", load_recipe(make_recipe()))
    text = str(refused.value)
    assert text.startswith(f"{tmp_path / 'run' / 'recipe.yaml'}:") and text.count("hint:") == 1
    assert "needed to resume the run" in text


def test_last_checkpoint_is_the_highest_step_not_the_last_name(tmp_path):
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-x", "other"):
        (tmp_path / name).mkdir()
    assert runfolder.last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert runfolder.last_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("quantization", [{"bits": 4, "type": "fp4"}, {"bits": 8}])
def test_the_written_recipe_loads_back_to_the_same_recipe(make_recipe, tmp_path, quantization):
    source = make_recipe({
        "model": {"id": "./model"},
        "data": {"datasets": [{"path": "data.jsonl", "format": "chat", "max_samples": 5},
                              {"path": "org/set", "format": "alpaca", "subset": "en"}], "val_fraction": 0.1},
        "lora": {"target_modules": ["q_proj", "v_proj"]},
        "quantization": quantization,
        "logging": {"wandb": {"project": "p", "tags": ["a"], "mode": "offline"}},
        "training": {"max_steps": 7},
    })
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "data.jsonl").write_text("{}\n")
    recipe = load_recipe(source)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runfolder.write_recipe(run_dir, recipe)
    again = load_recipe(run_dir / runfolder.RECIPE)
    # Local paths are written absolute, so the copy runs from anywhere; everything else is identical.
    assert again.model.local_path == recipe.model.local_path
    assert [d.local_path for d in again.data.datasets] == [d.local_path for d in recipe.data.datasets]
    assert codec.to_document(again) == codec.to_document(recipe)
    assert (again.training, again.lora, again.wandb, again.quantization) == \
        (recipe.training, recipe.lora, recipe.wandb, recipe.quantization)


def test_loss_plot_is_a_png_and_absent_without_losses(tmp_path):
    assert runfolder.plot_loss(tmp_path, [{"step": 1, "train_runtime": 3.0}]) is None
    history = [{"step": s, "loss": 5.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 1.2}]
    out = runfolder.plot_loss(tmp_path, history)
    assert out == tmp_path / runfolder.LOSS_PLOT and out.read_bytes().startswith(b"\x89PNG")


def test_metrics_are_appended_one_json_per_line(tmp_path):
    runfolder.append_metrics(tmp_path, {"step": 1, "loss": 2.5})
    runfolder.append_metrics(tmp_path, {"step": 2, "loss": 2.0})
    assert (tmp_path / runfolder.METRICS).read_text().splitlines() == ['{"step": 1, "loss": 2.5}',
                                                                        '{"step": 2, "loss": 2.0}']


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_environment_records_the_git_commit_and_dirty_state(make_recipe, tmp_path):
    recipe_file = make_recipe()
    assert runfolder.environment(load_recipe(recipe_file), "cpu")["git_commit"] is None

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", recipe_file.name)
    git("commit", "-qm", "recipe")
    env = runfolder.environment(load_recipe(recipe_file), "cpu")
    assert len(env["git_commit"]) == 40 and env["libraries"]["recipecli"]
    recipe_file.write_text(recipe_file.read_text() + "# edited\n")
    assert runfolder.environment(load_recipe(recipe_file), "cpu")["git_commit"].endswith("-dirty")
