"""The caching-allocator model against outcomes derived by hand from PyTorch's documented rules."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipecli.errors import DoesNotFit
from recipecli.fit.allocator import (
    LARGE_BUFFER, SMALL_BUFFER, ReplayOutOfMemory, _Allocator, replay, round_size, simulate,
)

KIB, MIB = 1 << 10, 1 << 20


def allocs(*sizes):
    """Allocations that stay live, ids 0, 1, ..."""
    return [("alloc", i, size) for i, size in enumerate(sizes)]


def test_sizes_round_to_512_bytes_or_to_a_power_of_two_division():
    assert [round_size(s) for s in (1, 512, 513, 1000 * KIB)] == [512, 512, 1024, 1000 * KIB]
    assert round_size(5 * MIB + 1, divisions=4) == 6 * MIB  # 4 MiB .. 8 MiB in steps of 1 MiB
    assert round_size(4 * MIB, divisions=4) == 4 * MIB
    assert round_size(1200, divisions=4) == 1536  # under 512 x 4 bytes: plain 512-byte rounding


def test_a_small_request_reserves_a_2_mib_segment_that_later_small_requests_share():
    one = simulate(allocs(KIB))
    assert (one.allocated_bytes, one.reserved_bytes, one.segments) == (KIB, 2 * MIB, 1)
    many = simulate(allocs(*[KIB] * 2048))  # exactly 2 MiB of 1 KiB blocks
    assert (many.reserved_bytes, many.segments) == (2 * MIB, 1)
    assert simulate(allocs(*[KIB] * 2049)).segments == 2


def test_requests_under_10_mib_share_20_mib_segments_larger_ones_get_their_own():
    five = replay(allocs(5 * MIB))
    assert five.fixed.reserved_bytes == 20 * MIB
    assert simulate(allocs(*[5 * MIB] * 4)).segments == 1
    assert simulate(allocs(*[5 * MIB] * 5)).reserved_bytes == 40 * MIB
    twelve = simulate(allocs(12 * MIB))
    assert (twelve.reserved_bytes, twelve.segments) == (12 * MIB, 1)
    assert simulate(allocs(11 * MIB + 1)).reserved_bytes == 12 * MIB  # rounded up to 2 MiB


def test_a_large_remainder_of_1_mib_or_less_is_handed_out_and_counted_as_allocated():
    peaks = simulate(allocs(int(11.5 * MIB)))  # 12 MiB segment, 0.5 MiB left: not split off
    assert (peaks.allocated_bytes, peaks.requested_bytes) == (12 * MIB, int(11.5 * MIB))


def test_a_freed_block_is_reused_and_split_for_a_smaller_request():
    events = [("alloc", "a", 12 * MIB), ("free", "a"), ("alloc", "b", 8 * MIB), ("alloc", "c", 4 * MIB)]
    peaks = simulate(events)
    assert (peaks.reserved_bytes, peaks.segments, peaks.allocated_bytes) == (12 * MIB, 1, 12 * MIB)


def test_best_fit_takes_the_smallest_cached_block_that_is_large_enough():
    events = allocs(16 * MIB, 12 * MIB) + [("free", 0), ("free", 1),
                                            ("alloc", "x", 11 * MIB), ("alloc", "y", 15 * MIB)]
    peaks = simulate(events)  # 11 MiB into the 12 MiB block, so 15 MiB still finds the 16 MiB one
    assert (peaks.reserved_bytes, peaks.segments) == (28 * MIB, 2)


def test_freed_neighbours_coalesce_into_one_block():
    events = allocs(5 * MIB, 5 * MIB) + [("free", 0), ("free", 1), ("alloc", "big", 18 * MIB)]
    peaks = simulate(events)  # 18 MiB fits the merged 20 MiB segment: no new segment
    assert (peaks.reserved_bytes, peaks.segments) == (20 * MIB, 1)


def test_expandable_segments_map_pages_of_2_mib_small_and_20_mib_large():
    assert simulate(allocs(KIB), expandable_segments=True).reserved_bytes == SMALL_BUFFER
    assert simulate(allocs(12 * MIB), expandable_segments=True).reserved_bytes == LARGE_BUFFER
    both = simulate(allocs(25 * MIB, 3 * KIB, 30 * MIB), expandable_segments=True)
    assert (both.reserved_bytes, both.segments) == (2 * MIB + 60 * MIB, 2)  # one segment per pool


def test_growing_allocations_fragment_fixed_segments_but_not_expandable_ones():
    events, sizes = [], [(12 + 2 * i) * MIB for i in range(20)]
    for i, size in enumerate(sizes):  # each tensor replaces the previous, a little larger
        events.append(("alloc", i, size))
        if i:
            events.append(("free", i - 1))
    result = replay(events)
    assert result.fixed.segments == 20 and result.fixed.reserved_bytes == sum(sizes)
    assert result.expandable.segments == 1
    assert result.expandable.reserved_bytes <= 3 * sizes[-1] < result.fixed.reserved_bytes / 4
    assert result.expandable_is_lower and result.best is result.expandable


def variable_length_steps(steps: int, layers: int, seed: int = 0):
    """Training steps on batches of random length: weights, then activations kept per layer."""
    rng, events, ident = random.Random(seed), [("alloc", "weights", 2_000 * MIB)], 0
    for _ in range(steps):
        tokens = rng.randrange(256, 4096)
        kept = []
        for _ in range(layers):
            for width in (4096, 11008, 4096):  # hidden states, MLP input, attention output
                events.append(("alloc", ident, tokens * width * 2))
                kept.append(ident)
                ident += 1
            events.append(("alloc", "tmp", tokens * 11008 * 4))  # a temporary of the layer
            events.append(("free", "tmp"))
        events.extend(("free", i) for i in reversed(kept))  # backward frees them
    return events


def test_long_variable_length_batches_reserve_less_with_expandable_segments():
    result = replay(variable_length_steps(steps=30, layers=8))
    assert result.fixed.allocated_bytes == result.expandable.allocated_bytes
    assert result.expandable.reserved_bytes < result.fixed.reserved_bytes
    assert result.fixed.reserved_bytes - result.fixed.allocated_bytes > 200 * MIB
    assert result.expandable.reserved_bytes - result.expandable.allocated_bytes <= SMALL_BUFFER + LARGE_BUFFER


def test_without_room_for_a_segment_the_cache_is_emptied_and_the_request_retried():
    events = [("alloc", "a", 12 * MIB), ("free", "a"), ("alloc", "b", 14 * MIB)]
    assert simulate(events).reserved_bytes == 26 * MIB  # no limit: the cache is never emptied
    tight = simulate(events, capacity_bytes=20 * MIB)
    assert (tight.reserved_bytes, tight.cache_flushes, tight.segments) == (14 * MIB, 1, 1)
    with pytest.raises(ReplayOutOfMemory) as error:
        simulate(events + [("alloc", "c", 8 * MIB)], capacity_bytes=20 * MIB)
    assert isinstance(error.value, DoesNotFit) and "20,971,520" in str(error.value)


def test_expandable_segments_give_free_end_pages_back_on_oom():
    events = [("alloc", "a", 50 * MIB), ("free", "a"), ("alloc", "b", KIB), ("alloc", "c", 30 * MIB)]
    peaks = simulate(events, expandable_segments=True, capacity_bytes=64 * MIB)
    assert peaks.reserved_bytes == 62 * MIB and peaks.cache_flushes == 0  # 60 MiB large + 2 MiB small
    small = [("alloc", i, MIB) for i in range(8)] + [("free", i) for i in range(8)]
    peaks = simulate(small + [("alloc", "c", 30 * MIB)], expandable_segments=True,
                     capacity_bytes=40 * MIB)  # 8 MiB of free small pages unmapped for 40 MiB
    assert (peaks.reserved_bytes, peaks.segments, peaks.cache_flushes) == (40 * MIB, 1, 1)


def test_max_split_size_keeps_oversize_blocks_for_oversize_requests_within_20_mib():
    base = [("alloc", "a", 100 * MIB), ("free", "a")]
    assert simulate(base + [("alloc", "b", 30 * MIB)]).reserved_bytes == 100 * MIB
    limited = dict(max_split_size_mb=40)
    assert simulate(base + [("alloc", "b", 30 * MIB)], **limited).reserved_bytes == 130 * MIB
    assert simulate(base + [("alloc", "b", 90 * MIB)], **limited).reserved_bytes == 100 * MIB
    assert simulate(base + [("alloc", "b", 70 * MIB)], **limited).reserved_bytes == 170 * MIB
    released = simulate(base + [("alloc", "b", 70 * MIB)], capacity_bytes=120 * MIB, **limited)
    assert (released.reserved_bytes, released.segments) == (100 * MIB, 1)


@pytest.mark.parametrize("events, message", [
    (allocs(1, 1)[:1] * 2, "made twice"),
    ([("free", "x")], "not allocated"),
    ([("resize", 1, 2)], "unknown event"),
])
def test_a_malformed_trace_is_refused(events, message):
    with pytest.raises(ValueError, match=message):
        simulate(events)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="over 20"):
        simulate([], max_split_size_mb=20)
    with pytest.raises(ValueError, match="power of two"):
        simulate([], roundup_power2_divisions=3)


def test_zero_byte_allocations_take_nothing():
    assert simulate([("alloc", 1, 0), ("free", 1)]).reserved_bytes == 0


sizes = st.one_of(st.integers(0, 2 * MIB), st.integers(MIB, 64 * MIB))


@st.composite
def traces(draw, lifo: bool = False, size=sizes):
    """Random alloc/free sequences; with ``lifo`` frees undo the latest live allocation."""
    events, live = [], []
    for ident in range(draw(st.integers(1, 60))):
        while live and draw(st.booleans()):
            victim = live.pop() if lifo else live.pop(draw(st.integers(0, len(live) - 1)))
            events.append(("free", victim))
        events.append(("alloc", ident, draw(size)))
        live.append(ident)
    return events


@settings(max_examples=150, deadline=None)
@given(traces(), st.booleans(), st.sampled_from([None, 40]))
def test_reserved_is_allocated_plus_cached_at_every_step(events, expandable, max_split):
    alloc, live = _Allocator(expandable, max_split, 0, None), {}
    for event in events:
        if event[0] == "alloc":
            live[event[1]] = alloc.malloc(event[2]) if event[2] else None
        else:
            block = live.pop(event[1])
            if block is not None:
                alloc.free(block)
        cached = sum(entry[0] for pool in alloc.pools for entry in pool.free)
        assert alloc.reserved == alloc.allocated + cached and alloc.allocated >= alloc.requested
    peaks = simulate(events, expandable_segments=expandable, max_split_size_mb=max_split)
    assert peaks.reserved_bytes >= peaks.allocated_bytes >= peaks.requested_bytes


@settings(max_examples=150, deadline=None)
@given(traces(lifo=True, size=st.integers(MIB + 1, 64 * MIB)), traces(lifo=True, size=st.integers(1, MIB)))
def test_expandable_slack_of_stack_ordered_traces_is_under_a_page_per_pool(large, small):
    for events, page in ((large, LARGE_BUFFER), (small, SMALL_BUFFER)):
        peaks = simulate(events, expandable_segments=True)
        assert 0 <= peaks.reserved_bytes - peaks.allocated_bytes < page


# --- the estimate's training step, replayed (fit/reserve.py) ---------------------------------


def _shipped_steps():
    from recipecli.fit.gpu_catalog import card
    from recipecli.fit.verdict import check
    from recipecli.read.load import load_recipe
    from recipecli.shipped import RECIPES_DIR

    recipes = [p for p in sorted(RECIPES_DIR.glob("*.yaml"))]
    return [check(load_recipe(p), card("rtx2080")).estimate.step for p in recipes]


def test_expandable_segments_need_no_more_for_a_training_step():
    """Why `recipe run` turns them on: for the step of every shipped recipe the allocator model
    needs no more reserve with expandable segments, and less for most."""
    from recipecli.fit.reserve import reserved_beyond_live

    pairs = [(reserved_beyond_live(step, True), reserved_beyond_live(step, False)) for step in _shipped_steps()]
    assert all(grown <= fixed for grown, fixed in pairs)
    assert sum(grown < fixed for grown, fixed in pairs) > len(pairs) // 2
    assert all(grown <= SMALL_BUFFER + 4 * LARGE_BUFFER for grown, _ in pairs)  # a few pages at most


def test_the_reserve_is_the_least_the_step_runs_in():
    from recipecli.fit.reserve import RESOLUTION, reserved_beyond_live, step_events

    step = max(_shipped_steps(), key=lambda s: s.saved)
    events = step_events(step)
    live = simulate(events).requested_bytes
    need = live + reserved_beyond_live(step, False)
    simulate(events, capacity_bytes=need)  # runs in it, emptying the cache when it must
    with pytest.raises(ReplayOutOfMemory):
        simulate(events, capacity_bytes=need - RESOLUTION - 1)
    assert need <= simulate(events).reserved_bytes  # never more than a card with room to spare shows


@pytest.mark.parametrize("capability, mib", [((7, 5), 300), ((7, 0), 300), ((6, 1), 300), ((8, 6), 400),
                                             ((8, 9), 400), ((9, 0), 768), ((12, 0), 768), (None, 500)])
def test_the_cuda_context_follows_the_compute_capability(capability, mib):
    from recipecli.fit.gpu_catalog import context_bytes, workspace_bytes

    assert context_bytes(capability) == mib * MIB
    assert workspace_bytes(capability) == (32 * MIB if capability is None or capability >= (9, 0) else 8_519_680)
