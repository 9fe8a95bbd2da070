"""The run folder: everything a finished (or interrupted) run leaves behind, and the rules that
keep one run from destroying another.

    recipe.yaml     the recipe as it ran: extends merged, overrides applied, defaults filled;
                    `recipe run runs/NAME/recipe.yaml --set output.dir=runs/AGAIN` repeats the run
    run.yaml        libraries, device, git commit, dataset fingerprints, what "auto" became, result
    estimate.json   the memory estimate the GPU was checked against (none on the CPU)
    metrics.jsonl   one JSON object per log line of the trainer (loss, learning rate, GPU memory)
    loss.png        the loss curve
    adapter/        the trained LoRA adapter and tokenizer (model/ for method full)
    checkpoint-N/   the last checkpoints, for --resume
    merged/         written by `recipe merge`: the base model with the adapter merged in

What writes into the folder while training, the trainer callback, is in callbacks.py.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import shutil
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

import yaml

from ..errors import UsageError
from ..read.recipe import Recipe

RECIPE = "recipe.yaml"
RUN = "run.yaml"
ESTIMATE = "estimate.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
ADAPTER = "adapter"
FULL_MODEL = "model"
MERGED = "merged"

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "recipecli")


def check_free(path: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, a run that would clobber another run or resume nothing.

    Raises:
        UsageError: the folder exists without --overwrite or --resume; --resume without a
            checkpoint; --overwrite of a folder that is not a run folder; both flags at once.
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: pass one of them")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a run folder: set output.dir to a folder")
    exists = path.exists() and any(path.iterdir())
    if resume:
        if last_checkpoint(path) is None:
            raise UsageError(f"{path} holds no checkpoint to resume from; run without --resume")
        return
    if not exists:
        return
    if not overwrite:
        raise UsageError(f"{path} already exists: pass --overwrite to replace it, --resume to continue it, "
                         "or choose another output.dir (e.g. --set output.dir=runs/NEW)")
    # --overwrite deletes a folder: make sure it is one of ours, not a home directory named by mistake.
    # recipe.yaml alone is no proof (a folder of recipes has one); run.yaml is written by recipecli only.
    if not ((path / RECIPE).is_file() and (path / RUN).is_file()):
        raise UsageError(f"{path} is not a run folder (it needs both {RECIPE} and {RUN}); "
                         "refusing to delete it with --overwrite")


# What may change between a run and its --resume: how long it goes on, how often it logs and
# saves, where it is written. Anything else would continue the checkpoint as a different run.
RESUMABLE_CHANGES = ("training.max_steps", "training.epochs", "training.logging_steps", "training.save_steps",
                     "training.save_total_limit", "output")


def check_resumable(path: Path, recipe: Recipe) -> None:
    """Refuse to resume a run folder with a recipe that trains something else than it started.

    Args:
        path: the run folder to resume; its recipe.yaml is the recipe it started with.
        recipe: the recipe about to continue it.

    Raises:
        UsageError: the folder has no readable recipe.yaml, or a field outside
            ``RESUMABLE_CHANGES`` differs; every such field is named.
    """
    try:
        started = yaml.safe_load((path / RECIPE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{path / RECIPE} cannot be read ({e}); it is needed to resume the run") from e
    # Through YAML and back, as write_recipe wrote it, so tuples and lists compare equal.
    before = _flat(started if isinstance(started, dict) else {})
    now = _flat(yaml.safe_load(yaml.safe_dump(recipe_document(recipe))))
    changed = sorted(key for key in before.keys() | now.keys()
                     if before.get(key) != now.get(key) and not _may_change(key))
    if changed:
        raise UsageError(f"--resume of {path} with a changed recipe: {', '.join(changed)} differ from its {RECIPE}. "
                         f"Only {', '.join(RESUMABLE_CHANGES)} may change when resuming. Hint: resume with the "
                         f"recipe as it ran (recipe run {path / RECIPE} --resume), or start a new run "
                         "(--set output.dir=runs/NEW) to train the changed recipe")


def _may_change(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in RESUMABLE_CHANGES)


def _flat(document: dict, prefix: str = "") -> dict:
    """Nested mappings as {"training.max_steps": 6, ...}; lists stay whole values."""
    flat = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextmanager
def creating(path: Path, *, overwrite: bool, resume: bool) -> Iterator[None]:
    """Create the run folder for the setup inside the block; remove it if the setup fails.

    Training then writes checkpoints into it. A start that fails before training leaves no
    half-written folder behind that a later run would refuse to overwrite.
    """
    if resume:
        yield
        return
    if overwrite and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def last_checkpoint(path: Path) -> Optional[Path]:
    """The checkpoint-N folder with the highest N, or None."""
    steps = [(int(p.name.split("-")[1]), p) for p in path.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()]
    return max(steps)[1] if steps else None


def recipe_document(recipe: Recipe) -> dict:
    """The recipe in the schema's shape, runnable again: local paths absolute, defaults filled."""
    doc: dict = {"recipe_version": 1, "name": recipe.name}
    if recipe.description is not None:
        doc["description"] = recipe.description
    model = recipe.model
    doc["model"] = {"id": str(model.local_path) if model.local_path else model.id, "revision": model.revision,
                    "trust_remote_code": model.trust_remote_code}
    if model.architecture is not None:
        doc["model"]["architecture"] = _without_none(dataclasses.asdict(model.architecture))
    doc["method"] = recipe.method
    if recipe.quantization is not None:
        quant = dataclasses.asdict(recipe.quantization)
        if quant["bits"] == 8:  # the 4-bit options are filled in the Recipe but refused in an 8-bit file
            del quant["type"], quant["double_quant"]
        doc["quantization"] = quant
    if recipe.lora is not None:
        lora = dataclasses.asdict(recipe.lora)
        targets = recipe.lora.target_modules
        lora["target_modules"] = targets if isinstance(targets, str) else list(targets)
        doc["lora"] = lora
    datasets = [_without_none({"path": str(d.local_path) if d.is_local else d.path, "format": d.format,
                               "split": d.split, "subset": d.subset, "max_samples": d.max_samples})
                for d in recipe.data.datasets]
    doc["data"] = _without_none({**dataclasses.asdict(recipe.data), "datasets": datasets})
    doc["training"] = _without_none(dataclasses.asdict(recipe.training))
    doc["logging"] = {}
    if recipe.wandb is not None:
        doc["logging"]["wandb"] = _without_none({**dataclasses.asdict(recipe.wandb), "tags": list(recipe.wandb.tags)})
    doc["output"] = {"dir": str(recipe.output_dir)}
    return doc


