"""`recipe probe --device cuda`: a recipe's training steps measured on a GPU, beside a trace of
the very same steps and fit/allocator.py's replay of that trace.

Nothing here builds a model or trains. The recipe goes through measure.py's ``measure``, whose
``run`` hook takes the place of the CPU trace, so it is read exactly as the CPU trace reads it;
the steps are probe.trace_step's with real tensors (``fake=False``). This module decides only
where they run and what is read around each phase:

- device: trace_step runs under ``torch.device(meter.device)``, so ``from_config`` allocates and
  randomly initializes every weight on the card (no download, no host copy; a quantized base is
  built on the CPU and quantized onto the card layer by layer, as from_pretrained loads it), peft
  puts the adapters beside them, and the batch and every temporary are made there. Building is no
  training memory: the "load" phase is measured, but the steps' phases are what fit-check
  estimates (benchmarks/gpu_probe.py compares those).
- phases: trace_step records into a ``_MeteredTrace`` (its ``recorder``), a MemTrace that closes
  the meter's running phase whenever the step announces a new one, reading its peaks since the
  last reset (``max_memory_allocated``/``max_memory_reserved`` after a synchronize) and
  resetting them. Phases of one name (every step has a forward) keep the highest; "load" runs
  from before the model is built to the first forward, so it includes what building took.
- the same steps are recorded allocation by allocation with real device tensors, so one run
  gives what the caching allocator reserved beside what the allocator model predicts from those
  very allocations, with ``torch.cuda.memory_stats()`` to see where the two part.
- speed: trace_step runs ``timed_steps`` more steps; the recorder stops recording where the first
  of them begins (only the state between steps is live, so the events are those of the traced
  steps alone) and times them with every op passed straight through: tokens/s.

The meter is the only device-specific part. ``CudaMeter`` reads torch.cuda's counters and NVML
(through fit/hardware.py); ``CpuMeter`` reads the recorder's own events of real CPU tensors, so
the tests run all the rest on the CPU and compare it with probe.trace_step to the byte.

Imports torch at import time: import it inside functions (see train/__init__.py).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from ..errors import DoesNotFit, UsageError
from ..fit.gpu_catalog import Gpu
from ..read.recipe import Recipe
from .measure import ProbeResult, measure
from .memtrace import START, MemTrace, Trace

DEVICES = ("auto", "cpu", "cuda")


class DeviceOutOfMemory(DoesNotFit):
    """The measured steps ran out of the device's memory; the CPU trace needs none."""

# memory_stats() keys kept in a result: the totals of each statistic over both pools, and the
# counters of events (device mallocs, retries after a failed malloc, OOMs)
_STATS_KEPT = (".all.peak", ".all.current", ".all.allocated", ".all.freed")


class Meter(Protocol):
    """What the measured run reads around each phase; one per device kind."""

    device: torch.device
    name: str  # what the report says it measured on: the GPU's name, or "cpu"

    def watch(self, trace: Optional[MemTrace]) -> None:
        """The trace of the steps being measured (None once they are done)."""

    def reset(self) -> None:
        """Start a new phase: forget the peaks so far."""

    def peaks(self) -> tuple[Optional[int], Optional[int]]:
        """Allocated and reserved peaks since the last reset; None where not known."""

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timing)."""

    def snapshot(self) -> dict[str, int]:
        """The allocator's statistics now; empty where there is no caching allocator."""

    def process_bytes(self) -> tuple[Optional[int], Optional[int]]:
        """This process's device memory as nvidia-smi lists it, and the card's used memory
        (every process); None where not known."""

    def card(self) -> Optional[Gpu]:
        """The card measured on, as fit-check describes cards; None for the CPU."""


