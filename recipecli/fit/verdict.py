"""From a recipe and a GPU to a verdict: the estimator's view of the recipe on that card, and
whether the estimate fits. What "auto" becomes is precision.py's; the smallest change that makes
a recipe fit is suggest.py's.

Pure: the GPU arrives as data (``gpu_catalog.Gpu``), nothing here asks CUDA or imports torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import InvalidRecipe, Problem, RecipeError, UnknownModel, UnknownTargets
from ..read.recipe import Recipe
from ..units import GIB
from .architectures import Shape, find_shape
from .estimate import Estimate, estimate
from .gpu_catalog import Gpu
from .precision import DTYPE_BYTES, choose
from .setup import Setup

# How far the measured peak may lie from the estimate, either way, as a fraction of it: the sum
# of the worst errors of the three parts of the device figure. Allocated: benchmarks/
# trace_grid.json holds the peaks of the real stack traced at full size, and the analytic model's
# target against them is a worst error of 6 %. Reserved beyond allocated: the allocator replay
# (reserve.py) against the published max_memory_reserved rows of ../shared/calibration/
# published_runs.yaml (benchmarks/calibration.py) is within 4.5 %. The CUDA context: the
# published figures span ~100 MiB per generation (gpu_catalog.CUDA_CONTEXT_MIB), ~1.5 % of an
# 8 GB card. 6 + 4.5 + 1.5 = 12 %, which is also the worst error the published runs may show
# (issue 8's target). tests/fit/test_verdict.py checks that every published run and every traced
# row lies inside the band.
BAND = 0.12

Status = Literal["fits", "tight", "does_not_fit"]


# The recipe's distributed.strategy as the estimator names it (fit-check's --parallelism).
PARALLELISM_OF_STRATEGY = {"none": "none", "ddp": "ddp", "fsdp": "fsdp", "deepspeed_zero2": "zero2",
                           "deepspeed_zero3": "zero3"}


def distribution(recipe: Recipe, num_gpus: Optional[int] = None, parallelism: Optional[str] = None,
                 visible_gpus: int = 1) -> tuple[int, str]:
    """How many GPUs share the run and how: what is given, else the recipe's distributed section.

    Args:
        recipe: the loaded recipe.
        num_gpus, parallelism: given on the command line (fit-check's --gpus, --parallelism); None
            takes the recipe's.
        visible_gpus: the count a recipe that leaves processes_per_node out gets per node.
    """
    if parallelism is None:
        parallelism = PARALLELISM_OF_STRATEGY[recipe.strategy]
    if num_gpus is None:
        num_gpus = recipe.processes if recipe.processes is not None else \
            recipe.distributed.nodes * max(visible_gpus, 1)
    return num_gpus, parallelism


def setup_for(recipe: Recipe, gpu: Optional[Gpu], num_gpus: Optional[int] = None,
              parallelism: Optional[str] = None, model_type: Optional[str] = None) -> tuple[Setup, list[str]]:
    """The estimator's view of a recipe on a GPU.

    Args:
        recipe: the loaded recipe.
        gpu: the card each process trains on (all cards alike); None for the CPU.
        num_gpus: data-parallel processes; None: the recipe's (:func:`distribution`).
        parallelism: none, ddp, fsdp, zero2 or zero3; None: the recipe's strategy.
        model_type: the model's, where known (see :func:`choose`).

    Returns:
        The setup and the notes on what "auto" became.

    Raises:
        InvalidRecipe: see :func:`choose`.
    """
    num_gpus, parallelism = distribution(recipe, num_gpus, parallelism)
    choices = choose(recipe, gpu, model_type)
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
        packing=recipe.data.packing,
        padded=not recipe.data.packing,  # packed rows are full, unpacked ones padded to the longest
        lora_dropout=lora.dropout if lora else 0.0,
        # The dtype the runner enforces on the adapters (model.enforce_dtypes), so the two agree.
        adapter_bytes=DTYPE_BYTES[choices.trainable_dtype] if lora else None,
        modules_to_save=lora.modules_to_save if lora else (),
        use_dora=lora.use_dora if lora else False,
        qat=recipe.training.qat is not None,
        liger_kernel=bool(recipe.training.liger_kernel),
        activation_offloading=recipe.training.activation_offloading,
        moe_experts=bool(quant is not None and quant.moe_experts),
        unfrozen=recipe.training.unfrozen_parameters or (),
        target_parameters=lora.target_parameters if lora else (),
        grouped_attention="repeat" if choices.gqa_repeat else "native",
        autocast=choices.autocast_dtype is not None,
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

    @property
    def band_bytes(self) -> tuple[int, int]:
        """The device figure's band (low, high): where the measured peak is expected to lie."""
        return band(self.estimate.device_bytes)


def band(need_bytes: int) -> tuple[int, int]:
    """(low, high) of an estimate: BAND below and above it, rounded outwards."""
    return math.floor(need_bytes * (1 - BAND)), math.ceil(need_bytes * (1 + BAND))


def status_of(need_bytes: int, vram_bytes: int) -> Status:
    """fits when the band's upper end fits the card, tight when only the estimate itself does,
    does_not_fit otherwise. A false "fits" costs a download and an out-of-memory crash; a false
    "tight" costs a warning, so the verdict answers for the upper end."""
    if need_bytes > vram_bytes:
        return "does_not_fit"
    return "fits" if band(need_bytes)[1] <= vram_bytes else "tight"


def judge(shape: Shape, setup: Setup, gpu: Gpu, notes: tuple[str, ...],
          expandable_segments: bool = True) -> Verdict:
    """Estimate a model shape under a setup and judge it against the card.

    Args:
        shape: the model's architecture.
        setup: the estimator's view of the recipe (:func:`setup_for`).
        gpu: the card; its compute capability sets the CUDA context and cuBLAS workspace.
        notes: carried into the verdict; a note is added when other processes hold the memory it needs.
        expandable_segments: the allocator setting the run will have (``recipe run`` sets it
            unless the user configured the allocator).

    Returns:
        The verdict.
    """
    result = estimate(shape, setup).on_card(gpu.context_bytes, gpu.workspace_bytes, expandable_segments)
    notes_now = list(notes)
    if gpu.free_bytes is not None and gpu.free_bytes < result.device_bytes <= gpu.total_bytes:
        used = (gpu.total_bytes - gpu.free_bytes) / GIB
        notes_now.append(f"{gpu.name}: other processes hold {used:.1f} GiB right now; free it before training")
    return Verdict(status_of(result.device_bytes, gpu.total_bytes), result, setup, gpu, tuple(notes_now))


def check(recipe: Recipe, gpu: Gpu, num_gpus: Optional[int] = None, parallelism: Optional[str] = None,
          expandable_segments: bool = True) -> Verdict:
    """Estimate a recipe's peak memory per GPU and compare it with the card (see :func:`judge`).

    Raises:
        InvalidRecipe: the card cannot run the recipe's settings (see :func:`choose`).
        UnknownModel: the model's shape cannot be found offline.
        UnknownTargets: a LoRA target names no linear layer of the model, or its output head.
        Both are located at their field in the recipe.
    """
    try:
        shape = recipe_shape(recipe)
    except UnknownModel as exc:
        setup_for(recipe, gpu, num_gpus, parallelism)  # what the card cannot run is said first
        raise at_its_field(exc, recipe) from None
    refuse_an_unquantized_base(recipe, shape.model_type)
    setup, notes = setup_for(recipe, gpu, num_gpus, parallelism, shape.model_type)
    try:
        return judge(shape, setup, gpu, tuple(notes), expandable_segments)
    except (UnknownModel, UnknownTargets) as exc:
        raise at_its_field(exc, recipe) from None


# Model types whose linear layers transformers' bitsandbytes integration (5.24) leaves as they are:
# Falcon's are FalconLinear, which it does not take for nn.Linear (checked on a tiny model of each
# layout fit-check reads; the run checks the loaded model itself, model.load_model).
BNB_LEAVES_UNQUANTIZED = frozenset({"falcon"})


def refuse_an_unquantized_base(recipe: Recipe, model_type: str) -> None:
    """Raises: InvalidRecipe: method qlora on a model transformers does not quantize, at $.method."""
    if recipe.method == "qlora" and model_type in BNB_LEAVES_UNQUANTIZED:
        raise unquantized_base(recipe, model_type)


def unquantized_base(recipe: Recipe, model_type: str) -> InvalidRecipe:
    """The refusal of method qlora on a model whose linear layers stay unquantized: fit-check's,
    from BNB_LEAVES_UNQUANTIZED, and the run's, from the loaded model (model.load_model)."""
    return InvalidRecipe([Problem(recipe.locate(("method",)), "$.method",
                                  f"transformers quantizes none of {model_type}'s linear layers with bitsandbytes: "
                                  "method qlora would train its 16-bit base, which peft's k-bit preparation makes fp32",
                                  "use method lora (the same base in 16 bits, without the fp32 upcast)")])


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
    shape = find_shape(model.id, model.local_path, model.architecture, model.revision)
    multiple = model.pad_vocab_to_multiple_of
    if multiple is None:
        return shape
    # recipe run pads the embedding (and head) to the tokenizer's tokens rounded up (model.pad_vocab):
    # the vocabulary rounded up is at least that, unless the tokenizer has more tokens than the model rows.
    return dataclasses.replace(shape, vocab_size=-(-shape.vocab_size // multiple) * multiple)
