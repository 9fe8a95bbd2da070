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
from typing import Callable, Iterator, Mapping, MutableMapping, Optional, Sequence

from ..errors import Interrupted, InvalidRecipe, Problem, RecipeError
from ..fit import cpu, hardware
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices, choose
from ..fit.verdict import at_its_field
from ..read.recipe import TORCHAO_OPTIMIZERS, Recipe, targets_text
from ..units import GIB
from . import checkpoints, claim, data, datafiles, datastats, failures, hub, launch, qat, runfolder, tracking
from .callbacks import StopRequest, recorder
from .model import (adapter_dropout, check_remote_code, drop_adapter_inputs, enforce_dtypes, load_model, load_tokenizer,
                    lora_targets, model_type_of, parameter_targets, repeated_kv_heads, saved_modules, say, training_gpu)
from .preflight import refuse_unless_cpu_trains, refuse_unless_fits
from .trainer import schedule_of, trainer_class


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
    peak_bytes: Optional[int]  # measured peak reserved GPU memory while training (not loading); None on the CPU


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
    if recipe.output.hub_model_id is not None:
        hub.refuse_unless_it_can_push(recipe)  # an hour of training is not the way to find out
    run_dir = recipe.output_dir  # absolute: every file of the run, checkpoints too, goes in this one folder
    # One of several processes accelerate started (launch.py): rank 0 alone takes and writes the
    # run folder; every rank trains, and saves its part of each checkpoint into the folder rank 0 made.
    ranked = recipe.strategy != "none" and launch.in_rank()
    main = not ranked or os.environ.get("RANK", "0") == "0"
    with ExitStack() as whole_run:  # holds the run folder (its lock) and W&B's settings to the end
        with _before_training():
            folder = whole_run.enter_context(claim.claimed(run_dir, recipe, overwrite=overwrite, resume=resume)) \
                if main else _OtherRank(run_dir, resume)
            whole_run.enter_context(tracking.environment(recipe.wandb))
            gpus = hardware.detect() if gpus is None else tuple(gpus)
            # The card NVML reports is judged even when this torch cannot use it (training_gpu says
            # so and trains on the CPU): the verdict is for the card the user means to train on.
            allocator = allocator_setting(os.environ, cuda=bool(gpus))  # the estimate counts on it
            estimate = refuse_unless_fits(recipe, gpus[0] if gpus else None, force, allocator.expandable_segments)
            # Set before torch initializes CUDA (training_gpu imports torch), kept until the run ends.
            whole_run.enter_context(_allocator_environment(allocator, os.environ))
            gpu = training_gpu(gpus)
            if gpu is None:  # no CUDA after all: the variable changes nothing, and is not claimed
                allocator = allocator_setting(os.environ, cuda=False)
            cuda = gpu is not None
            if not cuda:
                refuse_unless_cpu_trains(recipe, cpu.host_memory_bytes() if ram_bytes is None else ram_bytes, force)
            if recipe.training.liger_kernel:
                _refuse_unless_liger_runs(recipe, cuda)
            if recipe.training.optimizer in TORCHAO_OPTIMIZERS:
                _refuse_without_torchao(recipe)
            choices = choose(recipe, gpu, model_type_of(recipe))
            for note in choices.notes:
                say(f"note: {note}")
            whole_run.enter_context(repeated_kv_heads(choices.gqa_repeat))  # as the estimate counts it

            tokenizer = load_tokenizer(recipe)
            template = data.recipe_template(recipe)
            if template is not None:  # saved with the adapter, so `recipe generate` asks as training did
                tokenizer.chat_template = template
            train_set, eval_set, data_stats = datastats.for_run(recipe, tokenizer)  # prints its summary line
            model = load_model(recipe, choices, cuda=cuda)
            if recipe.training.liger_kernel:
                _refuse_unless_liger_knows(recipe, model.config.model_type)
            if recipe.training.qat is not None:
                layers = qat.prepare(model, recipe)
                start = recipe.training.qat.start_step
                say(f"note: training.qat: {layers} linear layers fake-quantized"
                    + (f" from step {start}" if start else ""))
            args = _sft_config(recipe, choices, run_dir, has_eval=eval_set is not None, cuda=cuda,
                               steps_per_epoch=data_stats.steps_per_epoch)

            stop = StopRequest()
            # What the recorder stops on: the signal itself, or in a distributed run the ranks'
            # agreement on it (launch.agreement), so that all of them stop at the same step.
            decision = StopRequest() if ranked else stop
            trainer = _trainer(recipe, choices, model, args, tokenizer, train_set, eval_set, callbacks)
            # First in line, so the console printer and W&B see the memory columns it adds.
            memory = recorder(run_dir, decision, cuda=cuda)
            trainer.callback_handler.callbacks.insert(0, memory)
            if ranked:  # before the recorder: a stop any rank received is every rank's, at this step
                trainer.callback_handler.callbacks.insert(0, launch.agreement(stop, decision))
            # TRL writes a Hub model card (README.md) into the run folder at every checkpoint, naming
            # the base model "None" for a local one; run.yaml is the run's record, adapter/ has peft's card.
            trainer.create_model_card = lambda *_, **__: None
            run_info = _run_info(recipe, choices, gpu, train_set, eval_set)
            run_info["data"] = data_stats.numbers()  # what `recipe data` counts, for this run
            run_info["cuda_allocator"] = allocator.record()
            processes = int(os.environ["WORLD_SIZE"]) if ranked else 1
            run_info["global_batch"] = _global_batch(recipe, processes)
            if main:
                say(f"global batch {run_info['global_batch']['sequences']} sequences per step = micro-batch "
                    f"{recipe.training.micro_batch_size} x accumulation {recipe.training.gradient_accumulation_steps}"
                    f" x {processes} process{'es' if processes > 1 else ''}")
            if folder.resume_from is not None:
                run_info["resumed_from"] = folder.resume_from.name
            folder.clear()  # --overwrite: the old run goes only now, once everything has loaded
            if main:
                runfolder.write_run(run_dir, run_info)  # first: run.yaml is what marks a run folder
                runfolder.write_recipe(run_dir, recipe)
                if estimate is not None:
                    runfolder.write_estimate(run_dir, estimate)
                if ranked:  # the configs again, naming this folder's copies: it launches the run alone
                    runfolder.write_launch(run_dir, launch.files(launch.rank_launch(recipe, os.environ, cuda),
                                                                 recipe, run_dir))
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
            interrupted = decision.signal_name is not None and state.global_step < state.max_steps
            saved = eval_loss = None
            if not interrupted:
                saved = run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)
                trainer.save_final(saved)  # whole or absent, and never of non-finite weights
                if eval_set is not None:
                    eval_loss = trainer.evaluate()["eval_loss"]  # of the best checkpoint, with early stopping
        tracking.finish(recipe.wandb)

        peak = _peak_reserved_bytes() if cuda else None  # since training began (the recorder's reset)
        result = RunResult(run_dir, saved, checkpoints.last_complete(run_dir), state.global_step,
                           _final_loss(state.log_history), eval_loss, interrupted,
                           estimate["reserved_bytes"] if estimate else None, peak)
        run_info["result"] = {"finished": runfolder.now(), "steps": result.steps, "final_loss": result.final_loss,
                              "eval_loss": eval_loss, "interrupted": interrupted,
                              "estimated_reserved_gib": _gib(result.estimate_bytes),
                              "measured_reserved_gib": _gib(peak),
                              "measured_load_reserved_gib": _gib(memory.load_reserved_bytes)}
        if recipe.training.early_stopping_patience is not None:
            run_info["result"]["early_stopping"] = _early_stopping_result(recipe, state, interrupted)
        not_pushed = None
        if main and saved is not None and recipe.output.hub_model_id is not None:
            try:
                run_info["result"]["hub"] = hub.push(recipe, saved)
                say(f"pushed {saved.name}/ to {run_info['result']['hub']['url']}")
            except RecipeError as e:  # raised once run.yaml says so: the run folder is whole
                run_info["result"]["hub"] = {"error": e.message}
                not_pushed = e
        with _failures_explained(situation, recipe):  # a disk that fills up now is explained too
            if main:
                runfolder.plot_loss(run_dir, state.log_history)
                runfolder.write_run(run_dir, run_info)
        if ranked:  # no rank leaves before rank 0 has written the result (accelerate would stop it)
            launch.end_of_rank()
    if not_pushed is not None:
        raise not_pushed
    if peak is not None and result.estimate_bytes is not None:
        loading = f"; loading the model: {memory.load_reserved_bytes / GIB:.1f} GiB" \
            if memory.load_reserved_bytes is not None else ""
        say(f"memory: estimated {result.estimate_bytes / GIB:.1f} GiB, measured {peak / GIB:.1f} GiB "
            f"(peak reserved by PyTorch while training{loading})")
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