class CudaMeter:
    """torch.cuda's counters for one GPU, and NVML's view of this process on it."""

    def __init__(self, index: Optional[int] = None) -> None:
        self.device = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        self.name = torch.cuda.get_device_name(self.device)

    def watch(self, trace: Optional[MemTrace]) -> None:
        pass  # the counters see every allocation, traced or not

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[Optional[int], Optional[int]]:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def snapshot(self) -> dict[str, int]:
        stats = torch.cuda.memory_stats(self.device)
        return {k: int(v) for k, v in stats.items()
                if isinstance(v, int) and (k.endswith(_STATS_KEPT) or k.startswith("num_"))}

    def process_bytes(self) -> tuple[Optional[int], Optional[int]]:
        found = self._nvml()
        if found is None:
            return None, None
        gpu, mine = found
        return mine, gpu.total_bytes - gpu.free_bytes

    def card(self) -> Optional[Gpu]:
        found = self._nvml()
        return None if found is None else found[0]

    def _nvml(self) -> Optional[tuple[Gpu, Optional[int]]]:
        """This GPU as NVML describes it, and this process's memory on it."""
        from ..fit import hardware

        found = hardware.probe()
        index = self.device.index  # probe() lists the visible GPUs in CUDA order, as torch numbers them
        if index >= len(found.gpus):
            return None
        return found.gpus[index], found.process_bytes[index] if found.process_bytes else None


class CpuMeter:
    """The peaks of the steps' own MemTrace of real CPU tensors, read as a CUDA meter reads its
    counters: the highest live bytes since the last reset, starting from what was live then.
    The CPU has no caching allocator, so reserved is unknown, and so is anything untraced."""

    device = torch.device("cpu")
    name = "cpu"

    def __init__(self) -> None:
        self._trace: Optional[MemTrace] = None
        self._start = 0  # index of the first event after the last reset

    def watch(self, trace: Optional[MemTrace]) -> None:
        self._trace, self._start = trace, 0

    def reset(self) -> None:
        self._start = len(self._trace.events) if self._trace is not None else 0

    def peaks(self) -> tuple[Optional[int], Optional[int]]:
        if self._trace is None:
            return None, None
        events = self._trace.events
        live = sum(e.nbytes for e in events[:self._start])
        peak = live
        for event in events[self._start:]:
            live += event.nbytes
            peak = max(peak, live)
        return peak, None

    def synchronize(self) -> None:
        pass

    def snapshot(self) -> dict[str, int]:
        return {}

    def process_bytes(self) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def card(self) -> Optional[Gpu]:
        return None


@dataclass(frozen=True)
class MeasuredPhase:
    """The peaks one phase reached on the device (reserved: None where not measured)."""

    name: str
    allocated_bytes: int
    reserved_bytes: Optional[int]


@dataclass(frozen=True)
class Measurement:
    """What the meter read while the steps ran, and how fast they ran untraced."""

    device: str  # the meter's name: the GPU, or "cpu"
    kind: str  # torch's device type: "cuda", or "cpu" (tests)
    phases: tuple[MeasuredPhase, ...]
    process_bytes: Optional[int]  # nvidia-smi's figure for this process after the traced steps
    card_used_bytes: Optional[int]  # the whole card's used memory then (every process)
    memory_stats: dict[str, int]  # torch.cuda.memory_stats() after the traced steps (kept keys)
    steps: int  # traced steps
    timed_steps: int  # untraced steps after them
    timed_tokens: int  # tokens the timed steps trained on
    timed_seconds: float
    untraced_allocated_bytes: Optional[int]  # peaks over the untraced steps: what tracing changed
    untraced_reserved_bytes: Optional[int]

    @property
    def training_phases(self) -> tuple[MeasuredPhase, ...]:
        """The training phases: building the model ("load": random weights made on the device, a
        quantized base quantized onto it) is no memory a run that loads its weights holds, and on
        an H200 it was the highest phase of a few cases (BENCHMARKS.md); it stays in ``phases``."""
        return tuple(p for p in self.phases if p.name != "load") or self.phases

    @property
    def allocated_bytes(self) -> int:
        return max(p.allocated_bytes for p in self.training_phases)

    @property
    def reserved_bytes(self) -> Optional[int]:
        reserved = [p.reserved_bytes for p in self.training_phases]
        return None if None in reserved else max(reserved)

    @property
    def tokens_per_second(self) -> Optional[float]:
        return self.timed_tokens / self.timed_seconds if self.timed_seconds > 0 else None

    @property
    def seconds_per_step(self) -> Optional[float]:
        return self.timed_seconds / self.timed_steps if self.timed_steps else None


@dataclass(frozen=True)
class DeviceProbe:
    """``recipe probe --device cuda``: the measurement, and measure.py's result for the same steps
    (their trace with real device tensors, its allocator replay, fit-check's estimate)."""

    probe: ProbeResult
    measured: Measurement


