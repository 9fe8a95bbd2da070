"""What `recipe probe` prints: a traced result (train.measure.ProbeResult) as a table or as a
JSON-ready dict. Plain functions; nothing here traces, estimates or imports torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..fit.estimate import CUDA_CONTEXT_BYTES
from ..units import GIB, MIB
from .fit import params

if TYPE_CHECKING:  # the type only: report never imports train at run time
    from ..train.measure import ProbeResult

PHASE_LABELS = {"load": "after load", "forward": "forward", "backward": "backward", "optimizer": "optimizer step"}


def size(n: float) -> str:
    """Bytes for people, in GiB from 1 GiB up and in MiB below (tiny models)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.2f} MiB"


def provenance(result: ProbeResult) -> str:
    """The one line that says what was measured and what was modelled."""
    v = result.versions
    return (f"traced on the CPU: allocated peak exact for transformers {v['transformers']} / peft {v['peft']} / "
            f"trl {v['trl']} (torch {v['torch']}; fp32, no autocast); reserved and device modelled")


def _estimate_label(result: ProbeResult) -> str:
    return f"fit-check ({result.gpu.name})" if result.gpu is not None else "fit-check (no GPU: fp32)"


def _setup(result: ProbeResult) -> str:
    r = result.recipe
    t = r.training
    adapters = ""
    if r.lora is not None:
        targets = r.lora.target_modules if isinstance(r.lora.target_modules, str) else ",".join(r.lora.target_modules)
        adapters = f" r{r.lora.r} {targets}"
    attention = "sdpa" if t.attention == "auto" else t.attention
    return (f"{r.method}{adapters}, {t.micro_batch_size} x {r.data.max_seq_length} tokens, checkpointing "
            f"{'on' if t.gradient_checkpointing else 'off'}, {attention}, {t.optimizer}")


def probe_text(result: ProbeResult, file: str) -> str:
    """The table for people: peaks beside fit-check's estimate, phases, the peak's breakdown."""
    est, alloc = result.estimate, result.allocator
    steps = f"{result.steps} step{'s' if result.steps > 1 else ''}"
    lines = [f"{result.recipe.name} ({file}): {_setup(result)}; {steps} traced in {result.seconds:.1f} s",
             provenance(result), "",
             f"  {'':<22}{'traced':>12}  {_estimate_label(result)}",
             f"  {'allocated':<22}{size(result.allocated_bytes):>12}  {size(est.allocated_bytes)}",
             f"  {'reserved':<22}{size(result.reserved_bytes):>12}  {size(est.reserved_bytes)}",
             f"  {'device (nvidia-smi)':<22}{size(result.device_bytes):>12}  {size(est.device_bytes)}",
             f"  reserved with expandable_segments:True: {size(alloc.expandable.reserved_bytes)} "
             f"({'lower' if alloc.expandable_is_lower else 'not lower'}); device = reserved + CUDA context "
             f"{size(CUDA_CONTEXT_BYTES)}", "",
             f"  {'phase':<22}{'allocated':>12}{'reserved':>12}{'expandable':>12}"]
    for p in result.phases:
        lines.append(f"  {PHASE_LABELS.get(p.name, p.name):<22}{size(p.allocated_bytes):>12}"
                     f"{size(p.reserved_fixed_bytes):>12}{size(p.reserved_expandable_bytes):>12}")
    lines += ["", f"  at the peak ({PHASE_LABELS.get(result.peak_phase, result.peak_phase)}):"]
    lines += [f"  {name:<22}{size(n):>12}" for name, n in result.breakdown.items() if n]
    lines += ["", f"  parameters: base {params(result.base_params)}, trainable {params(result.trainable_params)}"]
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def probe_json(result: ProbeResult, file: str) -> dict:
    """The same figures for tools; byte counts are ints, keys as fit-check's JSON names them."""
    est, alloc = result.estimate, result.allocator
    return {
        "file": file, "name": result.recipe.name, "model": result.recipe.model.id, "steps": result.steps,
        "seconds": round(result.seconds, 3), "traced_on": "cpu", "fake_tensors": True, "precision": "fp32",
        "autocast": False, "versions": result.versions, "provenance": provenance(result),
        "allocated_bytes": result.allocated_bytes, "reserved_bytes": result.reserved_bytes,
        "device_bytes": result.device_bytes, "base_params": result.base_params,
        "trainable_params": result.trainable_params, "cuda_context_bytes": CUDA_CONTEXT_BYTES,
        "reserved_expandable_bytes": alloc.expandable.reserved_bytes,
        "expandable_segments_lower": alloc.expandable_is_lower,
        "peak_phase": result.peak_phase,
        "phases": {p.name: {"allocated_bytes": p.allocated_bytes, "reserved_bytes": p.reserved_fixed_bytes,
                            "reserved_expandable_bytes": p.reserved_expandable_bytes} for p in result.phases},
        "categories": dict(result.breakdown),
        "estimate": {"gpu": result.gpu.name if result.gpu is not None else None,
                     "allocated_bytes": est.allocated_bytes, "reserved_bytes": est.reserved_bytes,
                     "device_bytes": est.device_bytes, "base_params": est.base_params,
                     "trainable_params": est.trainable_params},
        "notes": list(result.notes),
    }
