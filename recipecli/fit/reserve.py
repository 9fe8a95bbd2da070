"""What PyTorch's caching allocator reserves for a training step, from the estimate's own sizes.

fit-check knows the tensors of a step (weights, adapters, gradients, optimizer state, what each
layer keeps for backward, the loss working set, the dequantized 4-bit layer) but not the exact
order of every allocation. ``step_events`` writes that step as the sequence the training loop
makes, layer by layer, and allocator.py replays it: what the allocator must hold beyond the live
tensors (block rounding, segments it cannot reuse) comes from PyTorch's documented rules instead
of a flat percentage. A few hundred events per replay, a dozen replays per recipe: milliseconds.

The sequence, over four steps (the optimizer state only exists from the end of the first step,
and lands in whatever the first step's activations left free):

    load: persistent tensors (weights, quantization constants, adapters), a layer at a time
    forward: per layer, the 4-bit layer dequantized and freed, then what the layer keeps
    loss: its working set at the end of forward, freed as backward starts
    backward: per layer from the last, its working set (and a dequantized layer) while it runs,
          its gradients, then what it kept is freed
    optimizer step: the state on the first step, the step's temporaries, then zero_grad frees
          the gradients unless accumulation keeps them

The steps' batches grow to the longest (BATCH_FRACTIONS): without packing, batches are padded to
their own longest example, and growing lengths are the worst order for fixed segments (blocks
cut for a shorter batch cannot hold the next one's tensors), so the figure errs on the safe side;
the allocator's cache flush on out-of-memory bounds what that costs (``reserved_beyond_live``).
With ``expandable_segments`` the segment grows in place instead. Checked with allocator.replay
on this sequence for the shipped recipes and the published runs of benchmarks/calibration.py,
and on tests/fit/test_allocator.py's variable-length steps: expandable segments never need more
than fixed ones for these patterns, and need less when the lengths change (tests/fit/
test_allocator.py::test_expandable_segments_need_no_more_for_a_training_step).

Not modelled: the dozen tensors a layer really keeps are one tensor here, and temporaries that
live inside one kernel's call are left out (the estimate does not size them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .allocator import ReplayOutOfMemory, simulate

BATCH_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # the steps' batch lengths, as fractions of the longest
RESOLUTION = 2 << 20  # of the least reserve: the allocator's own rounding of large segments
# Bisection steps at most: beyond ~0.01 % of the figure a finer answer changes no verdict, and an
# absurd architecture (validate allows any positive size) must still be answered at once.
MAX_BISECTIONS = 14
# Layers replayed one by one at most; deeper stacks are replayed in this many equal groups (the
# deepest published decoders have ~130 layers), which keeps a replay to a few thousand events.
MAX_LAYERS = 160


@dataclass(frozen=True)
class StepSizes:
    """The tensors of one training step on one GPU, in bytes, as estimate.py counts them."""

    layers: int
    persistent: int  # weights, quantization constants and adapters, loaded before training
    gradients: int  # one per trainable weight, made layer by layer in backward
    keep_gradients: bool  # gradient accumulation keeps them into the next forward
    states: int  # optimizer state, made at the first optimizer step
    step_temp: int  # temporaries of the optimizer step
    saved: int  # what the forward keeps for backward, all layers together
    in_backward: int  # one layer's working set while it runs backward
    loss: int  # the loss working set at the end of the forward pass
    dequant: int  # one 4-bit layer dequantized for its matmul; 0 without a quantized base


def step_events(step: StepSizes) -> list[tuple]:
    """The steps of BATCH_FRACTIONS as ``("alloc", id, bytes)`` / ``("free", id)`` events (allocator.simulate)."""
    n = min(max(step.layers, 1), MAX_LAYERS)
    events: list[tuple] = []
    alloc = lambda key, size: events.append(("alloc", key, int(size)))  # noqa: E731
    free = lambda key: events.append(("free", key))  # noqa: E731

    def churn(key):  # a 4-bit layer dequantized for one matmul, freed after it
        if step.dequant:
            alloc(key, step.dequant)
            free(key)

    for i in range(n):
        alloc(("persistent", i), step.persistent / n)
    for s, fraction in enumerate(BATCH_FRACTIONS):
        for i in range(n):
            churn(("dequant", s, i))
            alloc(("saved", s, i), step.saved * fraction / n)
        alloc(("loss", s), step.loss * fraction)
        free(("loss", s))
        for i in reversed(range(n)):
            alloc(("backward", s, i), step.in_backward * fraction)
            churn(("dequant_backward", s, i))
            if s == 0 or not step.keep_gradients:
                alloc(("gradient", s, i), step.gradients / n)
            free(("backward", s, i))
            free(("saved", s, i))
        if s == 0:
            for i in range(n):
                alloc(("state", i), step.states / n)
        alloc(("step", s), step.step_temp)
        free(("step", s))
        if not step.keep_gradients:
            for i in range(n):
                free(("gradient", s, i))
    return events


@lru_cache(maxsize=4096)
def reserved_beyond_live(step: StepSizes, expandable_segments: bool) -> int:
    """Bytes the caching allocator must hold beyond the live tensors of the step to run it.

    The least reserve under which the replay does not run out of memory, less the replay's peak
    of live (requested) bytes. The least reserve, not the reserved peak of an unlimited card: when a new segment
    does not fit, the allocator gives its cached segments back and retries, so on a card with
    room to spare max_memory_reserved shows more than the step needs, and on a card that is
    nearly full it shows this. Found by bisection to RESOLUTION (or MAX_BISECTIONS halvings)
    between the live peak and the unlimited reserved peak; cached, since suggest.py re-estimates many variants of one recipe.
    """
    events = step_events(step)
    unlimited = simulate(events, expandable_segments=expandable_segments)
    low, high = unlimited.requested_bytes, unlimited.reserved_bytes
    for _ in range(MAX_BISECTIONS):
        if high - low <= RESOLUTION:
            break
        middle = (low + high) // 2
        try:
            simulate(events, expandable_segments=expandable_segments, capacity_bytes=middle)
            high = middle
        except ReplayOutOfMemory:
            low = middle
    return high - unlimited.requested_bytes
