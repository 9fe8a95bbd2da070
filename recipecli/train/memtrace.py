"""Count the tensor memory a block of torch code allocates: live bytes over time, the peak and
what the peak is made of.

``MemTrace`` is a ``TorchDispatchMode``: every aten op run inside it passes through it, and each
tensor the op returns is looked at once. A storage not seen before is an allocation of
``storage.nbytes()`` bytes; ``weakref.finalize`` on the storage's Python object reports its free
(torch keeps one Python object per storage for as long as the storage lives, so the finalizer
fires exactly when the memory would be handed back to the allocator). Views share their base's
storage, so they count once. The same works for real tensors and for ``FakeTensor`` (whose
storage is a meta storage of the right size and no memory), which is what lets the probe trace
a 7B step on a laptop.

What is not seen: buffers a single aten kernel allocates and frees inside itself (the CPU flash
attention's scratch, cuBLAS workspaces), and anything allocated before the trace that is not
handed to ``track`` before its first use (it is counted from the op that first reads it).

Categories are tags on storages (``tag``); untagged storages allocated before the
``backward`` phase that are still alive when it begins are activations kept for backward,
every other untagged storage is a temporary. Tags may be given after the fact (gradients after
backward, optimizer state after the step): the breakdown is computed when the trace ends.

``PAGED`` storages live outside PyTorch's allocator (bitsandbytes' paged optimizer state, CUDA
unified memory from cudaMallocManaged): they are left out of the allocated count, the breakdown
and the events an allocator model replays, and reported apart as ``Trace.paged_bytes``.

Imports torch at import time: import this module inside functions only (see train/__init__.py).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

WEIGHTS, QUANT_STATE, ADAPTERS = "weights", "quantization state", "adapters"
GRADIENTS, OPTIMIZER, ACTIVATIONS, TEMPORARIES = "gradients", "optimizer state", "activations", "temporaries"
OTHER = "inputs and buffers"
CATEGORIES = (WEIGHTS, QUANT_STATE, ADAPTERS, GRADIENTS, OPTIMIZER, ACTIVATIONS, TEMPORARIES, OTHER)
PAGED = "paged optimizer state"  # not in CATEGORIES: outside the allocator, never in peak_bytes
START = "load"  # the phase of everything live when the trace begins


@dataclass(frozen=True)
class Event:
    """One allocation (``nbytes`` > 0) or free (``nbytes`` < 0) of storage ``storage``, in order."""

    storage: int  # serial number of the storage within the trace, never reused
    nbytes: int
    phase: str


@dataclass
class Trace:
    """What one traced block allocated.

    ``events`` replays the block for an allocator model: each storage's allocation and free with
    its size in bytes, in program order. Storages live at the start come first, with phase "load".
    """

    peak_bytes: int
    phase_peaks: dict[str, int]  # the highest live bytes reached in each phase, in phase order
    breakdown: dict[str, int]  # what was live at the (first) peak, by category; sums to peak_bytes
    peak_phase: str
    events: list[Event] = field(repr=False)
    end_bytes: int = 0  # live when the trace ended
    paged_bytes: int = 0  # the most PAGED bytes live at once (outside the allocator, see the module doc)
    seconds: float = 0.0  # wall time of the traced block (set by the caller that times it)

    def mib(self) -> float:
        return self.peak_bytes / 2**20


def _storage(t: torch.Tensor) -> Optional[torch.UntypedStorage]:
    """The storage behind a dense tensor; None for tensors without one (sparse, nested)."""
    if t.layout != torch.strided or t.is_nested:
        return None
    return t.untyped_storage()


class MemTrace(TorchDispatchMode):
    """Record the allocations and frees of tensor storages while the mode is active.

    Use ``track`` for tensors that exist before the block (parameters, inputs): they count as
    live from the start. Enter a ``FakeTensorMode`` before this mode to trace without memory.

    Example::

        trace = MemTrace()
        trace.track(model.parameters(), WEIGHTS)
        with trace:
            loss = model(x).sum()
            trace.phase("backward")
            loss.backward()
        result = trace.result()
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[int, int]] = {}  # storage._cdata -> (serial, nbytes)
        self._serial = 0
        self._phase = START
        self._phases: list[str] = [START]
        self._tags: dict[int, str] = {}
        self.events: list[Event] = []

    def phase(self, name: str) -> None:
        """Start a new phase (forward, backward, optimizer step); later events belong to it."""
        self._phase = name
        if name not in self._phases:
            self._phases.append(name)

    def track(self, tensors: Iterable[torch.Tensor] | torch.Tensor, category: Optional[str] = None) -> None:
        """Count these tensors' storages as live from now (once each), tagged ``category``."""
        for t in [tensors] if isinstance(tensors, torch.Tensor) else tensors:
            serial = self._see(t)
            if serial is not None and category is not None:
                self._tags[serial] = category

    tag = track  # tagging a storage already seen only sets its category

    def _see(self, t: torch.Tensor) -> Optional[int]:
        st = _storage(t)
        if st is None:
            return None
        key, nbytes = st._cdata, st.nbytes()
        known = self._live.get(key)
        if known is not None:
            serial, old = known
            if old == nbytes:
                return serial
            # resized in place (out= ops, resize_): the old block goes, a new one comes
            self.events.append(Event(serial, -old, self._phase))
            if nbytes == 0:  # emptied in place (FSDP frees its shards so): no block until it grows
                del self._live[key]
                return None
            self.events.append(Event(serial, nbytes, self._phase))
            self._live[key] = (serial, nbytes)
            return serial
        if nbytes == 0:
            # no block for an empty storage (CUDA's checkpointing makes them); seen again once grown
            return None
        serial = self._serial
        self._serial += 1
        self._live[key] = (serial, nbytes)
        self.events.append(Event(serial, nbytes, self._phase))
        weakref.finalize(st, self._freed, key, serial)
        return serial

    def _freed(self, key: int, serial: int) -> None:
        known = self._live.get(key)
        if known is not None and known[0] == serial:
            del self._live[key]
            self.events.append(Event(serial, -known[1], self._phase))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._see(t)
        return out

    @property
    def live_bytes(self) -> int:
        return sum(nbytes for _, nbytes in self._live.values())

    def result(self) -> Trace:
        """The peak, the peak of each phase and the peak's breakdown (call after the block)."""
        return summarize(self.events, self._tags, self._phases)


