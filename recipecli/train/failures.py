"""What went wrong during training, for people: an exception the training raised becomes a
RecipeError that says what happened, at which step, what to change, and which checkpoint is
left to continue from.

``explain`` is pure apart from reading the disk's free space: it takes the exception and the run's
context as data, so every case is tested with real exception instances on a machine without a
GPU. torch is never imported here: a CUDA error can only exist once torch was.
"""
from __future__ import annotations

import dataclasses
import errno
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InvalidRecipe, RecipeError, UnknownModel, UnknownTargets
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices
from ..read.recipe import Recipe
from ..units import GIB, MIB, gib
from . import checkpoints

# When a recipe that fit-check said fits runs out of memory anyway, ask its search for the
# cheapest change that lowers the estimate by this much: the estimate was off, or something
# else holds memory on the card.
OOM_MARGIN = 0.15
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# How the libraries that write checkpoints word a full disk: Python's OSError, safetensors' Rust
# I/O error ("No space left on device (os error 28)").
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


class NonFinite(Exception):
    """The loss or the trained weights stopped being finite numbers (raised by trainer.py)."""

    def __init__(self, step: int, what: str, value: float):
        self.step, self.what, self.value = step, what, value
        super().__init__(f"{what} is {value} at step {step}")


@dataclass(frozen=True)
class Context:
    """What a failure message needs to know about the run it stopped."""

    recipe: Recipe
    choices: Choices
    gpu: Optional[Gpu]  # the card that trained; None on the CPU
    run_dir: Path
    step: int  # optimizer steps completed
    writing: Optional[Path] = None  # the folder a save was writing when it failed


def explain(error: BaseException, context: Context) -> Optional[RecipeError]:
    """The RecipeError to report instead of ``error``; None for errors this does not know.

    Args:
        error: what training (or saving) raised.
        context: the run.

    Returns:
        A message for a non-finite loss or weights, CUDA or host out-of-memory, a full disk, or a
        save that failed; None otherwise (a bug, which should crash with its traceback).
    """
    if isinstance(error, NonFinite):
        return _non_finite(error, context)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return _cuda_out_of_memory(error, context)
    if isinstance(error, MemoryError):
        return RecipeError(f"out of host memory (RAM) at step {context.step + 1}",
                           hint="close other programs, or lower training.micro_batch_size or data.max_seq_length; "
                                "on the CPU the whole model sits in RAM. " + _continue(context))
    saving = context.writing is not None and (isinstance(error, (OSError, RuntimeError))
                                              or type(error).__name__ == "SafetensorError")
    free = _free(_folder(error, context))
    last = checkpoints.last_complete(context.run_dir)
    need = _size_of(last) if last is not None else None
    # torch.save on a full disk says only "[enforce fail at inline_container.cc] unexpected pos":
    # a save that fails with less room left than the last checkpoint took is taken as a full disk.
    if _disk_full(error) or (saving and free is not None and need is not None and free < need):
        folder = _folder(error, context)
        takes = f"; a checkpoint takes {_bytes(need)}" if need is not None else ""
        return RecipeError(f"no space left on the disk while writing this folder ({_bytes(free)} free there{takes})",
                           hint="free some space (training.save_total_limit keeps fewer checkpoints); the "
                                "half-written files were removed. " + _continue(context), where=str(folder))
    if saving:
        folder = context.writing
        return RecipeError(f"writing this folder failed: {error} ({_bytes(free)} free on its disk)",
                           hint="a full disk or a folder that is not writable are the usual causes. "
                                + _continue(context), where=str(folder))
    return None


def _continue(context: Context) -> str:
    """Which checkpoint is left, and how to go on from it."""
    last = checkpoints.last_complete(context.run_dir)
    if last is None:
        return "No checkpoint was saved: start again with --overwrite."
    return f"{last.name} is complete: continue from it with --resume."


def _non_finite(error: NonFinite, context: Context) -> RecipeError:
    recipe, choices = context.recipe, context.choices
    what = (f"the training loss became {error.value} at step {error.step}" if error.what == "loss"
            else f"the trained weights hold NaN or infinity after step {error.step}")
    causes = [f"the learning rate ({recipe.training.learning_rate:g}) is likely too high: lower "
              "training.learning_rate (1e-4 to 3e-4 is usual for LoRA, 1e-5 for full fine-tuning)"]
    if choices.precision in ("fp16", "pure_fp16"):
        causes.append("fp16 overflows above 65504: use training.precision bf16 where the card has it "
                      "(compute capability >= 8.0), or lower the learning rate")
    last = checkpoints.last_complete(context.run_dir)
    kept = (f"{last.name}, saved before it, is the last checkpoint (none holds non-finite weights)"
            if last is not None else "no checkpoint was saved")
    return RecipeError(f"{what}; training stopped", hint="; ".join(causes) + f". {kept}; start again with the "
                       "change (--overwrite, or --set output.dir=runs/NEW).")


def _cuda_out_of_memory(error: BaseException, context: Context) -> RecipeError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else "CUDA out of memory"
    advice = _fit_advice(context.recipe, context.gpu) if context.gpu is not None else ""
    return RecipeError(f"CUDA out of memory at step {context.step + 1}: {first}" + (f"\n{advice}" if advice else ""),
                       hint="apply the change and start again (--overwrite), or free the card of other processes "
                            "(nvidia-smi). " + _continue(context))


def _fit_advice(recipe: Recipe, gpu: Gpu) -> str:
    """fit-check's breakdown for the card and the cheapest change of the memory knobs that helps."""
    from ..fit.suggest import suggest
    from ..fit.verdict import check
    from ..report.fit import changes_and_patch, format_suggestion, format_verdict

    try:
        verdict = check(recipe, gpu)
        if not verdict.fits:  # trained with --force
            return f"{format_verdict(recipe, verdict)}\n{format_suggestion(recipe, verdict, suggest(recipe, gpu))}"
        need = verdict.estimate.device_bytes
        budget = dataclasses.replace(gpu, total_bytes=int(need * (1 - OOM_MARGIN)), free_bytes=None)
        found = suggest(recipe, budget)
    except (InvalidRecipe, UnknownModel, UnknownTargets) as e:
        return (f"(no fit estimate: {e.message}) Lower training.micro_batch_size (raise gradient_accumulation_steps "
                "to keep the batch), data.max_seq_length or lora.r, or turn on training.gradient_checkpointing.")
    text = (f"{format_verdict(recipe, verdict)}\nfit-check estimated {gib(need)} of {gib(gpu.total_bytes)}, yet the "
            f"card ran out: ")
    if found is None:
        return text + f"no change of the memory knobs lowers the estimate by {OOM_MARGIN:.0%}; use a card with more memory."
    return (text + f"the cheapest change that lowers the estimate by {OOM_MARGIN:.0%} "
            f"(to {gib(found.verdict.estimate.device_bytes)}):\n{changes_and_patch(found)}")


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return True
    return any(words in str(error) for words in _DISK_FULL_WORDS)


def _folder(error: BaseException, context: Context) -> Path:
    if context.writing is not None:
        return context.writing
    filename = getattr(error, "filename", None)
    return Path(filename).parent if filename else context.run_dir


def _free(folder: Path) -> Optional[int]:
    """Free bytes on the disk holding folder (or its nearest existing parent); None if unknown."""
    for place in (folder, *folder.parents):
        try:
            return shutil.disk_usage(place).free
        except OSError:
            continue
    return None


def _size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    return gib(n) if n >= GIB else f"{n / MIB:.1f} MiB"
