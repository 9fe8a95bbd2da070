"""`recipe probe` without a GPU: a recipe's training steps traced at full size under
FakeTensorMode (probe.trace_step), replayed through the caching-allocator model
(fit.allocator), beside fit-check's estimate of the same recipe.

The trace is the recipe's run on a card: method (qlora's 4/8-bit base included), the dtypes and
autocast precision.choose decides for the card (``--gpu``; without it, DEFAULT_CARD, named in a
note), attention (flash_attention_2 as sdpa's flash kernel), optimizer, accumulation, packing and
clipping as the recipe sets them. What the trace cannot see is said in the result's notes.

Importing this module is cheap: torch, transformers, peft and trl are imported in ``measure``.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Optional

from ..errors import NotModeled, UnknownModel, UnknownTargets
from ..fit.allocator import AllocatorPeaks, AllocatorReplay, replay, simulate
from ..fit.architectures import MODEL_PATH, find_config, shape_from_config
from ..fit.estimate import CUDA_CONTEXT_BYTES, TORCHAO_STATE, Estimate, estimate
from ..fit.gpu_catalog import Gpu, card
from ..fit.precision import DTYPE_BYTES, FLASH_KERNELS, NO_SDPA, Choices, choose
from ..fit.verdict import at_its_field, refuse_an_unquantized_base, setup_for
from ..read.recipe import Recipe
from ..units import GIB

STACK = ("torch", "transformers", "peft", "trl", "bitsandbytes")
# Without --gpu the run is traced for a current data-centre card: bf16 autocast, FlashAttention 2
# allowed. Its memory size plays no part in the trace, only in the estimate's verdict.
DEFAULT_CARD = "A100 80GB"


@dataclass(frozen=True)
class PhasePeak:
    """The allocated peak of one phase, and what the allocator has reserved by its end
    (segments are never given back on a card that does not run out, so reserved only grows)."""

    name: str
    allocated_bytes: int
    reserved_fixed_bytes: int
    reserved_expandable_bytes: int


@dataclass(frozen=True)
class ProbeResult:
    """A recipe's traced training steps, the allocator replay and fit-check's estimate."""

    recipe: Recipe
    steps: int
    seconds: float  # wall time of the traced steps
    allocated_bytes: int  # the traced peak: torch.cuda.max_memory_allocated, exact for this stack
    peak_phase: str
    phases: tuple[PhasePeak, ...]
    breakdown: dict[str, int]  # what was live at the peak, by category
    allocator: AllocatorReplay
    base_params: int
    trainable_params: int
    versions: dict[str, str]
    estimate: Estimate  # fit-check's, for the same recipe on ``gpu``
    gpu: Gpu  # the card traced and estimated for (--gpu, or DEFAULT_CARD)
    notes: tuple[str, ...]
    choices: Choices  # the dtypes traced: precision.choose for ``gpu``
    paged_bytes: int = 0  # paged optimizer state, in CUDA unified memory outside the allocator
    gpu_assumed: bool = False  # no --gpu: ``gpu`` is DEFAULT_CARD

    @property
    def reserved_bytes(self) -> int:
        """Modelled max_memory_reserved with the allocator's defaults (expandable_segments off),
        which is what `recipe run` gets today."""
        return self.allocator.fixed.reserved_bytes

    @property
    def device_bytes(self) -> int:
        """What nvidia-smi would show: reserved plus the CUDA context (fit-check's constant)."""
        return self.reserved_bytes + CUDA_CONTEXT_BYTES


def _events(trace) -> list[tuple]:
    return [("alloc", e.storage, e.nbytes) if e.nbytes > 0 else ("free", e.storage) for e in trace.events]


def _phases(trace, events: list[tuple]) -> tuple[PhasePeak, ...]:
    last = {e.phase: i for i, e in enumerate(trace.events)}
    out = []
    for name, allocated in trace.phase_peaks.items():
        prefix = events[:last.get(name, -1) + 1]
        fixed: AllocatorPeaks = simulate(prefix)
        grown: AllocatorPeaks = simulate(prefix, expandable_segments=True)
        out.append(PhasePeak(name, allocated, fixed.reserved_bytes, grown.reserved_bytes))
    return tuple(out)


def _versions() -> dict[str, str]:
    found = {}
    for name in STACK:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "?"
    return found


def measure(recipe: Recipe, steps: int = 2, gpu: Optional[Gpu] = None, run=None) -> ProbeResult:
    """Trace ``steps`` training steps of the recipe at full size under FakeTensorMode.

    Args:
        recipe: the loaded recipe.
        steps: optimizer steps; the second is the steady state (optimizer state live throughout).
        gpu: the card the run is traced and estimated for; None: DEFAULT_CARD, said in a note.
        run: what runs the steps, called with probe.trace_step's arguments; None: trace_step
            (gpuprobe.py passes one that measures on a GPU).

    Returns:
        The result.

    Raises:
        UnknownModel: no config.json offline, or a model_type transformers does not know.
        UnknownTargets: LoRA targets that name no linear layer.
        InvalidRecipe: the card cannot run the recipe (fit-check's rule).
    """
    assumed = gpu is None
    gpu = card(DEFAULT_CARD) if assumed else gpu
    model = recipe.model
    try:
        config = find_config(model.id, model.local_path, model.architecture, model.revision)
        shape = shape_from_config(config)
        refuse_an_unquantized_base(recipe, shape.model_type)
        setup, notes = setup_for(recipe, gpu, model_type=shape.model_type)
        choices = choose(recipe, gpu, shape.model_type)
        if recipe.training.optimizer in TORCHAO_STATE:
            # Tried: under fake tensors its step stops at a value it reads (_local_scalar_dense); with real
            # tensors torch.compile refuses to run under the recorder's dispatch mode.
            raise NotModeled(f"the probe cannot trace {recipe.training.optimizer}: torchao compiles its step with "
                             "torch.compile, which runs neither on fake tensors nor under the probe's recording",
                             hint="estimate it with `recipe fit-check`, or "
                             "probe it with optimizer adamw_8bit (the same 2 bytes a weight for adamw_torch_8bit)",
                             path="$.training.optimizer")
        if choices.attention in FLASH_KERNELS and shape.model_type in NO_SDPA:
            # traced as sdpa's flash kernel (same tensors kept), which transformers refuses this model
            raise NotModeled(f"the probe traces {choices.attention} as sdpa's flash kernel, which transformers does "
                             f"not run for {shape.model_type}", hint="estimate it with `recipe fit-check`, or probe "
                             "it with training.attention: eager", path="$.training.attention")
        fit_estimate = estimate(shape, setup)
        trace = _trace(recipe, config, steps, choices, run)
    except (UnknownModel, UnknownTargets, NotModeled) as exc:
        raise at_its_field(exc, recipe) from None
    events = _events(trace)
    from .memtrace import ADAPTERS, WEIGHTS

    trainable = trace.breakdown[WEIGHTS if recipe.method == "full" else ADAPTERS] // DTYPE_BYTES[choices.trainable_dtype]
    return ProbeResult(recipe=recipe, steps=steps, seconds=trace.seconds, allocated_bytes=trace.peak_bytes,
                       peak_phase=trace.peak_phase, phases=_phases(trace, events), breakdown=dict(trace.breakdown),
                       allocator=replay(events), base_params=shape.param_count(), trainable_params=trainable,
                       versions=_versions(), estimate=fit_estimate, gpu=gpu,
                       notes=tuple(_notes(recipe, choices, gpu, assumed, trace.paged_bytes, notes)),
                       choices=choices, paged_bytes=trace.paged_bytes, gpu_assumed=assumed)


def _notes(recipe: Recipe, choices: Choices, gpu: Gpu, assumed: bool, paged_bytes: int, notes) -> list[str]:
    """What the reader must know about what was traced, beyond fit-check's notes."""
    out = list(notes)
    if assumed:
        out.insert(0, f"no --gpu: traced and estimated as on an {gpu.name} ({choices.precision}); "
                      "name your card with --gpu")
    if choices.attention in FLASH_KERNELS:
        out.append(f"{choices.attention} is traced as sdpa's flash kernel, which keeps the same tensors for backward"
                   + ("; the packed rows side by side, as it runs their sequences (sdpa would take a mask over the "
                      "whole row)" if recipe.data.packing else ""))
    if paged_bytes:
        out.append(f"{recipe.training.optimizer} keeps {paged_bytes / GIB:.2f} GiB of optimizer state in CUDA "
                   "unified memory, outside PyTorch's allocator: not in allocated or reserved; it takes device "
                   "memory while there is room and moves to host RAM when there is not")
    quant = recipe.quantization
    if quant is not None and quant.bits == 8:
        out.append("LLM.int8 outlier columns (threshold 6.0) depend on the activations and are traced as none")
    return out


def _trace(recipe: Recipe, config: dict, steps: int, choices: Choices, run=None):
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type", "llama")
    if model_type not in CONFIG_MAPPING:
        raise UnknownModel(f"transformers {metadata.version('transformers')} has no model_type {model_type!r} "
                           "(models with their own code are not probed)", "estimate it with `recipe fit-check`",
                           path=MODEL_PATH)
    if run is None:
        from .probe import trace_step as run

    lora, training, quant = recipe.lora, recipe.training, recipe.quantization
    four_bit = quant is not None and quant.bits == 4
    return run(
        config, method=recipe.method, steps=steps, fake=True, choices=choices,
        lora_r=lora.r if lora else 16, lora_alpha=lora.alpha if lora else None,
        lora_dropout=lora.dropout if lora else 0.0, targets=lora.target_modules if lora else "all-linear",
        seq_len=recipe.data.max_seq_length, micro_batch=training.micro_batch_size,
        gradient_checkpointing=training.gradient_checkpointing, attention=choices.attention,
        optimizer=training.optimizer, bits=quant.bits if quant else 4,
        quant_type=quant.type if four_bit else "nf4", double_quant=bool(four_bit and quant.double_quant),
        gradient_accumulation_steps=training.gradient_accumulation_steps, packing=recipe.data.packing,
        max_grad_norm=training.max_grad_norm, weight_decay=training.weight_decay,
        unfrozen=training.unfrozen_parameters or (), moe_experts=bool(quant and quant.moe_experts),
        target_parameters=lora.target_parameters if lora else (), gqa_repeat=choices.gqa_repeat)
