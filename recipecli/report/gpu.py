"""What `recipe gpu` prints for a card: memory, capabilities, which shipped recipes fit, and the
largest model of the catalog that a standard QLoRA run fits (judged under the shipped base recipe).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

from ..fit.architectures import CATALOG, Shape
from ..fit.gpu_catalog import Gpu
from ..fit.verdict import Verdict, judge, setup_for
from ..read import load
from ..read.recipe import Recipe, targets_text
from ..shipped import RECIPES_DIR
from .fit import Row, estimate_text, gpu_line, params, recipe_of, verdict_text

# What `recipe gpu` calls a standard QLoRA run: the shipped base the 8 GB recipes extend.
STANDARD_QLORA_BASE = RECIPES_DIR / "base" / "qlora-8gb.yaml"


@lru_cache(maxsize=1)
def standard_qlora() -> Recipe:
    """recipes/base/qlora-8gb.yaml with the schema's defaults, as the recipes extending it get them.

    The base names no model and no name, which a Recipe needs; the largest-model search below
    judges each catalog shape under it, so the model written here is never looked up.
    """
    resolved = load.resolve(STANDARD_QLORA_BASE, ["abstract=false", "name=standard-qlora", "model.id=catalog/any"])
    return recipe_of(resolved)


def largest_qlora_model(gpu: Gpu) -> Optional[tuple[str, Verdict]]:
    """The largest model of the architecture catalog that a standard QLoRA run fits on a GPU.

    Returns:
        (hub id, verdict) of the model with the most parameters that fits, or None when none does.
    """
    setup, notes = setup_for(standard_qlora(), gpu)
    families: dict[Shape, str] = {}
    for model_id, shape in CATALOG.items():
        if not shape.experts:  # the standard base's all-linear adapters with dropout: peft refuses them on experts
            families.setdefault(shape, model_id)  # one hub id per shape: the first one listed
    for shape, model_id in sorted(families.items(), key=lambda item: -item[0].param_count()):
        verdict = judge(shape, setup, gpu, tuple(notes))
        if verdict.fits:
            return model_id, verdict
    return None


def format_gpu(gpu: Gpu, rows: Sequence[Row], largest: Optional[tuple[str, Verdict]]) -> str:
    """`recipe gpu` for one card: memory, capabilities, shipped recipes that fit, largest QLoRA model."""
    yes_no = {True: "yes", False: "no", None: "unknown"}
    index = f"GPU {gpu.index}: " if gpu.index is not None else ""
    driver = f", driver {gpu.driver}" if gpu.driver else ""
    lines = [f"{index}{gpu_line(gpu)}{driver}",
             f"  bf16: {yes_no[gpu.supports_bf16]}" + (" (precision auto uses fp16)" if gpu.supports_bf16 is False else "")
             + f"   FlashAttention 2: {yes_no[gpu.supports_flash_attention_2]}"
             + (" (attention auto uses sdpa)" if gpu.supports_flash_attention_2 is False else "")]
    by_status = {status: [r.recipe.name for r in rows if r.verdict.status == status]
                 for status in ("fits", "tight", "does_not_fit")}
    lines.append(f"  shipped recipes that fit: {', '.join(by_status['fits']) or 'none'}")
    if by_status["tight"]:  # the estimate fits, the upper end of its band does not
        lines.append(f"  tight (may run out of memory): {', '.join(by_status['tight'])}")
    if by_status["does_not_fit"]:
        lines.append(f"  do not fit: {', '.join(by_status['does_not_fit'])}")
    if largest is None:
        lines.append(f"  largest model for QLoRA: none of the catalog fits ({_standard_qlora_text()})")
    else:
        model, verdict = largest
        lines.append(f"  largest model for QLoRA: {model} ({params(verdict.estimate.base_params)} params, "
                     f"{estimate_text(verdict)}, {verdict_text(verdict)}; {_standard_qlora_text()})")
    return "\n".join(lines)


def _standard_qlora_text() -> str:
    """The settings the largest QLoRA model is judged under, read from the base they come from."""
    recipe = standard_qlora()
    quant, lora, training = recipe.quantization, recipe.lora, recipe.training
    targets = targets_text(lora.target_modules)
    base = STANDARD_QLORA_BASE
    return (f"QLoRA of {base.parent.name}/{base.name}: {quant.bits}-bit {quant.type.upper()}, r {lora.r} on "
            f"{targets}, {recipe.data.max_seq_length} tokens, micro-batch {training.micro_batch_size}, "
            f"{training.optimizer}")
