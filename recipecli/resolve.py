"""From a recipe and a GPU to a verdict: the settings "auto" becomes, the rules the card imposes,
and whether the estimate fits. The smallest change that makes it fit is suggest.py's.

Pure: the GPU arrives as data (``hardware.Gpu``), nothing here asks CUDA or imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal, Optional

from . import load
from .architectures import CATALOG, Shape, find_shape
from .errors import InvalidRecipe, Location, Problem
from .estimate import Estimate, Setup, estimate
from .hardware import GIB, Gpu
from .paths import RECIPES_DIR
from .recipe import Recipe
from .yamlload import json_path

# benchmarks/calibration.py finds estimates within ~6 % of published peaks of this stack (few
# rows, so twice that is kept as margin): a run needing more than 90 % of the card may or may
# not hit out-of-memory. It is reported as tight, still a fit (exit code 0).
TIGHT_FRACTION = 0.90

Status = Literal["fits", "tight", "does_not_fit"]
Locate = Callable[[tuple, bool], Location]
DtypeName = Literal["float16", "bfloat16", "float32"]  # torch's names: getattr(torch, name)
DTYPE_OF: dict[str, DtypeName] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class Choices:
    """What the recipe's "auto" settings become on a GPU, and the dtypes the run uses for them."""

    precision: Literal["bf16", "fp16", "fp32"]
    attention: Literal["eager", "sdpa", "flash_attention_2"]
    compute_dtype: Optional[DtypeName]  # bitsandbytes' compute dtype: quantized bases only
    notes: tuple[str, ...]
    # fp16 mixed precision unscales fp32 gradients: a full fine-tune under it keeps fp32 weights.
    fp32_weights: bool = False

    @property
    def weight_dtype(self) -> DtypeName:
        """What the base model is loaded in (model.load_model), as the estimate counts it."""
        if self.compute_dtype is not None:  # the 16-bit leftovers of a quantized base compute in it
            return self.compute_dtype
        return "float32" if self.fp32_weights else DTYPE_OF[self.precision]

    @property
    def matmul_dtype(self) -> DtypeName:
        """What matmuls compute in: bitsandbytes' compute dtype, else the training precision."""
        return self.compute_dtype or DTYPE_OF[self.precision]


def choose(recipe: Recipe, gpu: Optional[Gpu], locate: Optional[Locate] = None) -> Choices:
    """Resolve precision, attention and the 4-bit compute dtype for a GPU, checking what it supports.

    Args:
        recipe: the loaded recipe.
        gpu: the card; None trains on the CPU. A card with unknown compute capability (``--vram``)
            is not checked: bf16 and fp16 need the same memory, so the estimate does not depend on it.
        locate: where recipe values were written (``load.Resolved.locate``), for precise problems.

    Returns:
        The resolved settings with a note for every choice a user might not expect. Without a GPU,
        fp16/bf16 precision and compute dtype run as fp32.

    Raises:
        InvalidRecipe: the recipe asks for something the card cannot do (bf16 or FlashAttention 2
            below compute capability 8.0, FlashAttention 2 without a GPU); each problem names the knob
            to change.
    """
    training = recipe.training
    problems: list[Problem] = []
    notes: list[str] = []

    def problem(path: tuple, message: str, hint: str) -> None:
        where = locate(path, False) if locate else Location(str(recipe.source), 1, 1)
        problems.append(Problem(where, json_path(path), message, hint))

    cc_known = gpu is not None and gpu.compute_capability is not None
    label = "no GPU" if gpu is None else f"{gpu.name} (CC {gpu.capability_text})"
    if gpu is not None and not cc_known:
        # fp16 is the larger estimate (full fine-tuning keeps fp32 weights under it), so a card
        # of unknown generation is taken to be pre-Ampere.
        auto = "; precision auto counted as fp16" if training.precision == "auto" else ""
        notes.append(f"{gpu.name}: compute capability unknown, so bf16/FlashAttention 2 support is not "
                     f"checked{auto} (name the card with --gpu to check it)")

    precision = training.precision
    if gpu is None:
        # The CPU has no fp16/bf16 mixed precision worth having; a recipe written for a GPU still runs.
        if precision == "auto":
            notes.append("no GPU: precision auto -> fp32")
        elif precision != "fp32":
            notes.append(f"no GPU: precision {precision} runs as fp32 on the CPU")
        precision = "fp32"
    elif precision == "auto":
        if not cc_known:
            precision = "fp16"
        elif not gpu.supports_bf16:
            precision = "fp16"
            notes.append(f"{label} has no bf16: precision auto -> fp16")
        else:
            precision = "bf16"
    elif precision == "bf16" and cc_known and not gpu.supports_bf16:
        problem(("training", "precision"), f"bf16 needs compute capability >= 8.0; {label} lacks it",
                "set training.precision to auto or fp16")

    attention = "sdpa" if training.attention == "auto" else training.attention
    if attention == "flash_attention_2" and (gpu is None or (cc_known and not gpu.supports_flash_attention_2)):
        lacking = " (an NVIDIA GPU); there is no GPU here" if gpu is None else f"; {label} lacks it"
        problem(("training", "attention"), f"flash_attention_2 needs compute capability >= 8.0{lacking}",
                "set training.attention to auto (sdpa: same memory, slightly slower)")

    compute_dtype = None
    if recipe.quantization is not None:
        compute_dtype = recipe.quantization.compute_dtype
        if compute_dtype == "auto":
            compute_dtype = DTYPE_OF[precision]
        elif gpu is None and compute_dtype != "float32":
            notes.append(f"no GPU: quantization.compute_dtype {compute_dtype} runs as float32 on the CPU")
            compute_dtype = "float32"
        elif compute_dtype == "bfloat16" and cc_known and not gpu.supports_bf16:
            problem(("quantization", "compute_dtype"), f"bfloat16 needs compute capability >= 8.0; {label} lacks it",
                    "set quantization.compute_dtype to auto (follows training.precision)")

    if problems:
        raise InvalidRecipe(problems)
    return Choices(precision, attention, compute_dtype, tuple(notes),
                   fp32_weights=recipe.method == "full" and precision == "fp16")


