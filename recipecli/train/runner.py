"""`recipe run`: a recipe becomes a TRL SFTTrainer run, read top to bottom.

    take the run folder (lock) -> refuse what does not fit the GPU (or the CPU) -> tokenizer ->
    data (before the model: data errors come first) -> model (4/8-bit) -> LoRA -> SFTConfig ->
    SFTTrainer -> write the run folder -> train -> save -> result

Every refusal comes before anything heavy loads. Until training starts, Ctrl-C and SIGTERM stop
the run as Interrupted and leave the run folder as it was; after, they save a checkpoint first.
Taking the folder is claim.py's, loading the tokenizer and model model.py's (shared with `recipe
merge` and `recipe generate`), the trainer callback that writes metrics.jsonl callbacks.py's and
W&B's setup tracking.py's.

torch, transformers, peft and trl are imported inside the functions that use them, so importing
recipecli (``recipe validate``, ``recipe --help``) never pays for them.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from ..errors import Interrupted, RecipeError
from ..fit import cpu, hardware
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices, choose
from ..read.recipe import Recipe
from ..units import GIB
from . import checkpoints, claim, data, datafiles, failures, runfolder, tracking
from .callbacks import StopRequest, recorder
from .model import check_remote_code, enforce_dtypes, load_model, load_tokenizer, lora_targets, say, training_gpu
from .preflight import refuse_unless_cpu_trains, refuse_unless_fits
from .trainer import trainer_class


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
        gpus: Optional[Sequence[Gpu]] = None, ram_bytes: Optional[int] = None, callbacks: Sequence = (),
        trust_remote_code: bool = False) -> RunResult:
    """Train a recipe and fill its run folder (``recipe.output_dir``), holding its lock throughout.

    Args:
        recipe: a loaded recipe (``load.load_recipe``).
        force: train even when the estimate exceeds the GPU's memory, or on the CPU a model too
            large for it.
        overwrite: replace an existing run folder.
        resume: continue from the last checkpoint in the run folder.
        gpus: the GPUs to check the recipe against; None detects them. The first one trains.
            Empty trains on the CPU.
        ram_bytes: this machine's memory, checked when training on the CPU; None reads it.
        callbacks: extra transformers TrainerCallbacks (progress displays, early stopping, tests).
        trust_remote_code: the command line allows the model's own code (``--trust-remote-code``);
            a recipe with ``model.trust_remote_code: true`` is refused without it.

    Returns:
        The result; ``interrupted`` is set when Ctrl-C or SIGTERM stopped training after a checkpoint.

    Raises:
        UsageError: the run folder exists (without overwrite/resume), another run holds it, there
            is nothing to resume, or resume with a recipe changed beyond its length, logging and saving;
            the recipe trusts remote code without ``trust_remote_code``.
        DoesNotFit: the estimate exceeds the GPU and force is off; carries the breakdown and a fix.
            Without a GPU: the model is too large to train on a CPU, or for this machine's RAM.
        Interrupted: Ctrl-C or SIGTERM before training started; the run folder is left as it was.
        InvalidRecipe: the GPU cannot run a setting (bf16 or FlashAttention 2 on an old card).
        DataError: the data cannot become examples (raised before the model loads).
        UnknownTargets: a LoRA target module matches no layer of the model.
        RecipeError: the model or tokenizer cannot be loaded, or W&B cannot start (no login); training
            stopped at a non-finite loss, out of GPU or host memory, or on a full disk
            (failures.explain: the step, what to change, the checkpoint left).
    """
    check_remote_code(recipe, trust_remote_code, f"recipe run {recipe.source}")  # before anything downloads
    run_dir = recipe.output_dir  # absolute: every file of the run, checkpoints too, goes in this one folder
    with ExitStack() as whole_run:  # holds the run folder (its lock) and W&B's settings to the end
        with _before_training():
            folder = whole_run.enter_context(claim.claimed(run_dir, recipe, overwrite=overwrite, resume=resume))
            whole_run.enter_context(tracking.environment(recipe.wandb))
            gpus = hardware.detect() if gpus is None else tuple(gpus)
            # The card NVML reports is judged even when this torch cannot use it (training_gpu says
            # so and trains on the CPU): the verdict is for the card the user means to train on.
            estimate = refuse_unless_fits(recipe, gpus[0] if gpus else None, force)
            gpu = training_gpu(gpus)
            cuda = gpu is not None
            if not cuda:
                refuse_unless_cpu_trains(recipe, cpu.host_memory_bytes() if ram_bytes is None else ram_bytes, force)
            choices = choose(recipe, gpu)
            for note in choices.notes:
                say(f"note: {note}")

            tokenizer = load_tokenizer(recipe)
            train_set, eval_set = data.load_examples(recipe, tokenizer)
            model = load_model(recipe, choices, cuda=cuda)
            args = _sft_config(recipe, choices, run_dir, has_eval=eval_set is not None, cuda=cuda)

            stop = StopRequest()
            trainer = _trainer(recipe, choices, model, args, tokenizer, train_set, eval_set, callbacks)
            # First in line, so the console printer and W&B see the memory columns it adds.
            trainer.callback_handler.callbacks.insert(0, recorder(run_dir, stop, cuda=cuda))
            # TRL writes a Hub model card (README.md) into the run folder at every checkpoint, naming
            # the base model "None" for a local one; run.yaml is the run's record, adapter/ has peft's card.
            trainer.create_model_card = lambda *_, **__: None
            run_info = _run_info(recipe, choices, gpu, train_set, eval_set)
            if folder.resume_from is not None:
                run_info["resumed_from"] = folder.resume_from.name
            folder.clear()  # --overwrite: the old run goes only now, once everything has loaded
            runfolder.write_run(run_dir, run_info)  # first: run.yaml is what marks a run folder
            runfolder.write_recipe(run_dir, recipe)
            if estimate is not None:
                runfolder.write_estimate(run_dir, estimate)
            folder.keep()
        if folder.resume_from is not None:
            for note in checkpoints.scan(run_dir)[1]:  # newer checkpoints that are not whole
                say(f"note: {note}")

        def situation() -> failures.Context:  # read when it fails: the step reached, the folder being written
            return failures.Context(recipe, choices, gpu, run_dir, trainer.state.global_step, trainer.writing)

        with _failures_explained(situation, recipe):
            with stop.listening(), tracking.failure_explained(recipe.wandb):
                trainer.train(resume_from_checkpoint=str(folder.resume_from) if folder.resume_from else None)
            state = trainer.state
            interrupted = stop.signal_name is not None and state.global_step < state.max_steps
            saved = eval_loss = None
            if not interrupted:
                saved = run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)
                trainer.save_final(saved)  # whole or absent, and never of non-finite weights
                if eval_set is not None:
                    eval_loss = trainer.evaluate()["eval_loss"]
        tracking.finish(recipe.wandb)

        peak = _peak_reserved_bytes() if cuda else None
        result = RunResult(run_dir, saved, checkpoints.last_complete(run_dir), state.global_step,
                           _final_loss(state.log_history), eval_loss, interrupted,
                           estimate["reserved_bytes"] if estimate else None, peak)
        run_info["result"] = {"finished": runfolder.now(), "steps": result.steps, "final_loss": result.final_loss,
                              "eval_loss": eval_loss, "interrupted": interrupted,
                              "estimated_reserved_gib": _gib(result.estimate_bytes),
                              "measured_reserved_gib": _gib(peak)}
        with _failures_explained(situation, recipe):  # a disk that fills up now is explained too
            runfolder.plot_loss(run_dir, state.log_history)
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
                         "compute_dtype": choices.compute_dtype, "weight_dtype": choices.weight_dtype,
                         "trainable_dtype": choices.trainable_dtype, "autocast_dtype": choices.autocast_dtype,
                         "grad_scaler": choices.grad_scaler},
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


@contextmanager
def _before_training() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the setup as Interrupted, so the run folder's claim undoes what it began.

    SIGTERM's default would kill the process where it stands, leaving a half-made run folder.
    """
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted("interrupted before training started; nothing was saved") from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


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
        num_train_epochs=t.epochs if t.epochs is not None else 1,  # max_steps decides then
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


def _trainer(recipe: Recipe, choices: Choices, model, args, tokenizer, train_set, eval_set, callbacks: Sequence):
    """The run's SFTTrainer (trainer.py: atomic checkpoints, a stop on non-finite numbers), its
    trained parameters in the dtype precision.choose decided whatever TRL cast them to."""
    trainer = trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tokenizer, peft_config=_lora_config(recipe, model),
                              callbacks=list(callbacks))
    enforce_dtypes(trainer.model, choices)  # before train() builds the optimizer over them
    return trainer


@contextmanager
def _failures_explained(situation: Callable[[], failures.Context], recipe: Recipe) -> Iterator[None]:
    """A failure of training or saving becomes a RecipeError that says what to do (failures.explain);
    the W&B run, if any, is marked failed."""
    try:
        yield
    except Exception as e:  # MemoryError included; each kind failures.explain does not know is re-raised
        tracking.finish(recipe.wandb, failed=True)
        explained = None if isinstance(e, RecipeError) else failures.explain(e, situation())
        if explained is None:
            raise
        raise explained from e