class _MeteredTrace(MemTrace):
    """A MemTrace that closes the meter's phase whenever the step starts a new one, and records
    only the first ``traced_steps`` steps: the later ones run untraced and timed.

    Recording stops where step ``traced_steps + 1`` begins (its first "forward"), when only the
    state between steps is live, so the events are those of a ``traced_steps``-step trace; from
    there on every op passes straight through and tags and frees are ignored.
    """

    def __init__(self, meter: Meter, traced_steps: int, tokens_per_forward: int) -> None:
        super().__init__()
        self._meter = meter
        self._traced_steps = traced_steps
        self._tokens_per_forward = tokens_per_forward
        self._recording = True
        self._last = START
        self._steps_begun = 0
        self._entered = self._timer = 0.0
        self.measured: dict[str, tuple[Optional[int], Optional[int]]] = {}
        self.traced_seconds = self.timed_seconds = 0.0
        self.timed_tokens = 0
        self.process: tuple[Optional[int], Optional[int]] = (None, None)
        self.stats: dict[str, int] = {}
        self.untraced: tuple[Optional[int], Optional[int]] = (None, None)
        meter.watch(self)

    def __enter__(self):
        self._entered = time.perf_counter()
        return super().__enter__()

    def __exit__(self, *exc):
        if exc[0] is not None:  # the steps failed (out of memory): nothing to measure
            pass
        elif self._recording:
            self._close_recording()
        else:
            self._meter.synchronize()
            self.timed_seconds = time.perf_counter() - self._timer
            self.untraced = self._meter.peaks()
        return super().__exit__(*exc)

    def phase(self, name: str) -> None:
        starts_step = name == "forward" and self._last in (START, "optimizer")
        self._last = name
        if starts_step:
            self._steps_begun += 1
            if self._recording and self._steps_begun > self._traced_steps:
                self._close_recording()
                self._meter.synchronize()
                self._timer = time.perf_counter()
        if not self._recording:
            self.timed_tokens += self._tokens_per_forward if name == "forward" else 0
            return
        self._close_phase()
        super().phase(name)

    def _close_phase(self) -> None:
        """The running phase's peaks are the meter's since its last reset; the next phase's start here."""
        allocated, reserved = self._meter.peaks()
        seen = self.measured.get(self._phase)
        if seen is not None:
            allocated, reserved = _highest(seen[0], allocated), _highest(seen[1], reserved)
        self.measured[self._phase] = (allocated, reserved)
        self._meter.reset()

    def _close_recording(self) -> None:
        self._close_phase()
        self.traced_seconds = time.perf_counter() - self._entered
        self.process = self._meter.process_bytes()  # reserved never shrinks unasked: its peak is held now
        self.stats = self._meter.snapshot()
        self._meter.watch(None)
        self._meter.reset()
        self._recording = False

    def track(self, tensors, category: Optional[str] = None) -> None:
        if self._recording:
            super().track(tensors, category)

    tag = track  # MemTrace's alias names its own track

    def _freed(self, key: int, serial: int) -> None:
        if self._recording:
            super()._freed(key, serial)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._recording:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


def _highest(a: Optional[int], b: Optional[int]) -> Optional[int]:
    return None if a is None or b is None else max(a, b)