def setup_for(recipe: Recipe, gpu: Optional[Gpu], num_gpus: int = 1, parallelism: str = "none",
              locate: Optional[Locate] = None) -> tuple[Setup, list[str]]:
    """The estimator's view of a recipe on a GPU.

    Args:
        recipe: the loaded recipe.
        gpu: the card each process trains on (all cards alike); None for the CPU.
        num_gpus: data-parallel processes.
        parallelism: none, ddp, fsdp, zero2 or zero3.
        locate: see :func:`choose`.

    Returns:
        The setup and the notes on what "auto" became.

    Raises:
        InvalidRecipe: see :func:`choose`.
    """
    choices = choose(recipe, gpu, locate)
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
        return self.vram_bytes - self.estimate.total_bytes

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
    if gpu.free_bytes is not None and gpu.free_bytes < result.total_bytes <= gpu.total_bytes:
        used = (gpu.total_bytes - gpu.free_bytes) / GIB
        notes_now.append(f"{gpu.name}: other processes hold {used:.1f} GiB right now; free it before training")
    return Verdict(status_of(result.total_bytes, gpu.total_bytes), result, setup, gpu, tuple(notes_now))


def check(recipe: Recipe, gpu: Gpu, num_gpus: int = 1, parallelism: str = "none",
          locate: Optional[Locate] = None) -> Verdict:
    """Estimate a recipe's peak memory per GPU and compare it with the card.

    Raises:
        InvalidRecipe: the card cannot run the recipe's settings (see :func:`choose`).
        UnknownModel: the model's shape cannot be found offline.
    """
    setup, notes = setup_for(recipe, gpu, num_gpus, parallelism, locate)
    return judge(recipe_shape(recipe), setup, gpu, tuple(notes))


def recipe_shape(recipe: Recipe) -> Shape:
    """The architecture of the recipe's model.

    Raises:
        UnknownModel: it cannot be found offline.
    """
    model = recipe.model
    return find_shape(model.id, model.local_path, model.architecture, model.revision)


# What `recipe gpu` calls a standard QLoRA run: the shipped base the 8 GB recipes extend.
STANDARD_QLORA_BASE = RECIPES_DIR / "base" / "qlora-8gb.yaml"


@lru_cache(maxsize=1)
def standard_qlora() -> Recipe:
    """recipes/base/qlora-8gb.yaml with the schema's defaults, as the recipes extending it get them.

    The base names no model and no name, which a Recipe needs; the largest-model search below
    judges each catalog shape under it, so the model written here is never looked up.
    """
    resolved = load.resolve(STANDARD_QLORA_BASE, ["name=standard-qlora", "model.id=catalog/any"])
    return load.to_recipe(resolved.with_defaults(), resolved)


def largest_qlora_model(gpu: Gpu) -> Optional[tuple[str, Verdict]]:
    """The largest model of the architecture catalog that a standard QLoRA run fits on a GPU.

    Returns:
        (hub id, verdict) of the model with the most parameters that fits, or None when none does.
    """
    setup, notes = setup_for(standard_qlora(), gpu)
    families: dict[Shape, str] = {}
    for model_id, shape in CATALOG.items():
        families.setdefault(shape, model_id)  # one hub id per shape: the first one listed
    for shape, model_id in sorted(families.items(), key=lambda item: -item[0].param_count()):
        verdict = judge(shape, setup, gpu, tuple(notes))
        if verdict.fits:
            return model_id, verdict
    return None
