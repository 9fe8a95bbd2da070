"""The checks before a run trains anything: does the recipe fit the GPU that will train it, or,
without one, can this machine's CPU train it at all. Both answer before a model is downloaded:
the estimate needs only the model's shape (fit/), never its weights.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..errors import DoesNotFit, UnknownModel
from ..fit import cpu
from ..fit.gpu_catalog import Gpu
from ..fit.suggest import suggest
from ..fit.verdict import check as check_fit
from ..read.recipe import Recipe
from ..units import GIB
from .model import say


def refuse_unless_fits(recipe: Recipe, gpu: Optional[Gpu], force: bool,
                       expandable_segments: bool = True) -> Optional[dict]:
    """The fit estimate as a dict for estimate.json; DoesNotFit when it exceeds the GPU, a
    warning when only the estimate fits, not the upper end of its band (tight).

    Without a GPU (None) there is no card to exceed: refuse_unless_cpu_trains judges the CPU.
    ``expandable_segments`` is the allocator setting the run will have.

    Raises:
        DoesNotFit: the estimate exceeds the card and force is off; the breakdown and the change
            that would fit are in the message.
    """
    if gpu is None:
        return None
    try:
        verdict = check_fit(recipe, gpu, expandable_segments=expandable_segments)
    except UnknownModel as e:  # the download will tell; a missing estimate is no reason not to train
        say(f"note: no memory estimate ({e.message}); training without a fit check")
        return None
    need = verdict.estimate.device_bytes
    if not verdict.fits and not force:
        from ..report.fit import format_suggestion, format_verdict  # what `recipe fit-check -v` prints

        fix = format_suggestion(recipe, verdict, suggest(recipe, gpu))
        raise DoesNotFit(f"{format_verdict(recipe, verdict)}\n{fix}", "--force trains anyway")
    low, high = verdict.band_bytes
    band = f"{need / GIB:.1f} GiB, {low / GIB:.1f}–{high / GIB:.1f} GiB with its error band"
    if not verdict.fits:
        say(f"warning: --force: the estimate ({band}) exceeds {gpu.name} "
            f"({gpu.total_bytes / GIB:.1f} GiB); expect CUDA out of memory")
    elif verdict.status == "tight":
        say(f"warning: tight: the estimate ({band}) fits {gpu.name} ({gpu.total_bytes / GIB:.1f} GiB) but "
            f"the upper end of its band does not; the run may run out of memory "
            f"(`recipe fit-check {recipe.source} -v` shows the change that fits with margin)")
    estimate = verdict.estimate
    return {"gpu": gpu.name, "vram_bytes": gpu.total_bytes, "status": verdict.status,
            "allocated_bytes": estimate.allocated_bytes, "reserved_bytes": estimate.reserved_bytes,
            "device_bytes": need, "device_bytes_low": low, "device_bytes_high": high,
            **dataclasses.asdict(estimate)}


def refuse_unless_cpu_trains(recipe: Recipe, ram_bytes: Optional[int], force: bool) -> None:
    """Without a GPU: refuse a model too large to train on a CPU, or for this machine's RAM.

    Args:
        recipe: the loaded recipe.
        ram_bytes: this machine's memory (``cpu.host_memory_bytes``); None skips the RAM rule.
        force: warn instead of refusing.

    Raises:
        DoesNotFit: a rule of ``cpu.check_cpu`` is broken and force is off; every reason is named.
    """
    try:
        verdict = cpu.check_cpu(recipe, ram_bytes)
    except UnknownModel as e:
        say(f"note: no memory estimate ({e.message}); training on the CPU without a check")
        return
    if verdict.fits:
        return
    reasons = "; ".join(verdict.reasons)
    if force:
        say(f"warning: --force: training on the CPU although {reasons}")
        return
    ram = f"; this machine has {verdict.ram_bytes / GIB:.1f} GiB of RAM" if verdict.ram_bytes is not None else ""
    raise DoesNotFit(f"no GPU here, and the CPU cannot train this recipe: {reasons} (estimate: "
                     f"{verdict.need_bytes / GIB:.1f} GiB to train computing in fp32{ram})",
                     f"train on a GPU (`recipe fit-check {recipe.source} --gpu NAME` shows which card fits), "
                     f"or choose a model under {cpu.CPU_MAX_PARAMS / 1e9:.0f}B parameters; --force trains here anyway",
                     where=str(recipe.source))
