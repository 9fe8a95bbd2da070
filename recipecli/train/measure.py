"""`recipe probe` without a GPU: a recipe's training steps traced at full size under
FakeTensorMode (probe.trace_step), replayed through the caching-allocator model
(fit.allocator), beside fit-check's estimate of the same recipe.

What is traced is what probe.py supports today: lora or full on an fp32 base, no autocast,
sdpa or eager attention, adamw_torch or sgd. Anything else is refused before torch is imported,
located at the recipe field that asks for it, rather than traced as something else.

Importing this module is cheap: torch, transformers, peft and trl are imported in ``measure``.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Optional

from ..errors import Location, UnknownModel, UnknownTargets, UsageError
from ..fit.allocator import AllocatorPeaks, AllocatorReplay, replay, simulate
from ..fit.architectures import MODEL_PATH, find_config, shape_from_config
from ..fit.estimate import CUDA_CONTEXT_BYTES, Estimate, estimate
from ..fit.gpu_catalog import Gpu
from ..fit.verdict import at_its_field, setup_for
from ..read.recipe import Recipe

TRACED_ATTENTION = ("sdpa", "eager")
TRACED_OPTIMIZERS = ("adamw_torch", "sgd")  # probe.OPTIMIZERS, named here to stay torch-free
STACK = ("torch", "transformers", "peft", "trl")
FP32_BYTES = 4  # every traced parameter is fp32


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
    gpu: Optional[Gpu]  # None: the estimate is the card-less one (fp32, as traced)
    notes: tuple[str, ...]

    @property
    def reserved_bytes(self) -> int:
        """Modelled max_memory_reserved with the allocator's defaults (expandable_segments off),
        which is what `recipe run` gets today."""
        return self.allocator.fixed.reserved_bytes

    @property
    def device_bytes(self) -> int:
        """What nvidia-smi would show: reserved plus the CUDA context (fit-check's constant)."""
        return self.reserved_bytes + CUDA_CONTEXT_BYTES


def refusal(recipe: Recipe) -> Optional[UsageError]:
    """Why the recipe cannot be traced yet, or None.

    A usage error (exit 2): the recipe is valid and nothing failed; this command cannot yet do
    what it asks, and fit-check can.
    """
    def where(*path: str) -> Location:
        return recipe.locate(path)

    training = recipe.training
    if recipe.method == "qlora":
        return UsageError("probe cannot trace a qlora recipe yet: 4-bit/8-bit bitsandbytes bases are not "
                          "supported under fake tensors", "estimate it with `recipe fit-check`, or probe the "
                          "same recipe as lora (--set method=lora) for its 16-bit-base figure",
                          where("method"), "$.method")
    if training.attention not in (*TRACED_ATTENTION, "auto"):
        return UsageError(f"probe traces sdpa or eager attention, not {training.attention}",
                          "--set training.attention=sdpa (its flash kernel keeps the same tensors for backward)",
                          where("training", "attention"), "$.training.attention")
    if training.optimizer not in TRACED_OPTIMIZERS:
        return UsageError(f"probe traces {' or '.join(TRACED_OPTIMIZERS)}, not {training.optimizer}",
                          "estimate it with `recipe fit-check`, or probe with --set training.optimizer=adamw_torch",
                          where("training", "optimizer"), "$.training.optimizer")
    return None


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


def measure(recipe: Recipe, steps: int = 2, gpu: Optional[Gpu] = None) -> ProbeResult:
    """Trace ``steps`` training steps of the recipe at full size under FakeTensorMode.

    Args:
        recipe: the loaded recipe.
        steps: optimizer steps; the second is the steady state (optimizer state live throughout).
        gpu: the card fit-check's estimate is made for; None for the card-less estimate, which
            counts fp32 without autocast as the trace runs.

    Returns:
        The result.

    Raises:
        UsageError: a setting the trace does not support yet (see :func:`refusal`).
        UnknownModel: no config.json offline, or a model_type transformers does not know.
        UnknownTargets: LoRA targets that name no linear layer.
        InvalidRecipe: the card cannot run the recipe (fit-check's rule, with --gpu).
    """
    refused = refusal(recipe)
    if refused is not None:
        raise refused
    model = recipe.model
    try:
        config = find_config(model.id, model.local_path, model.architecture, model.revision)
        shape = shape_from_config(config)
        setup, notes = setup_for(recipe, gpu)
        fit_estimate = estimate(shape, setup)
        trace = _trace(recipe, config, steps)
    except (UnknownModel, UnknownTargets) as exc:
        raise at_its_field(exc, recipe) from None
    events = _events(trace)
    if recipe.training.precision not in ("fp32", "auto"):
        notes = [*notes, f"training.precision {recipe.training.precision} is traced as fp32 (no autocast yet)"]
    from .memtrace import ADAPTERS, WEIGHTS

    trainable = trace.breakdown[ADAPTERS if recipe.method == "lora" else WEIGHTS] // FP32_BYTES
    return ProbeResult(recipe=recipe, steps=steps, seconds=trace.seconds, allocated_bytes=trace.peak_bytes,
                       peak_phase=trace.peak_phase, phases=_phases(trace, events), breakdown=dict(trace.breakdown),
                       allocator=replay(events), base_params=shape.param_count(), trainable_params=trainable,
                       versions=_versions(), estimate=fit_estimate, gpu=gpu, notes=tuple(notes))


def _trace(recipe: Recipe, config: dict, steps: int):
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type", "llama")
    if model_type not in CONFIG_MAPPING:
        raise UnknownModel(f"transformers {metadata.version('transformers')} has no model_type {model_type!r} "
                           "(models with their own code are not probed)", "estimate it with `recipe fit-check`",
                           path=MODEL_PATH)
    from .probe import trace_step

    lora, training = recipe.lora, recipe.training
    return trace_step(
        config, method=recipe.method, steps=steps, fake=True,
        lora_r=lora.r if lora else 16, lora_alpha=lora.alpha if lora else None,
        lora_dropout=lora.dropout if lora else 0.0, targets=lora.target_modules if lora else "all-linear",
        seq_len=recipe.data.max_seq_length, micro_batch=training.micro_batch_size,
        gradient_checkpointing=training.gradient_checkpointing,
        attention="sdpa" if training.attention == "auto" else training.attention,
        optimizer=training.optimizer)
