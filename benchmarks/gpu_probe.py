"""`recipe probe` on a GPU against the CPU trace and fit-check, for the shipped recipes' models
(issue 8, section 6): one script for the few minutes a GPU is lent.

For each shipped recipe's model (TinyLlama 1.1B, Phi-2, Gemma 2B, Mistral 7B, Llama-2 13B) at a
few settings (sequence length, micro-batch, gradient checkpointing), as LoRA on an fp32 base with
adamw_torch and sdpa (no bitsandbytes needed, no dtype choice left to the card), and with
--shipped each recipe as shipped too (qlora, its optimizer, its precision on this card: needs
bitsandbytes' CUDA build, `benchmarks/gpu_probe.sh fetch bitsandbytes==VERSION`), it records:

- measured on the GPU (`recipe probe --device cuda`, the same code in this process): allocated
  and reserved peaks per phase, this process's memory as nvidia-smi lists it, tokens/s, and
  the allocator's own statistics;
- traced: the same steps' allocations with real GPU tensors, and their replay through the
  allocator model (fit/allocator.py): measured reserved against modelled reserved, one run;
- the CPU trace under FakeTensorMode (`recipe probe --device cpu`), in worker processes while
  the GPU works: traced allocated, modelled reserved and device;
- fit-check's estimate (allocated, reserved, device) for the card measured on, fp32 like the rest;
- the error of fit-check and of the CPU trace against the measurement, allocated and reserved
  apart, each case and summarized; what failed, as text, per case and arm.

The results go to OUT/benchmarks/gpu_probe.json (OUT: $OUT, else runs/gpu_probe), rewritten after
every case, so a run cut short keeps what it measured. A time budget (--budget-s) skips cases
rather than running past the lease; cases go setting by setting, so every model gets its first
setting before any gets its second, and the recipes measured as written (--shipped, --as-is) come
right after the first setting. The recipes' own cards and settings are not touched: each
variant is written to a folder of its own.

    benchmarks/gpu_probe.sh fetch             # where PyPI is reachable: wheels the GPU machine lacks
    benchmarks/gpu_probe.sh                   # on the GPU machine: set Python up, run this
    .venv/bin/python benchmarks/gpu_probe.py --dry-run        # no torch: the cases and fit-check
    .venv/bin/python benchmarks/gpu_probe.py --device cpu --recipe recipes/tiny-demo.yaml \\
        --setting s64:data.max_seq_length=64,training.micro_batch_size=2 --workers 0
        # everything but torch.cuda, on the CPU (gpuprobe.CpuMeter): what the tests run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it (the GPU machine's case)

SEEDS = ("tinyllama-1.1b", "phi-2", "gemma-2b", "mistral7b", "llama2-13b")
SETTINGS = {  # name -> --set overrides
    "s512-b1-gc": "data.max_seq_length=512,training.micro_batch_size=1,training.gradient_checkpointing=true",
    "s2048-b1-gc": "data.max_seq_length=2048,training.micro_batch_size=1,training.gradient_checkpointing=true",
    "s512-b4": "data.max_seq_length=512,training.micro_batch_size=4,training.gradient_checkpointing=false",
}
# what makes a shipped (qlora, paged 8-bit, auto precision) recipe one both arms can run today
LORA_FP32 = {"method": "lora", "training": {"optimizer": "adamw_torch", "precision": "fp32", "attention": "sdpa"}}
FIGURES = ("allocated_bytes", "reserved_bytes", "device_bytes")


def lora_variant(recipe_file: Path, folder: Path) -> Path:
    """The recipe as LoRA on an fp32 base, written as a resolved recipe of its own into ``folder``.

    A quantization section cannot be removed with --set, so the variant is the resolved document
    with the section dropped and LORA_FP32 merged over it."""
    from recipecli.read import codec
    from recipecli.read.load import deep_merge, load_recipe

    doc = codec.to_document(load_recipe(recipe_file))
    doc.pop("quantization", None)
    doc = deep_merge(doc, LORA_FP32)
    path = folder / f"{recipe_file.stem}-lora-fp32.yaml"
    path.write_text(codec.dump(doc, f"{recipe_file}, as LoRA on an fp32 base, adamw_torch, sdpa (gpu_probe.py)"))
    return path


def overrides(setting: str) -> list[str]:
    return [item for item in setting.split(",") if item]


def _figures(estimate) -> dict:
    return {name: getattr(estimate, name) for name in FIGURES}


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def plan_case(name: str, recipe_file: str, setting: str, gpu=None, grouped_attention=None) -> dict:
    """A case's recipe and fit-check's estimate, torch-free (what --dry-run records): for ``gpu``
    (None: no card), grouped-query attention as the run takes it there; or, for a measured run
    (--report), on the probe's batch (full rows, no mask) and, where the card has no fused kernel
    for grouped heads, run as ``grouped_attention`` says the measured run ran them."""
    import dataclasses

    from recipecli.fit.architectures import find_config, shape_from_config
    from recipecli.fit.estimate import estimate
    from recipecli.fit.verdict import setup_for
    from recipecli.read.load import load_recipe

    recipe = load_recipe(recipe_file, overrides(setting))
    model = recipe.model
    shape = shape_from_config(find_config(model.id, model.local_path, model.architecture, model.revision))
    setup, _ = setup_for(recipe, gpu)
    if grouped_attention is not None:  # a measured run: the probe's batch of full rows has no mask
        unfused = grouped_attention if setup.grouped_attention == "repeat" else setup.grouped_attention
        setup = dataclasses.replace(setup, grouped_attention=unfused, padded=False)
    return {"model": model.id, "seq_len": recipe.data.max_seq_length, "micro_batch": recipe.training.micro_batch_size,
            "gradient_checkpointing": recipe.training.gradient_checkpointing, "base_params": shape.param_count(),
            "fit_check": _figures(estimate(shape, setup))}


def steps_peaks(measured: dict) -> tuple[int, int]:
    """The highest allocated and reserved over the training phases, the load left out: the probe
    builds the model from its config on the card (random weights, a quantized base first in 16
    bits), which a run loading its weights never holds, so only the steps compare with fit-check."""
    phases = [p for name, p in measured["phases"].items() if name != "load"]
    return max(p["allocated_bytes"] for p in phases), max(p["reserved_bytes"] or 0 for p in phases)


def report(files: list[Path], grouped_attention: str) -> list[dict]:
    """Measured cases of earlier runs (their gpu_probe.json) against fit-check as it estimates now,
    for the card measured on, the steps' peaks only: one row per measured case."""
    from recipecli.fit.gpu_catalog import Gpu

    rows = []
    for path in files:
        result = json.loads(path.read_text())
        card = result.get("gpu")
        if card is None:  # a dry run, or a run that measured nothing
            print(f"{path}: no card measured on, nothing to report", file=sys.stderr)
            continue
        gpu = Gpu(card["name"], card["total_bytes"], None, tuple(card["compute_capability"]), card["driver"])
        for case in result["cases"]:
            measured = (case.get("device") or {}).get("measured")
            if not measured:
                continue
            recipe = case["recipe"] if case["setting"] == "" else str(lora_variant(ROOT / case["recipe"], _variants()))
            fit = plan_case(case["case"], recipe, case["setting"], gpu, grouped_attention)["fit_check"]
            allocated, reserved = steps_peaks(measured)
            rows.append({"file": path.name, "case": case["case"], "measured_allocated": allocated,
                         "measured_reserved": reserved, "fit_allocated": fit["allocated_bytes"],
                         "fit_reserved": fit["reserved_bytes"],
                         "error_allocated": round((fit["allocated_bytes"] - allocated) / allocated, 4),
                         "error_reserved": round((fit["reserved_bytes"] - reserved) / reserved, 4)})
    return rows