def _without_none(mapping: dict) -> dict:
    """Absent optional values are left out, as the schema wants them, not written as null."""
    return {k: v for k, v in mapping.items() if v is not None}


def write_recipe(path: Path, recipe: Recipe) -> None:
    """Write recipe.yaml, headed by where it came from."""
    body = yaml.safe_dump(recipe_document(recipe), sort_keys=False, allow_unicode=True)
    (path / RECIPE).write_text(f"# {recipe.source}, as it ran: extends merged, overrides applied, "
                               f"defaults filled\n{body}", encoding="utf-8")


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
    (path / RUN).write_text(yaml.safe_dump(run, sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_estimate(path: Path, estimate: dict) -> None:
    """Write estimate.json: the fit verdict and the estimate's components."""
    (path / ESTIMATE).write_text(json.dumps(estimate, indent=2) + "\n", encoding="utf-8")


def append_metrics(path: Path, record: dict) -> None:
    """Add one log line to metrics.jsonl (appended, so a resumed run continues the file)."""
    with open(path / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def plot_loss(path: Path, log_history: list[dict]) -> Optional[Path]:
    """Draw loss.png from the trainer's log history; None when nothing was logged yet.

    Uses matplotlib's object API on the Agg canvas: no display needed, no global pyplot state.
    """
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    if not train and not evals:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            axes.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = path / LOSS_PLOT
    figure.savefig(out)
    return out
