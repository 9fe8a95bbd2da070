"""From a recipe and a GPU to a verdict: the estimator's view of the recipe on that card, and
whether the estimate fits. What "auto" becomes is precision.py's; the smallest change that makes
a recipe fit is suggest.py's.

Pure: the GPU arrives as data (``gpu_catalog.Gpu``), nothing here asks CUDA or imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import RecipeError, UnknownModel, UnknownTargets
from ..read.recipe import Recipe
from ..units import GIB
from .architectures import Shape, find_shape
from .estimate import Estimate, estimate
from .gpu_catalog import Gpu
from .precision import DTYPE_BYTES, choose
from .setup import Setup

# benchmarks/calibration.py finds estimates within ~6 % of published peaks of this stack (few
# rows, so twice that is kept as margin): a run needing more than 90 % of the card may or may
# not hit out-of-memory. It is reported as tight, still a fit (exit code 0).
TIGHT_FRACTION = 0.90

Status = Literal["fits", "tight", "does_not_fit"]


def setup_for(recipe: Recipe, gpu: Optional[Gpu], num_gpus: int = 1,
              parallelism: str = "none") -> tuple[Setup, list[str]]:
    """The estimator's view of a recipe on a GPU.

    Args:
        recipe: the loaded recipe.
        gpu: the card each process trains on (all cards alike); None for the CPU.
        num_gpus: data-parallel processes.
        parallelism: none, ddp, fsdp, zero2 or zero3.

    Returns:
        The setup and the notes on what "auto" became.

    Raises:
        InvalidRecipe: see :func:`choose`.
    """
    choices = choose(recipe, gpu)
    quant, lora = recipe.quantization, recipe.lora
    four_bit = quant is not None and quant.bits == 4
    setup = Setup(
        method=recipe.method,
        weight_bits=quant.bits if quant is not None else 8 * DTYPE_BYTES[choices.weight_dtype],
        quant_type=quant.type if four_bit else None,
        double_quant=four_bit and quant.double_quant,
        compute_bytes=DTYPE_BYTES[choices.matmul_dtype],
        lora_r=lora.r if lora else None,
        lora_targets=lora.target_modules if lora else (),
        micro_batch_size=recipe.training.micro_batch_size,
        seq_len=recipe.data.max_seq_length,
        gradient_checkpointing=recipe.training.gradient_checkpointing,
        optimizer=recipe.training.optimizer,
        attention=choices.attention,
        num_gpus=num_gpus,
        parallelism=parallelism,
        gradient_accumulation_steps=recipe.training.gradient_accumulation_steps,
        lora_dropout=lora.dropout if lora else 0.0,
        # The dtype the runner enforces on the adapters (model.enforce_dtypes), so the two agree.
        adapter_bytes=DTYPE_BYTES[choices.trainable_dtype] if lora else None,
    )
    return setup, list(choices.notes)


@dataclass(frozen=True)
class Verdict:
    """Whether one recipe fits one GPU, and by how much."""

    status: Status
    estimate: Estimate
    setup: Setup
    gpu: Gpu
    notes: tuple[str, ...]

    @property
    def vram_bytes(self) -> int:
        return self.gpu.total_bytes

    @property
    def headroom_bytes(self) -> int:
        """VRAM left over; negative when it does not fit."""
        return self.vram_bytes - self.estimate.device_bytes

    @property
    def fits(self) -> bool:
        return self.status != "does_not_fit"


def status_of(need_bytes: int, vram_bytes: int) -> Status:
    """fits, tight (above TIGHT_FRACTION of the card) or does_not_fit."""
    if need_bytes > vram_bytes:
        return "does_not_fit"
    return "tight" if need_bytes > TIGHT_FRACTION * vram_bytes else "fits"


def judge(shape: Shape, setup: Setup, gpu: Gpu, notes: tuple[str, ...]) -> Verdict:
    """Estimate a model shape under a setup and judge it against the card.

    Args:
        shape: the model's architecture.
        setup: the estimator's view of the recipe (:func:`setup_for`).
        gpu: the card.
        notes: carried into the verdict; a note is added when other processes hold the memory it needs.

    Returns:
        The verdict.
    """
    result = estimate(shape, setup)
    notes_now = list(notes)
    if gpu.free_bytes is not None and gpu.free_bytes < result.device_bytes <= gpu.total_bytes:
        used = (gpu.total_bytes - gpu.free_bytes) / GIB
        notes_now.append(f"{gpu.name}: other processes hold {used:.1f} GiB right now; free it before training")
    return Verdict(status_of(result.device_bytes, gpu.total_bytes), result, setup, gpu, tuple(notes_now))


def check(recipe: Recipe, gpu: Gpu, num_gpus: int = 1, parallelism: str = "none") -> Verdict:
    """Estimate a recipe's peak memory per GPU and compare it with the card.

    Raises:
        InvalidRecipe: the card cannot run the recipe's settings (see :func:`choose`).
        UnknownModel: the model's shape cannot be found offline.
        UnknownTargets: a LoRA target names no linear layer of the model, or its output head.
        Both are located at their field in the recipe.
    """
    setup, notes = setup_for(recipe, gpu, num_gpus, parallelism)
    try:
        return judge(recipe_shape(recipe), setup, gpu, tuple(notes))
    except (UnknownModel, UnknownTargets) as exc:
        raise at_its_field(exc, recipe) from None


def at_its_field(exc: RecipeError, recipe: Recipe) -> RecipeError:
    """A model or target error, raised where the recipe is unknown, located like a schema problem
    at the field its path names (``$.model.id``, ``$.lora.target_modules``), so editors jump there."""
    if exc.where is not None or not exc.path:
        return exc
    field = tuple(exc.path.removeprefix("$.").split("."))
    return type(exc)(exc.message, exc.hint, recipe.locate(field), exc.path)


def recipe_shape(recipe: Recipe) -> Shape:
    """The architecture of the recipe's model.

    Raises:
        UnknownModel: it cannot be found offline.
    """
    model = recipe.model
    return find_shape(model.id, model.local_path, model.architecture, model.revision)