def _variants() -> Path:
    folder = ROOT / "runs" / "gpu_probe" / "recipes"  # not under $OUT: only 8 files come back from there
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cpu_arm(recipe_file: str, setting: str, steps: int, gpu=None) -> dict:
    """`recipe probe --device cpu`: the steps traced at full size under FakeTensorMode, for the
    card measured on (``gpu``, so dtypes and fit-check's context match), or measure's default."""
    from recipecli.read.load import load_recipe
    from recipecli.train.measure import measure

    start = time.perf_counter()
    try:
        result = measure(load_recipe(recipe_file, overrides(setting)), steps, gpu)
    except Exception as exc:  # a benchmark records what failed and goes on to the next case
        return {"error": _failure(exc), "traceback": traceback.format_exc(limit=-3)}
    return {"traced_allocated_bytes": result.allocated_bytes, "replayed_reserved_bytes": result.reserved_bytes,
            "replayed_reserved_expandable_bytes": result.allocator.expandable.reserved_bytes,
            "modelled_device_bytes": result.device_bytes, "fit_check": _figures(result.estimate),
            "phases": {p.name: p.allocated_bytes for p in result.phases}, "versions": result.versions,
            "seconds": round(time.perf_counter() - start, 2)}


def device_arm(recipe_file: str, setting: str, steps: int, timed_steps: int, meter) -> dict:
    """`recipe probe --device cuda`: the steps measured on the meter's device, and their trace."""
    import torch

    from recipecli.read.load import load_recipe
    from recipecli.train.gpuprobe import measure_on_device

    cuda = meter.device.type == "cuda"
    before = torch.cuda.memory_reserved(meter.device) if cuda else None
    start = time.perf_counter()
    try:
        probed = measure_on_device(load_recipe(recipe_file, overrides(setting)), steps, None, meter, timed_steps)
    except Exception as exc:  # an OOM, a refusal or a bug in one case must not cost the others
        return {"error": _failure(exc), "traceback": traceback.format_exc(limit=-3)}
    finally:
        gc.collect()  # the model's reference cycles, and a failed case's frames, before the next case
        if cuda:
            torch.cuda.empty_cache()
    result, m = probed.probe, probed.measured
    return {"device": m.device, "measured": {"allocated_bytes": m.allocated_bytes, "reserved_bytes": m.reserved_bytes,
                                             "device_bytes": m.process_bytes, "card_used_bytes": m.card_used_bytes,
                                             "phases": {p.name: {"allocated_bytes": p.allocated_bytes,
                                                                 "reserved_bytes": p.reserved_bytes}
                                                        for p in m.phases},
                                             "untraced_allocated_bytes": m.untraced_allocated_bytes,
                                             "untraced_reserved_bytes": m.untraced_reserved_bytes},
            "tokens_per_second": m.tokens_per_second, "seconds_per_step": m.seconds_per_step,
            "traced_allocated_bytes": result.allocated_bytes, "replayed_reserved_bytes": result.reserved_bytes,
            "replayed_reserved_expandable_bytes": result.allocator.expandable.reserved_bytes,
            "fit_check": _figures(result.estimate), "gqa_repeat": result.choices.gqa_repeat,
            "memory_stats": m.memory_stats,
            "reserved_before_bytes": before, "versions": result.versions,
            "seconds": round(time.perf_counter() - start, 2)}


