"""`recipe run`: a recipe becomes a TRL SFTTrainer run, read top to bottom.

    refuse what does not fit the GPU -> tokenizer -> data (before the model: data errors come
    first) -> model (4/8-bit) -> LoRA -> SFTConfig -> SFTTrainer -> train -> save -> run folder

The tokenizer and model load in model.py, shared with `recipe merge` and `recipe generate`.
The trainer callback that writes metrics.jsonl is in callbacks.py, W&B's setup in tracking.py.

torch, transformers, peft and trl are imported inside the functions that use them, so importing
recipecli (``recipe validate``, ``recipe --help``) never pays for them.
"""
from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import DoesNotFit, RecipeError, UnknownModel
from ..fit import hardware
from ..fit.verdict import check as check_fit
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices, choose
from ..fit.suggest import suggest
from ..read.recipe import Recipe
from ..units import GIB
from . import data, datafiles, runfolder, tracking
from .callbacks import StopRequest, recorder
from .model import load_model, load_tokenizer, lora_targets, say, training_gpu


@dataclass(frozen=True)
class RunResult:
    """What a run produced; the run folder holds the details."""

    run_dir: Path
    saved: Optional[Path]  # adapter/ (lora, qlora) or model/ (full); None when interrupted
    checkpoint: Optional[Path]  # the last checkpoint, for --resume
    steps: int
    final_loss: Optional[float]
    eval_loss: Optional[float]
    interrupted: bool  # a signal stopped training early; the CLI exits with ExitCode.INTERRUPTED
    estimate_bytes: Optional[int]  # estimated peak reserved GPU memory; None on the CPU
    peak_bytes: Optional[int]  # measured peak reserved GPU memory; None on the CPU


def run(recipe: Recipe, *, force: bool = False, overwrite: bool = False, resume: bool = False,
        gpus: Optional[Sequence[Gpu]] = None, callbacks: Sequence = ()) -> RunResult:
    """Train a recipe and fill its run folder (``recipe.output_dir``).

    Args:
        recipe: a loaded recipe (``load.load_recipe``).
        force: train even when the estimate exceeds the GPU's memory.
        overwrite: replace an existing run folder.
        resume: continue from the last checkpoint in the run folder.
        gpus: the GPUs to check the recipe against; None detects them. The first one trains.
            Empty trains on the CPU.
        callbacks: extra transformers TrainerCallbacks (progress displays, early stopping, tests).

    Returns:
        The result; ``interrupted`` is set when Ctrl-C or SIGTERM stopped training after a checkpoint.

    Raises:
        UsageError: the run folder exists (without overwrite/resume), there is nothing to resume,
            or resume with a recipe changed beyond its length, logging and saving.
        DoesNotFit: the estimate exceeds the GPU and force is off; carries the breakdown and a fix.
        InvalidRecipe: the GPU cannot run a setting (bf16 or FlashAttention 2 on an old card).
        DataError: the data cannot become examples (raised before the model loads).
        UnknownTargets: a LoRA target module matches no layer of the model.
        RecipeError: the model or tokenizer cannot be loaded, or W&B cannot start (no login).
    """
    run_dir = recipe.output_dir
    runfolder.check_free(run_dir, overwrite=overwrite, resume=resume)
    if resume:
        runfolder.check_resumable(run_dir, recipe)
    checkpoint = runfolder.last_checkpoint(run_dir) if resume else None
    gpus = hardware.detect() if gpus is None else tuple(gpus)
    estimate = _refuse_unless_fits(recipe, gpus[0] if gpus else None, force)
    gpu = training_gpu(gpus)
    cuda = gpu is not None
    choices = choose(recipe, gpu)
    for note in choices.notes:
        say(f"note: {note}")
    if recipe.model.trust_remote_code:
        say(f"warning: model.trust_remote_code is true: Python code shipped with {recipe.model.id} runs on "
            "this machine. Only do this for models whose code you trust.")

    tokenizer = load_tokenizer(recipe)
    train_set, eval_set = data.load_examples(recipe, tokenizer)
    model = load_model(recipe, choices, cuda=cuda)
    peft_config = _lora_config(recipe, model)
    args = _sft_config(recipe, choices, run_dir, has_eval=eval_set is not None, cuda=cuda)

    from trl import SFTTrainer

    stop = StopRequest()
    run_info = _run_info(recipe, choices, gpu, train_set, eval_set)
    if checkpoint is not None:
        run_info["resumed_from"] = checkpoint.name
    with tracking.environment(recipe.wandb):
        with runfolder.creating(run_dir, overwrite=overwrite, resume=resume):
            runfolder.write_recipe(run_dir, recipe)
            runfolder.write_run(run_dir, run_info)
            if estimate is not None:
                runfolder.write_estimate(run_dir, estimate)
            trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                 processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
            # First in line, so the console printer and W&B see the memory columns it adds.
            trainer.callback_handler.callbacks.insert(0, recorder(run_dir, stop, cuda=cuda))
        with stop.listening(), _out_of_memory_explained(cuda), tracking.failure_explained(recipe.wandb):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        state = trainer.state
        interrupted = stop.signal_name is not None and state.global_step < state.max_steps
        saved = eval_loss = None
        if not interrupted:
            saved = run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)
            trainer.save_model(str(saved))
            if eval_set is not None:
                eval_loss = trainer.evaluate()["eval_loss"]
        tracking.finish(recipe.wandb)

    peak = _peak_reserved_bytes() if cuda else None
    result = RunResult(run_dir, saved, runfolder.last_checkpoint(run_dir), state.global_step,
                       _final_loss(state.log_history), eval_loss, interrupted,
                       estimate["reserved_bytes"] if estimate else None, peak)
    runfolder.plot_loss(run_dir, state.log_history)
    run_info["result"] = {"finished": runfolder.now(), "steps": result.steps, "final_loss": result.final_loss,
                          "eval_loss": eval_loss, "interrupted": interrupted,
                          "estimated_reserved_gib": _gib(result.estimate_bytes), "measured_reserved_gib": _gib(peak)}
    runfolder.write_run(run_dir, run_info)
    if peak is not None and result.estimate_bytes is not None:
        say(f"memory: estimated {result.estimate_bytes / GIB:.1f} GiB, measured {peak / GIB:.1f} GiB "
            "(peak reserved by PyTorch)")
    return result