def _global_batch(recipe: Recipe, processes: int) -> dict:
    t = recipe.training
    return {"sequences": recipe.global_batch(processes), "micro_batch_size": t.micro_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps, "processes": processes}


class _OtherRank:
    """A rank other than 0 has this instead of the run folder's claim: where to resume from."""

    def __init__(self, run_dir: Path, resume: bool):
        self.resume_from = checkpoints.to_resume(run_dir)[0] if resume else None

    def clear(self) -> None:
        pass

    def keep(self) -> None:
        pass


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


# PyTorch's caching-allocator options. torch 2.13 reads PYTORCH_CUDA_ALLOC_CONF, then the
# device-generic PYTORCH_ALLOC_CONF (c10/cuda/CUDAAllocatorConfig.h): a user who set either one
# has configured the allocator, and setting the first would silently override the second.
ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
USER_ALLOC_CONFS = (ALLOC_CONF, "PYTORCH_ALLOC_CONF")
# Expandable segments grow one segment in place instead of cutting fixed ones: for a training
# step with batches of changing length the allocator model (fit/reserve.py) needs less reserve
# with them, never more, so `recipe run` turns them on unless the user chose otherwise.
EXPANDABLE = "expandable_segments:True"


@dataclass(frozen=True)
class AllocatorSetting:
    """The caching-allocator configuration a run trains with, and where it came from."""

    variable: Optional[str]  # the environment variable that holds it; None when nothing is set
    value: Optional[str]
    source: str  # "recipe run", "your environment", or why there is none
    set_here: bool  # recipe run sets the variable (and removes it again at the end)

    @property
    def expandable_segments(self) -> bool:
        """Whether the allocator will use expandable segments (the option torch parses as True)."""
        options = [o.replace(" ", "") for o in (self.value or "").split(",")]
        return self.variable is not None and EXPANDABLE in options

    def record(self) -> dict:
        """What run.yaml keeps."""
        return {"variable": self.variable, "value": self.value, "source": self.source,
                "expandable_segments": self.expandable_segments}