def errors_against_measured(case: dict) -> dict:
    """Relative errors (estimate - measured) / measured of each figure that has both sides."""
    gpu, cpu = case.get("device") or {}, case.get("cpu") or {}
    measured = gpu.get("measured") or {}
    fit = gpu.get("fit_check") or cpu.get("fit_check") or case.get("fit_check") or {}
    if measured.get("phases"):
        measured = dict(measured)
        measured["allocated_bytes"], measured["reserved_bytes"] = steps_peaks(measured)
    pairs = {
        "fit_check_allocated": (fit.get("allocated_bytes"), measured.get("allocated_bytes")),
        "fit_check_reserved": (fit.get("reserved_bytes"), measured.get("reserved_bytes")),
        "fit_check_device": (fit.get("device_bytes"), measured.get("device_bytes")),
        "cpu_trace_allocated": (cpu.get("traced_allocated_bytes"), measured.get("allocated_bytes")),
        "cpu_trace_reserved": (cpu.get("replayed_reserved_bytes"), measured.get("reserved_bytes")),
        "cpu_trace_device": (cpu.get("modelled_device_bytes"), measured.get("device_bytes")),
        "device_trace_allocated": (gpu.get("traced_allocated_bytes"), measured.get("allocated_bytes")),
        "device_trace_replayed_reserved": (gpu.get("replayed_reserved_bytes"), measured.get("reserved_bytes")),
    }
    return {name: round((x - m) / m, 4) for name, (x, m) in pairs.items() if x is not None and m}