def measure_step(config_dict: dict, meter: Meter, *, steps: int = 1, timed_steps: int = 3,
                 **options) -> tuple[Trace, Measurement]:
    """probe.trace_step's steps, run with real tensors on ``meter.device`` and measured there,
    then ``timed_steps`` more run untraced and timed.

    Args:
        config_dict: the model's config.json as a dict.
        meter: what reads the device's memory (CudaMeter, or CpuMeter in tests).
        steps: traced and measured optimizer steps.
        timed_steps: untraced steps after them, for tokens/s; 0 for none.
        options: probe.trace_step's (method, seq_len, micro_batch, ...); not ``fake``.

    Returns:
        The trace of the ``steps`` steps with real device tensors (``seconds``: their wall time)
        and what the meter measured.

    Raises:
        ValueError, UnknownTargets: as probe.trace_step.
        torch.cuda.OutOfMemoryError: the step does not fit the card.
    """
    from .probe import trace_step

    tokens = options.get("micro_batch", 1) * options.get("seq_len", 512)  # a packed row holds as many
    meter.watch(None)
    with torch.device(meter.device):  # weights, batch and every temporary on the device
        meter.reset()
        recorder = _MeteredTrace(meter, steps, tokens)
        trace = trace_step(config_dict, fake=False, steps=steps + timed_steps, recorder=recorder, **options)
    trace.seconds = recorder.traced_seconds
    phases = tuple(MeasuredPhase(name, allocated, reserved)
                   for name, (allocated, reserved) in recorder.measured.items())
    process, card = recorder.process
    return trace, Measurement(device=meter.name, kind=meter.device.type, phases=phases, process_bytes=process,
                              card_used_bytes=card, memory_stats=recorder.stats, steps=steps, timed_steps=timed_steps,
                              timed_tokens=recorder.timed_tokens, timed_seconds=recorder.timed_seconds,
                              untraced_allocated_bytes=recorder.untraced[0],
                              untraced_reserved_bytes=recorder.untraced[1])


class _Run:
    """measure.py's ``run`` hook: takes probe.trace_step's arguments, measures on the meter's
    device instead, and keeps the measurement for the caller."""

    def __init__(self, meter: Meter, timed_steps: int) -> None:
        self.meter, self.timed_steps = meter, timed_steps
        self.measurement: Optional[Measurement] = None

    def __call__(self, config_dict: dict, *, fake: bool = True, steps: int = 1, **options) -> Trace:
        # ``fake`` asks the CPU trace for fake tensors; measured steps always run real ones
        trace, self.measurement = measure_step(config_dict, self.meter, steps=steps, timed_steps=self.timed_steps,
                                               **options)
        return trace


def measure_on_device(recipe: Recipe, steps: int = 2, gpu: Optional[Gpu] = None, meter: Optional[Meter] = None,
                      timed_steps: int = 3) -> DeviceProbe:
    """``measure`` with the steps run and measured on a device instead of traced on the CPU.

    Args:
        recipe: the loaded recipe.
        steps: traced and measured optimizer steps.
        gpu: the card the run's dtypes are chosen for and fit-check estimates for; None: the card
            measured on (measure's default card on the CPU).
        meter: the device's meter; None for the current CUDA device.
        timed_steps: untraced steps after those, for tokens/s.

    Returns:
        The measurement and measure.py's result for the same steps.

    Raises:
        DeviceOutOfMemory: the steps ran out of the device's memory (exit 3).
        Whatever ``measure`` raises (UnknownModel, UnknownTargets, InvalidRecipe).
    """
    meter = meter if meter is not None else CudaMeter()
    run = _Run(meter, timed_steps)
    try:
        result = measure(recipe, steps, gpu if gpu is not None else meter.card(), run=run)
    except torch.OutOfMemoryError as exc:
        why = str(exc).splitlines()[0] if str(exc) else "out of memory"
    else:
        return DeviceProbe(probe=result, measured=run.measurement)
    # outside the except block, so its traceback (and the tensors its frames hold) is gone
    gc.collect()
    if meter.device.type == "cuda":
        torch.cuda.empty_cache()
    raise DeviceOutOfMemory(f"the steps do not fit {meter.name}: {why}",
                            "trace them on the CPU, which needs no GPU memory: --device cpu", where="--device")


def choose_device(requested: str) -> str:
    """Where ``recipe probe`` runs: "cuda" or "cpu" (the FakeTensorMode trace).

    Args:
        requested: "auto" (CUDA when torch sees a GPU), "cpu" or "cuda".

    Returns:
        "cuda" or "cpu".

    Raises:
        UsageError: "cuda" asked for where torch sees no GPU (exit 2), with the reason.
    """
    if requested not in DEVICES:
        raise ValueError(f"device {requested!r}: one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "auto":
        return "cpu"
    if torch.version.cuda is None:
        why = f"this torch ({torch.__version__}) is built without CUDA"
    else:
        from ..fit import hardware

        why = hardware.probe().note or f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU"
    raise UsageError(f"no CUDA GPU: {why}",
                     "trace it on the CPU instead: --device cpu (or leave --device out)", where="--device")