def allocator_setting(environ: Mapping[str, str], cuda: bool) -> AllocatorSetting:
    """The allocator configuration of a run: the user's when they set one, else expandable
    segments on CUDA, else none (the CPU has no caching allocator to configure).

    Args:
        environ: the process environment.
        cuda: whether training runs on CUDA.
    """
    if not cuda:
        return AllocatorSetting(None, None, "none: no CUDA, no caching allocator", False)
    for variable in USER_ALLOC_CONFS:
        if variable in environ:
            return AllocatorSetting(variable, environ[variable], "your environment", False)
    return AllocatorSetting(ALLOC_CONF, EXPANDABLE, "recipe run", True)


@contextmanager
def _allocator_environment(setting: AllocatorSetting, environ: MutableMapping[str, str]) -> Iterator[None]:
    """The variable set for the run (only when recipe run chose it), removed when it ends."""
    if not setting.set_here:
        yield
        return
    environ[setting.variable] = setting.value
    try:
        yield
    finally:
        environ.pop(setting.variable, None)


def _device_text(gpu: Optional[Gpu]) -> str:
    if gpu is None:
        return f"cpu ({os.cpu_count()} cores)"
    return f"cuda:0 {gpu.name} ({gpu.total_bytes / GIB:.1f} GiB, CC {gpu.capability_text}, driver {gpu.driver})"


def _lora_config(recipe: Recipe, model):
    """peft LoraConfig for lora/qlora; None trains every weight (method full).

    Raises:
        UnknownTargets: target_modules or modules_to_save name no module fit for them, located
            at that field of the recipe.
    """
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    lora = recipe.lora
    try:
        targets = lora_targets(lora.target_modules, model)
        to_save = saved_modules(lora.modules_to_save, targets, model)
        parameters = parameter_targets(lora.target_parameters, model)
    except RecipeError as e:
        raise at_its_field(e, recipe) from None
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, task_type="CAUSAL_LM",
                      lora_dropout=adapter_dropout(lora.dropout, lora.target_modules, parameters or (), model),
                      use_rslora=lora.use_rslora, use_dora=lora.use_dora, target_modules=targets,
                      modules_to_save=to_save, target_parameters=parameters)


LIGER_PATH = ("training", "liger_kernel")


def _liger_problem(recipe: Recipe, message: str, hint: str) -> InvalidRecipe:
    return InvalidRecipe([Problem(recipe.locate(LIGER_PATH), "$.training.liger_kernel", message, hint)])