def summarize(events: list[Event], tags: dict[int, str], phases: list[str]) -> Trace:
    """Replay ``events`` to find the peak and what was live at it.

    Untagged storages are activations when alive as a "backward" phase begins (any step's),
    temporaries otherwise. Storages tagged ``PAGED`` are counted apart (``paged_bytes``).
    """
    paged = {serial for serial, category in tags.items() if category == PAGED}
    paged_live = paged_bytes = 0
    for event in events:
        if event.storage in paged:
            paged_live += event.nbytes
            paged_bytes = max(paged_bytes, paged_live)
    events = [event for event in events if event.storage not in paged]
    live = peak = peak_at = 0
    phase_peaks = {name: 0 for name in phases}
    alive_at_backward: set[int] = set()
    current: set[int] = set()
    previous = START
    for i, event in enumerate(events):
        if event.phase == "backward" and previous != "backward":  # each step's backward begins
            alive_at_backward |= current
        previous = event.phase
        live += event.nbytes
        (current.add if event.nbytes > 0 else current.discard)(event.storage)
        if live > peak:
            peak, peak_at = live, i + 1
        phase_peaks[event.phase] = max(phase_peaks[event.phase], live)
    size, at_peak = {}, set()
    for event in events[:peak_at]:
        if event.nbytes > 0:
            size[event.storage] = event.nbytes
            at_peak.add(event.storage)
        else:
            at_peak.discard(event.storage)
    breakdown = {name: 0 for name in CATEGORIES}
    for serial in at_peak:
        category = tags.get(serial) or (ACTIVATIONS if serial in alive_at_backward else TEMPORARIES)
        breakdown[category] += size[serial]
    peak_phase = events[peak_at - 1].phase if peak_at else START
    return Trace(peak_bytes=peak, phase_peaks=phase_peaks, breakdown=breakdown, peak_phase=peak_phase,
                 events=events, end_bytes=live, paged_bytes=paged_bytes)
