"""Whether a recipe can train on this machine's CPU, where there is no card to check it against:
its memory estimate against the RAM, and a model size beyond which CPU training takes days.

Pure like the rest of fit/: the RAM arrives as a number. ``host_memory_bytes`` is the one
function that asks the operating system, as hardware.py is the one that asks the GPU driver.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..errors import UnknownModel, UnknownTargets
from ..read.recipe import Recipe
from ..units import GIB
from .estimate import estimate
from .verdict import at_its_field, recipe_shape, setup_for

# Training costs about 6 FLOPs per parameter per token (forward and backward). A CPU sustains
# some 10^11 FLOP/s in fp32 (far less through bitsandbytes' 4-bit CPU kernels), so a model of
# 2 billion parameters trains at under 10 tokens/s: a short fine-tune (1,000 steps of 4 x 512
# tokens) takes three days. Larger models are refused on the CPU even when they fit the RAM;
# the shipped 1.1B recipe stays allowed, the tiny demo trains in seconds.
CPU_MAX_PARAMS = 2_000_000_000


@dataclass(frozen=True)
class CpuVerdict:
    """Whether a recipe trains on the CPU, and why not."""

    params: int  # the base model's parameters
    need_bytes: int  # live tensors at the training peak, fp32 as the CPU computes
    ram_bytes: Optional[int]  # None when the RAM could not be read: not compared then
    reasons: tuple[str, ...]  # empty when it can train

    @property
    def fits(self) -> bool:
        return not self.reasons


def check_cpu(recipe: Recipe, ram_bytes: Optional[int]) -> CpuVerdict:
    """Judge a recipe for training on the CPU.

    Args:
        recipe: the loaded recipe.
        ram_bytes: this machine's memory (``host_memory_bytes``); None skips the memory rule.

    Returns:
        The verdict, with one reason per rule broken: the model is over ``CPU_MAX_PARAMS``, or
        its training peak exceeds the RAM.

    Raises:
        UnknownModel: the model's shape cannot be found offline.
        UnknownTargets: a LoRA target matches no layer of the model.
    """
    shape = recipe_shape(recipe)
    # no GPU: fp16/bf16 run as fp32, as the runner loads them
    setup, _ = setup_for(recipe, None, model_type=shape.model_type)
    try:  # No CUDA context and no caching allocator on the CPU: the live tensors are the need.
        need = estimate(shape, setup).allocated_bytes
    except (UnknownModel, UnknownTargets) as exc:
        raise at_its_field(exc, recipe) from None
    params = shape.param_count()
    reasons = []
    if params > CPU_MAX_PARAMS:
        reasons.append(f"{recipe.model.id} has {params / 1e9:.1f}B parameters, over the "
                       f"{CPU_MAX_PARAMS / 1e9:.0f}B that train on a CPU in reasonable time "
                       "(under 10 tokens/s: days for a short fine-tune)")
    if ram_bytes is not None and need > ram_bytes:
        reasons.append(f"training needs ~{need / GIB:.1f} GiB (fp32 on the CPU), "
                       f"more than this machine's {ram_bytes / GIB:.1f} GiB of RAM")
    return CpuVerdict(params, need, ram_bytes, tuple(reasons))


def host_memory_bytes() -> Optional[int]:
    """This machine's physical memory; None where the system does not say (no sysconf)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