def summary(cases: list[dict]) -> dict:
    """Per figure, over the cases that have it: how many, the median and the worst |error|."""
    found: dict[str, list[float]] = {}
    for case in cases:
        for name, error in case.get("errors", {}).items():
            found.setdefault(name, []).append(error)
    return {name: {"cases": len(errors), "median_abs": round(statistics.median(abs(e) for e in errors), 4),
                   "worst": max(errors, key=abs)} for name, errors in sorted(found.items())}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # a fake trace is Python work; leave the cores to the others


def _write(path: Path, result: dict) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=1, sort_keys=False))
    partial.replace(path)


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: measure on the GPU; cpu: gpuprobe.CpuMeter with real CPU tensors (tests)")
    parser.add_argument("--recipe", action="append", type=Path,
                        help="a recipe to measure (repeatable); default: the shipped recipes of SEEDS")
    parser.add_argument("--setting", action="append", metavar="NAME:KEY=VALUE,...",
                        help="a setting as --set overrides (repeatable); default: SETTINGS")
    parser.add_argument("--steps", type=int, default=2, help="traced and measured steps")
    parser.add_argument("--timed-steps", type=int, default=2, help="untraced steps after them, for tokens/s")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the CPU traces (0: in this process, after the device arm); "
                             "default: up to 6, leaving two cores")
    parser.add_argument("--budget-s", type=float, default=380.0,
                        help="start no case that would end later than this many seconds from the start (judged "
                             "by the longest case so far), and wait no longer for the CPU traces")
    parser.add_argument("--out", type=Path, default=None, help="folder of gpu_probe.json (default: $OUT/benchmarks)")
    parser.add_argument("--shipped", action="store_true",
                        help="also each recipe as shipped (qlora: needs bitsandbytes), after the first setting")
    parser.add_argument("--as-is", action="append", type=Path, metavar="RECIPE",
                        help="also this recipe as written, not as a LoRA fp32 variant (repeatable), after the "
                             "first setting: benchmarks/recipes/*.yaml (OLMoE, falcon 7B)")
    parser.add_argument("--dry-run", action="store_true", help="only the cases and fit-check's estimates; no torch")
    parser.add_argument("--report", nargs="+", type=Path, metavar="GPU_PROBE_JSON",
                        help="no run: the measured cases of these files against fit-check as it estimates now")
    parser.add_argument("--grouped-attention", choices=("native", "repeat", "math"), default=None,
                        help="with --report: how the measured run ran grouped-query attention where the card "
                             "has no fused kernel for it (math: stock transformers, before the run repeated the "
                             "heads itself); default: as the run does now")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _arguments(argv)
    if args.report:
        for row in report(args.report, args.grouped_attention):
            print(f"{row['file']:<28} {row['case']:<28} measured {row['measured_allocated'] / 2**30:6.2f} GiB, "
                  f"fit-check {row['fit_allocated'] / 2**30:6.2f} GiB: {row['error_allocated']:+.1%} allocated, "
                  f"{row['error_reserved']:+.1%} reserved")
        return 0
    started = time.monotonic()
    deadline = started + args.budget_s
    out = args.out
    if out is None:  # $OUT is what comes back from a lent machine
        out = Path(os.environ["OUT"]) / "benchmarks" if os.environ.get("OUT") else ROOT / "runs" / "gpu_probe"
    out.mkdir(parents=True, exist_ok=True)
    variants = _variants()
    recipes = args.recipe or [ROOT / "recipes" / f"{seed}.yaml" for seed in SEEDS]
    settings = dict(s.split(":", 1) for s in args.setting) if args.setting else SETTINGS
    files = {path.stem: str(lora_variant(path, variants)) for path in recipes}
    cases = [{"case": f"{stem}/{name}", "recipe": str(recipes[i]), "variant": files[stem], "setting": setting}
             for name, setting in settings.items() for i, stem in enumerate(files)]
    as_written = (recipes if args.shipped else []) + (args.as_is or [])
    # right after every model's first setting: a short lease still measures each recipe as written
    cases[len(files):len(files)] = [{"case": f"{path.stem}/{'shipped' if path in recipes else 'as-is'}",
                                     "recipe": str(path), "variant": str(path), "setting": ""}
                                    for path in as_written]
    result = {"device": args.device, "steps": args.steps, "timed_steps": args.timed_steps,
              "budget_s": args.budget_s, "dry_run": args.dry_run, "cases": cases}
    path = out / "gpu_probe.json"
    for case in cases:
        try:
            case.update(plan_case(case["case"], case["variant"], case["setting"]))
        except Exception as exc:  # recorded per case: an unknown model must not hide the others
            case["errors_plan"] = _failure(exc)
    _write(path, result)
    if args.dry_run:
        print(f"{len(cases)} cases planned; {path}")
        return 0

    import multiprocessing

    from recipecli.train.gpuprobe import CpuMeter, CudaMeter, choose_device

    if args.device == "cuda":
        choose_device("cuda")  # a usage error with the reason, before any time is spent
    meter = CudaMeter() if args.device == "cuda" else CpuMeter()
    gpu = meter.card()
    result["gpu"] = None if gpu is None else {"name": gpu.name, "total_bytes": gpu.total_bytes,
                                              "compute_capability": gpu.compute_capability, "driver": gpu.driver}
    workers = args.workers if args.workers is not None else max(1, min(6, (os.cpu_count() or 2) - 2))
    pool = multiprocessing.get_context("spawn").Pool(workers, _worker_init) if workers else None
    pending = {c["case"]: pool.apply_async(cpu_arm, (c["variant"], c["setting"], args.steps, gpu)) for c in cases} \
        if pool else {}
    longest = 0.0  # the longest device case so far: one that would not end in time is not started
    try:
        for case in cases:
            if time.monotonic() + longest > deadline:
                case["device"] = {"error": "skipped: time budget"}
            else:
                began = time.monotonic()
                case["device"] = device_arm(case["variant"], case["setting"], args.steps, args.timed_steps, meter)
                longest = max(longest, time.monotonic() - began)
            print(f"{case['case']}: device {case['device'].get('error') or 'measured'}", flush=True)
            _write(path, result)
        for case in cases:
            if pool is None:
                case["cpu"] = (cpu_arm(case["variant"], case["setting"], args.steps, gpu)
                               if time.monotonic() < deadline else {"error": "skipped: time budget"})
            else:
                try:
                    case["cpu"] = pending[case["case"]].get(timeout=max(1.0, deadline - time.monotonic()))
                except multiprocessing.TimeoutError:
                    case["cpu"] = {"error": "skipped: time budget"}
            case["errors"] = errors_against_measured(case)
            _write(path, result)
    finally:
        if pool is not None:
            pool.terminate()
    result["summary"] = summary(cases)
    result["seconds"] = round(time.monotonic() - started, 1)
    _write(path, result)
    for name, row in result["summary"].items():
        print(f"{name:<30} {row['cases']:>3} cases  median |error| {row['median_abs']:.1%}  worst {row['worst']:+.1%}")
    print(f"{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
