"""The run folder: everything a finished (or interrupted) run leaves behind, and nothing else.

    run.lock        the lock a running `recipe run` holds (claim.py); stays, unheld, afterwards
    recipe.yaml     the recipe as it ran: extends merged, overrides applied, defaults filled;
                    `recipe run runs/NAME/recipe.yaml --set output.dir=runs/AGAIN` repeats the run
    run.yaml        libraries, device, git commit, dataset fingerprints, what "auto" became, result
    estimate.json   the memory estimate the GPU was checked against (none on the CPU)
    metrics.jsonl   one JSON object per log line of the trainer (loss, learning rate, GPU memory)
    loss.png        the loss curve (once a loss was logged)
    accelerate.yaml a distributed run's accelerate config (launch.py), and for ZeRO deepspeed.json:
                    `accelerate launch --config_file RUN/accelerate.yaml -m recipecli run RUN/recipe.yaml`
    adapter/        the trained LoRA adapter and tokenizer (model/ for method full)
    checkpoint-N/   the last checkpoints, for --resume
    merged/         written by `recipe merge`: the base model with the adapter merged in

Which run may take a folder (the lock, --overwrite, --resume) is claim.py's; what writes into it
while training, the trainer callback, is in callbacks.py.
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

import yaml

from ..errors import RecipeError, UsageError
from ..read import codec
from ..read.load import load_recipe
from ..read.recipe import Recipe
from . import atomic

LOCK = "run.lock"
RECIPE = "recipe.yaml"
RUN = "run.yaml"
ESTIMATE = "estimate.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
ADAPTER = "adapter"
FULL_MODEL = "model"
MERGED = "merged"
ACCELERATE_CONFIG = "accelerate.yaml"
DEEPSPEED_CONFIG = "deepspeed.json"

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "recipecli")


# What may change between a run and its --resume: how long it goes on, how often it logs and
# saves, where it is written. Anything else would continue the checkpoint as a different run.
RESUMABLE_CHANGES = ("training.max_steps", "training.epochs", "training.logging_steps", "training.save_steps",
                     "training.saves_per_epoch", "training.save_total_limit", "output",
                     # Where the nodes meet: a new allocation (SLURM) gives new machines.
                     "distributed.main_address", "distributed.main_port", "distributed.node_rank")


def check_resumable(path: Path, recipe: Recipe) -> None:
    """Refuse to resume a run folder with a recipe that trains something else than it started.

    Both recipes are compared as the codec writes them, so spellings of the same path or a
    default written out or left implicit are no change.

    Args:
        path: the run folder to resume; its recipe.yaml is the recipe it started with.
        recipe: the recipe about to continue it.

    Raises:
        UsageError: the folder's recipe.yaml no longer loads, or a field outside
            ``RESUMABLE_CHANGES`` differs; every such field is named.
    """
    try:
        started = load_recipe(path / RECIPE)
    except RecipeError as e:  # its own place and hint, with why it matters here
        raise UsageError(f"{e.message} (this run folder's recipe, needed to resume the run)",
                         e.hint or "start a new run (--set output.dir=runs/NEW)", where=e.where, path=e.path) from e
    before, now = codec.flatten(codec.to_document(started)), codec.flatten(codec.to_document(recipe))
    changed = sorted(key for key in before.keys() | now.keys()
                     if before.get(key) != now.get(key) and not _may_change(key))
    if changed:
        raise UsageError(f"--resume with a changed recipe: {', '.join(changed)} differ from its {RECIPE}; "
                         f"only {', '.join(RESUMABLE_CHANGES)} may change when resuming",
                         f"resume with the recipe as it ran (recipe run {path / RECIPE} --resume), or start a new "
                         "run (--set output.dir=runs/NEW) to train the changed recipe", where=str(path))


def _may_change(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in RESUMABLE_CHANGES)


def last_checkpoint(path: Path) -> Optional[Path]:
    """The checkpoint-N folder with the highest N, or None."""
    steps = [(int(p.name.split("-")[1]), p) for p in path.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()]
    return max(steps)[1] if steps else None


def write_recipe(path: Path, recipe: Recipe) -> None:
    """Write recipe.yaml through the codec, headed by where it came from."""
    text = codec.dump(codec.to_document(recipe), f"{recipe.source}, as it ran: extends merged, overrides "
                                                 "applied, defaults filled, paths absolute")
    atomic.write(path / RECIPE, text)


def environment(recipe: Recipe, device: str) -> dict:
    """What besides the recipe decides a run's outcome: libraries, device, code version."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"started": now(), "device": device, "libraries": versions, "git_commit": _git_commit(recipe.source)}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git_commit(recipe_file: Path) -> Optional[str]:
    """HEAD of the repository holding the recipe, marked -dirty with uncommitted changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=recipe_file.resolve().parent,
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain"], cwd=recipe_file.resolve().parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git installed, or a hung filesystem
        return None
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def write_run(path: Path, run: dict) -> None:
    """Write (or rewrite, when the result is known) run.yaml."""
    atomic.write(path / RUN, yaml.safe_dump(run, sort_keys=False, allow_unicode=True))


def write_launch(path: Path, written: dict[str, str]) -> None:
    """Write a distributed run's generated configs (launch.files for this folder)."""
    for name, text in written.items():
        atomic.write(path / name, text)


def write_estimate(path: Path, estimate: dict) -> None:
    """Write estimate.json: the fit verdict and the estimate's components."""
    atomic.write(path / ESTIMATE, json.dumps(estimate, indent=2) + "\n")


def append_metrics(path: Path, record: dict) -> None:
    """Add one log line to metrics.jsonl (appended, so a resumed run continues the file)."""
    with open(path / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def plot_loss(path: Path, log_history: list[dict]) -> Optional[Path]:
    """Draw loss.png from the trainer's log history; None when no finite loss was logged yet.

    Drawn by lossplot.py in pure Python: matplotlib's import alone cost every run ~0.6 s.
    """
    from . import lossplot

    def points(key: str) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in log_history if isinstance(r.get(key), (int, float))]

    out = path / LOSS_PLOT
    return out if lossplot.write(out, points("loss"), points("eval_loss")) else None