# Liger's keyword for each kernel of training.liger_kernel: the gated MLP is SwiGLU or GeGLU by model.
_LIGER_KEYWORDS = {"rope": ("rope",), "rms_norm": ("rms_norm",), "glu": ("swiglu", "geglu"),
                   "layer_norm": ("layer_norm",)}


def liger_config(kernels) -> Optional[dict]:
    """transformers' liger_kernel_config for a list of kernels: every keyword said, since Liger's apply
    functions default each one they are not given to on (a model's function takes only its own:
    Liger drops the rest). None for true (Liger's defaults: every kernel) and for false."""
    if isinstance(kernels, bool):
        return None
    return {word: kernel in kernels for kernel, words in _LIGER_KEYWORDS.items() for word in words}


def _refuse_unless_liger_runs(recipe: Recipe, cuda: bool) -> None:
    """Liger's kernels are Triton kernels: on the CPU Triton finds no driver and the first step
    fails (liger-kernel 0.8.5 imports there, and stops with "0 active drivers"), so say it now.

    Raises:
        InvalidRecipe: training on the CPU; RecipeError: liger-kernel is not installed.
    """
    if not cuda:
        raise _liger_problem(recipe, "Liger's kernels run on a CUDA GPU (Triton), and this run trains on the CPU",
                             "set training.liger_kernel: false to train here, or train on a CUDA GPU")
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise RecipeError("training.liger_kernel needs the liger-kernel package, which is not installed",
                          hint="pip install 'recipecli[liger]'", where=recipe.locate(LIGER_PATH),
                          path="$.training.liger_kernel")


def _refuse_without_torchao(recipe: Recipe) -> None:
    """transformers imports torchao only when it builds the optimizer, after the model has loaded.

    Raises:
        RecipeError: torchao is not installed.
    """
    import importlib

    try:
        importlib.import_module("torchao")
    except ImportError:
        raise RecipeError(f"training.optimizer {recipe.training.optimizer} needs torchao, which is not installed",
                          hint="pip install 'recipecli[torchao]'", where=recipe.locate(("training", "optimizer")),
                          path="$.training.optimizer") from None


def _refuse_unless_liger_knows(recipe: Recipe, model_type: str) -> None:
    """Liger patches the model types it has kernels for and skips any other with a log line only;
    a recipe that asks for its kernels gets them or a refusal."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise _liger_problem(recipe, f"Liger has no kernels for model type {model_type!r}",
                             "set training.liger_kernel: false; Liger supports " +
                             ", ".join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)))


def _early_stopping_result(recipe: Recipe, state, interrupted: bool) -> dict:
    """run.yaml's record of early stopping: where training stopped, and whose weights were saved."""
    best = state.best_global_step or None
    stopped = not interrupted and state.global_step < state.max_steps
    if stopped:
        say(f"early stopping: eval_loss did not improve for {recipe.training.early_stopping_patience} evaluations; "
            f"stopped at step {state.global_step} of {state.max_steps}")
    if best is not None:
        say(f"the result holds step {best}'s weights, the best eval_loss ({state.best_metric:.4g})")
    return {"stopped_early": stopped, "best_step": best, "best_eval_loss": state.best_metric}


