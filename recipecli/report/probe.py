"""What `recipe probe` prints: a traced result (train.measure.ProbeResult) as a table or as a
JSON-ready dict. Plain functions; nothing here traces, estimates or imports torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..fit.estimate import CUDA_CONTEXT_BYTES
from ..read.recipe import targets_text
from ..units import GIB, MIB
from .fit import params

if TYPE_CHECKING:  # the type only: report never imports train at run time
    from ..train.gpuprobe import DeviceProbe
    from ..train.measure import ProbeResult

PHASE_LABELS = {"load": "after load", "forward": "forward", "backward": "backward", "optimizer": "optimizer step"}


def size(n: float) -> str:
    """Bytes for people, in GiB from 1 GiB up and in MiB below (tiny models)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.2f} MiB"


def _precision(result: ProbeResult) -> str:
    """The dtypes traced, in a few words: "bf16 autocast, bf16 weights, fp32 adapters"."""
    c = result.choices
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    trained = "weights" if result.recipe.method == "full" else "adapters"
    base = f"{result.recipe.quantization.bits}-bit base" if result.recipe.quantization else \
        f"{short[c.weight_dtype]} weights"
    mixed = f"{c.precision} CPU autocast" if c.autocast_dtype else "no autocast"
    return f"{mixed}, {base}, {short[c.trainable_dtype]} {trained}"


def provenance(result: ProbeResult) -> str:
    """The one line that says what was measured and what was modelled."""
    v = result.versions
    return (f"traced on the CPU under fake tensors: allocated peak exact for transformers {v['transformers']} / "
            f"peft {v['peft']} / trl {v['trl']} / bitsandbytes {v['bitsandbytes']} (torch {v['torch']}; "
            f"{_precision(result)}); reserved and device modelled")


def _estimate_label(result: ProbeResult) -> str:
    return f"fit-check ({result.gpu.name}{', assumed' if result.gpu_assumed else ''})"


def _setup(result: ProbeResult) -> str:
    r = result.recipe
    t = r.training
    adapters = ""
    if r.lora is not None:
        adapters = f" r{r.lora.r} {targets_text(r.lora.target_modules, ',')}"
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
    return "\n".join(lines + _peak_and_notes(result, "at the peak"))


def _peak_and_notes(result: ProbeResult, title: str) -> list[str]:
    """The traced peak by category, the parameter counts and the notes: the end of both tables."""
    lines = ["", f"  {title} ({PHASE_LABELS.get(result.peak_phase, result.peak_phase)}):"]
    lines += [f"  {name:<22}{size(n):>12}" for name, n in result.breakdown.items() if n]
    if result.paged_bytes:
        lines += [f"  {'paged (outside)':<22}{size(result.paged_bytes):>12}"]
    lines += ["", f"  parameters: base {params(result.base_params)}, trainable {params(result.trainable_params)}"]
    return lines + [f"  note: {note}" for note in result.notes]


def probe_json(result: ProbeResult, file: str) -> dict:
    """The same figures for tools; byte counts are ints, keys as fit-check's JSON names them."""
    est, alloc = result.estimate, result.allocator
    return {
        "file": file, "name": result.recipe.name, "model": result.recipe.model.id, "steps": result.steps,
        "seconds": round(result.seconds, 3), "traced_on": "cpu", "fake_tensors": True,
        "precision": result.choices.precision, "autocast": result.choices.autocast_dtype is not None,
        "weight_dtype": result.choices.weight_dtype, "trainable_dtype": result.choices.trainable_dtype,
        "gpu_assumed": result.gpu_assumed, "paged_bytes": result.paged_bytes,
        "versions": result.versions, "provenance": provenance(result),
        "allocated_bytes": result.allocated_bytes, "reserved_bytes": result.reserved_bytes,
        "device_bytes": result.device_bytes, "base_params": result.base_params,
        "trainable_params": result.trainable_params, "cuda_context_bytes": CUDA_CONTEXT_BYTES,
        "reserved_expandable_bytes": alloc.expandable.reserved_bytes,
        "expandable_segments_lower": alloc.expandable_is_lower,
        "peak_phase": result.peak_phase,
        "phases": {p.name: {"allocated_bytes": p.allocated_bytes, "reserved_bytes": p.reserved_fixed_bytes,
                            "reserved_expandable_bytes": p.reserved_expandable_bytes} for p in result.phases},
        "categories": dict(result.breakdown),
        "estimate": {"gpu": result.gpu.name,
                     "allocated_bytes": est.allocated_bytes, "reserved_bytes": est.reserved_bytes,
                     "device_bytes": est.device_bytes, "base_params": est.base_params,
                     "trainable_params": est.trainable_params},
        "notes": list(result.notes),
    }