def _run_info(recipe: Recipe, choices: Choices, gpu: Optional[Gpu], train_set, eval_set) -> dict:
    """run.yaml before training: environment, data identity, what "auto" became."""
    return {**runfolder.environment(recipe, _device_text(gpu)),
            "datasets": [{"path": d.path, "format": d.format, "fingerprint": datafiles.fingerprint(d)}
                         for d in recipe.data.datasets],
            "examples": {"train": len(train_set), "eval": len(eval_set) if eval_set is not None else 0},
            "settings": {"precision": choices.precision, "attention": choices.attention,
                         "compute_dtype": choices.compute_dtype},
            "notes": list(choices.notes)}


def _final_loss(log_history: list[dict]) -> Optional[float]:
    """The last logged training loss, or the run's mean loss (train_loss, the trainer's last record)
    when the run was shorter than logging_steps and logged none."""
    losses = [r["loss"] for r in log_history if "loss" in r]
    if losses:
        return losses[-1]
    return log_history[-1].get("train_loss") if log_history else None


def _gib(n: Optional[int]) -> Optional[float]:
    return None if n is None else round(n / GIB, 2)


def _refuse_unless_fits(recipe: Recipe, gpu: Optional[Gpu], force: bool) -> Optional[dict]:
    """The fit estimate as a dict for estimate.json; DoesNotFit when it exceeds the GPU.

    On the CPU there is no card to exceed, so nothing is refused and nothing is estimated.
    """
    if gpu is None:
        return None
    try:
        verdict = check_fit(recipe, gpu)
    except UnknownModel as e:  # the download will tell; a missing estimate is no reason not to train
        say(f"note: no memory estimate ({e}); training without a fit check")
        return None
    need = verdict.estimate.total_bytes
    if not verdict.fits and not force:
        from ..report.fit import format_suggestion, format_verdict  # what `recipe fit-check -v` prints

        fix = format_suggestion(recipe, verdict, suggest(recipe, gpu))
        raise DoesNotFit(f"{format_verdict(recipe, verdict)}\n{fix}\n(--force trains anyway)")
    if not verdict.fits:
        say(f"warning: --force: the estimate ({need / GIB:.1f} GiB) exceeds {gpu.name} "
            f"({gpu.total_bytes / GIB:.1f} GiB); expect CUDA out of memory")
    estimate = verdict.estimate
    return {"gpu": gpu.name, "vram_bytes": gpu.total_bytes, "status": verdict.status, "total_bytes": need,
            "allocated_bytes": estimate.allocated_bytes, "reserved_bytes": estimate.reserved_bytes,
            **dataclasses.asdict(estimate)}


def _device_text(gpu: Optional[Gpu]) -> str:
    if gpu is None:
        return f"cpu ({os.cpu_count()} cores)"
    return f"cuda:0 {gpu.name} ({gpu.total_bytes / GIB:.1f} GiB, CC {gpu.capability_text}, driver {gpu.driver})"


def _lora_config(recipe: Recipe, model):
    """peft LoraConfig for lora/qlora; None trains every weight (method full)."""
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    lora = recipe.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                      target_modules=lora_targets(lora.target_modules, model))


def _sft_config(recipe: Recipe, choices: Choices, run_dir: Path, *, has_eval: bool, cuda: bool):
    """Every training field of the recipe, translated to TRL's SFTConfig."""
    from trl import SFTConfig

    t = recipe.training
    return SFTConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a value below 1 is a fraction of all steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=choices.precision == "bf16",
        fp16=choices.precision == "fp16",
        use_cpu=not cuda,
        seed=t.seed,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.save_steps,
        report_to=["wandb"] if recipe.wandb else "none",
        run_name=(recipe.wandb.run_name or recipe.name) if recipe.wandb else recipe.name,
        **data.sft_flags(recipe),
    )


def _peak_reserved_bytes() -> int:
    import torch

    return torch.cuda.max_memory_reserved()


@contextmanager
def _out_of_memory_explained(cuda: bool) -> Iterator[None]:
    """CUDA out of memory becomes a RecipeError that says which knobs to turn."""
    if not cuda:
        yield
        return
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        raise RecipeError(f"CUDA out of memory: {str(e).splitlines()[0]}\nLower training.micro_batch_size "
                          "(raise gradient_accumulation_steps to keep the batch), data.max_seq_length or lora.r, "
                          "or turn on training.gradient_checkpointing; `recipe fit-check` shows where memory "
                          "goes. The last checkpoint (if any) continues with --resume.") from e