def every(steps_per_epoch: int, per_epoch: Optional[int], steps: Optional[int]) -> int:
    """Optimizer steps between two saves (or evaluations): ``steps``, or an epoch's steps divided
    ``per_epoch`` times (at least 1), as Axolotl's saves_per_epoch / evals_per_epoch mean it."""
    return steps if per_epoch is None else max(1, steps_per_epoch // per_epoch)


def _sft_config(recipe: Recipe, choices: Choices, run_dir: Path, *, has_eval: bool, cuda: bool,
                steps_per_epoch: int):
    """Every training field of the recipe, translated to TRL's SFTConfig."""
    from trl import SFTConfig

    t = recipe.training
    save_steps = every(steps_per_epoch, t.saves_per_epoch, t.save_steps)
    eval_steps = every(steps_per_epoch, t.evals_per_epoch, t.eval_steps if t.eval_steps is not None else save_steps)
    if t.early_stopping_patience is not None and t.saves_per_epoch and t.evals_per_epoch:
        # The best evaluation must have its checkpoint: every E/S-th evaluation is saved (rules.py
        # allows per-epoch counts with early stopping only where E is a multiple of S).
        save_steps = eval_steps * (t.evals_per_epoch // t.saves_per_epoch)
    return SFTConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        dataloader_drop_last=t.dataloader_drop_last,
        num_train_epochs=t.epochs if t.epochs is not None else 1,  # max_steps decides then
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        # transformers' cosine with a floor (min_lr_rate: a fraction of the peak), where the recipe sets one.
        # (rex is none of transformers': the trainer builds it, trainer.schedule_of; "constant" stands in)
        lr_scheduler_type="constant" if t.lr_scheduler == "rex" else
        "cosine_with_min_lr" if t.min_lr_ratio else t.lr_scheduler,
        lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio} if t.min_lr_ratio and t.lr_scheduler == "cosine" else {},
        # transformers 5: a value below 1 is a fraction of all steps, a whole number from 1 a count.
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        neftune_noise_alpha=t.neftune_noise_alpha,
        loss_type=t.loss,
        # TRL turns a mixture of experts' load-balancing loss on by default (the config's coefficient);
        # 0.0 turns it off, None takes the config's (model.check_experts refuses it on a dense model).
        router_aux_loss_coef=t.router_aux_loss_coef if t.router_aux_loss else 0.0,
        optim=t.optimizer,
        # transformers hands optim_args to torchao's AdamW (its _get_torchao_optimizer reads this key)
        optim_args="bf16_stochastic_round=True" if t.bf16_stochastic_round else None,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        gradient_checkpointing=t.gradient_checkpointing,
        activation_offloading=choices.activation_offloading,  # TRL's; it needs a CUDA device (precision.choose)
        bf16=choices.precision == "bf16",
        fp16=choices.precision == "fp16",
        tf32=True if choices.tf32 else None,  # None leaves torch's default (off); transformers refuses True without TF32
        use_cpu=not cuda,
        seed=t.seed,
        logging_steps=t.logging_steps,
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        report_to=["wandb"] if recipe.wandb else "none",
        run_name=(recipe.wandb.run_name or recipe.name) if recipe.wandb else recipe.name,
        # TRL applies Liger's layer kernels only (RMSNorm, RoPE, SwiGLU), keeping its own chunked LM head.
        use_liger_kernel=bool(t.liger_kernel),
        liger_kernel_config=liger_config(t.liger_kernel),
        # Early stopping watches eval_loss and the result is the best checkpoint's weights: the Trainer
        # tracks the best evaluation and loads its checkpoint at the end (trainer.py keeps it published).
        **({"load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False}
           if t.early_stopping_patience is not None else {}),
        **data.trainer_flags(recipe),  # the examples come tokenized, their masks in the labels
    )


def _peak_reserved_bytes() -> int:
    import torch

    return torch.cuda.max_memory_reserved()


def _trainer(recipe: Recipe, choices: Choices, model, args, tokenizer, train_set, eval_set, callbacks: Sequence):
    """The run's SFTTrainer (trainer.py: atomic checkpoints, a stop on non-finite numbers), its
    trained parameters in the dtype precision.choose decided whatever TRL cast them to."""
    started = qat.start_callback(recipe.training.qat)
    try:
        trainer = trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                  processing_class=tokenizer, peft_config=_lora_config(recipe, model),
                                  callbacks=list(callbacks) + _early_stopping(recipe) + ([started] if started else []))
    except ValueError as e:
        # peft (0.21) adapts a mixture of experts' fused experts and routers as parameters when all-linear
        # reaches them (Mixtral, Qwen3-MoE, OLMoE), and refuses dropout there while building the adapters.
        if "ParamWrapper" not in str(e) or "lora_dropout" not in str(e):
            raise
        raise InvalidRecipe([Problem(recipe.locate(("lora", "dropout")), "$.lora.dropout",
                                     f"peft adapts {recipe.model.id}'s fused experts and routers too (target_modules "
                                     f"{targets_text(recipe.lora.target_modules)}), and takes no dropout on them",
                                     "set lora.dropout: 0, or adapt the attention alone (target_modules: attention)")]) \
            from None
    if recipe.lora is not None:
        drop_adapter_inputs(trainer.model, recipe.lora.dropout)
    enforce_dtypes(trainer.model, choices)  # before train() builds the optimizer over them
    trainer.schedule = schedule_of(recipe.training)
    return trainer


def _early_stopping(recipe: Recipe) -> list:
    """transformers' EarlyStoppingCallback when the recipe asks for it: it counts evaluations whose
    eval_loss is not below the best by more than the threshold, and stops after patience of them."""
    t = recipe.training
    if t.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience,
                                  early_stopping_threshold=t.early_stopping_threshold)]


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