def measured_provenance(measured: DeviceProbe) -> str:
    """The one line that says what was measured on the device and what beside it is modelled."""
    v, m, c = measured.probe.versions, measured.measured, measured.probe.choices
    how = ("allocated peaks per phase of real CPU tensors (no caching allocator: reserved not measured)"
           if m.kind == "cpu" else f"allocated and reserved peaks per phase from torch.{m.kind}, the process's "
           "memory from NVML; the measured peaks are the training steps' (building the model is the load row)")
    mixed = f"{c.precision} autocast" if c.autocast_dtype else "no autocast"
    return (f"measured on {m.device}: {how}, for transformers {v['transformers']} / peft {v['peft']} / "
            f"trl {v['trl']} / bitsandbytes {v.get('bitsandbytes', '?')} (torch {v['torch']}; {mixed}); traced: "
            "the same steps' allocations, replayed through the allocator model")


def _maybe(n) -> str:
    return "n/a" if n is None else size(n)


def measured_text(measured: DeviceProbe, file: str) -> str:
    """The table for people: measured peaks beside the trace of the same steps and fit-check."""
    result, m = measured.probe, measured.measured
    est, alloc = result.estimate, result.allocator
    steps = f"{m.steps} step{'s' if m.steps > 1 else ''}"
    speed = (f"; {m.timed_steps} more untraced: {m.tokens_per_second:,.0f} tokens/s ({m.seconds_per_step:.2f} s a step)"
             if m.tokens_per_second else "")
    lines = [f"{result.recipe.name} ({file}): {_setup(result)}; {steps} measured in {result.seconds:.1f} s{speed}",
             measured_provenance(measured), "",
             f"  {'':<22}{'measured':>12}{'traced':>12}  {_estimate_label(result)}",
             f"  {'allocated':<22}{size(m.allocated_bytes):>12}{size(result.allocated_bytes):>12}  "
             f"{size(est.allocated_bytes)}",
             f"  {'reserved':<22}{_maybe(m.reserved_bytes):>12}{size(result.reserved_bytes):>12}  "
             f"{size(est.reserved_bytes)}",
             f"  {'device (nvidia-smi)':<22}{_maybe(m.process_bytes):>12}{size(result.device_bytes):>12}  "
             f"{size(est.device_bytes)}",
             f"  traced reserved is the allocator model's replay of the traced allocations (expandable_segments:True: "
             f"{size(alloc.expandable.reserved_bytes)}); traced device adds the CUDA context fit-check assumes"]
    if m.process_bytes is None and m.card_used_bytes is not None:
        lines.append(f"  NVML lists no memory for this process (a container's process ids?); the whole card uses "
                     f"{size(m.card_used_bytes)}")
    if m.untraced_allocated_bytes is not None:
        lines.append(f"  untraced steps: allocated {size(m.untraced_allocated_bytes)}, reserved "
                     f"{_maybe(m.untraced_reserved_bytes)} (what tracing the steps changed)")
    lines += ["", f"  {'phase':<22}{'allocated':>12}{'reserved':>12}{'traced':>12}{'replayed':>12}"]
    traced = {p.name: p for p in result.phases}
    for p in m.phases:
        t = traced.get(p.name)
        lines.append(f"  {PHASE_LABELS.get(p.name, p.name):<22}{size(p.allocated_bytes):>12}"
                     f"{_maybe(p.reserved_bytes):>12}{_maybe(t and t.allocated_bytes):>12}"
                     f"{_maybe(t and t.reserved_fixed_bytes):>12}")
    return "\n".join(lines + _peak_and_notes(result, "traced, at the peak"))


def measured_json(measured: DeviceProbe, file: str) -> dict:
    """probe_json of the traced steps (real device tensors) with the measurement under "measured"."""
    result, m = measured.probe, measured.measured
    out = probe_json(result, file)
    out.update({"traced_on": m.kind, "fake_tensors": False, "provenance": measured_provenance(measured)})
    out["measured"] = {
        "device": m.device, "allocated_bytes": m.allocated_bytes, "reserved_bytes": m.reserved_bytes,
        "device_bytes": m.process_bytes, "card_used_bytes": m.card_used_bytes,
        "phases": {p.name: {"allocated_bytes": p.allocated_bytes, "reserved_bytes": p.reserved_bytes}
                   for p in m.phases},
        "timed_steps": m.timed_steps, "tokens_per_second": m.tokens_per_second,
        "seconds_per_step": m.seconds_per_step, "untraced_allocated_bytes": m.untraced_allocated_bytes,
        "untraced_reserved_bytes": m.untraced_reserved_bytes, "memory_stats": m.memory_stats,
    }
    return out
