"""PyTorch's CUDA caching allocator, modelled: what a traced allocation sequence reserves.

A memory trace of a training step (every allocation and free, in order) gives the allocated
peak exactly; what ``torch.cuda.max_memory_reserved`` and nvidia-smi show also depends on how
the caching allocator packs those tensors into segments. ``replay`` runs the trace through a
model of that allocator twice, with ``expandable_segments`` off and on, so the caller can pick
the lower reserved peak and report which setting it assumed.

The rules were read from pytorch/pytorch ``c10/cuda/CUDACachingAllocator.cpp`` at commit
001074d25084 (a main-branch version of about 2024, exact release not pinned down; the pinned torch
2.13 may differ: validate on a GPU with ``torch.cuda.memory_stats``), ``DeviceCachingAllocator``,
and ``CachingAllocatorConfig::parseMaxSplitSize`` for the option's lower limit:

- ``round_size``: sizes round up to 512 bytes, or to the next 1/N of a power of two with
  ``roundup_power2_divisions:N`` (``roundup_power2_next_division``).
- ``get_pool``: rounded sizes <= 1 MiB go to the small pool, larger ones to the large pool.
- ``get_allocation_size``: a new segment is 2 MiB for the small pool, 20 MiB for requests under
  10 MiB, else the request rounded up to 2 MiB.
- ``get_free_block``: best fit, the smallest cached block of the pool that is large enough (ties
  by address); with ``max_split_size_mb`` an oversize block (>= the limit) serves only oversize
  requests, and only if it is less than 20 MiB larger than the request.
- ``should_split``: the remainder stays a cached block if >= 512 bytes in the small pool (and
  everywhere with expandable segments), in the large pool only if > 1 MiB and the request is
  under ``max_split_size``; otherwise the whole block is handed out and counted as allocated.
- ``free_block`` / ``try_merge_blocks``: a freed block merges with free neighbours of its segment.
- ``malloc``: segments are never returned to the driver except when a new one does not fit in
  the card (``capacity_bytes`` here): then oversize cached blocks are released
  (``release_available_cached_blocks``), then every unsplit cached segment
  (``release_cached_blocks``, what ``torch.cuda.empty_cache`` does), and the allocation retried.
- ``expandable_segments`` (``ExpandableSegment``, ``try_allocate_expandable_block``): one segment
  per pool whose mapped part grows by pages of 2 MiB (small pool) or 20 MiB (large pool); a request
  no cached block fits extends the free block at the end of the segment, if any, by as many pages
  as are missing. A free block at the end counts as unbounded in the best-fit search, so holes
  are filled first.

Not modelled: streams (one stream, so no per-stream caches, ``record_stream`` or events), CUDA
graph private pools, ``garbage_collection_threshold`` and ``set_per_process_memory_fraction``,
per-size ``roundup_power2_divisions`` lists (one N for all sizes), the memory other libraries
take outside the allocator, and, with expandable segments, unmapping free pages in the middle
of a segment on OOM (only free pages at its end are given back).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..errors import DoesNotFit

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: largest request of the small pool
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segment, and small-pool page when expandable
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc: requests below share 20 MiB segments
ROUND_LARGE = 2 << 20  # kRoundLarge
LARGE_BUFFER = 20 << 20  # kLargeBuffer: shared large segment, and large-pool page when expandable
_UNBOUNDED = 1 << 62  # the unmapped address space after an expandable segment's last block


@dataclass(frozen=True)
class AllocatorPeaks:
    """What one allocator setting makes of a trace, as ``torch.cuda.memory_stats`` counts it.

    Attributes:
        allocated_bytes: peak of ``allocated_bytes``: block sizes, rounded and including
            remainders too small to split off (``max_memory_allocated``).
        reserved_bytes: peak of ``reserved_bytes``: segment sizes, or mapped pages when
            expandable (``max_memory_reserved``).
        requested_bytes: peak of the sizes as requested, before rounding.
        segments: peak number of segments (an expandable segment counts once).
        cache_flushes: times a segment did not fit and cached memory was given back first.
    """

    allocated_bytes: int
    reserved_bytes: int
    requested_bytes: int
    segments: int
    cache_flushes: int


@dataclass(frozen=True)
class AllocatorReplay:
    """A trace replayed with ``expandable_segments`` off (``fixed``) and on (``expandable``)."""

    fixed: AllocatorPeaks
    expandable: AllocatorPeaks

    @property
    def expandable_is_lower(self) -> bool:
        """Whether ``expandable_segments:True`` gives the lower reserved peak."""
        return self.expandable.reserved_bytes < self.fixed.reserved_bytes

    @property
    def best(self) -> AllocatorPeaks:
        """The setting with the lower reserved peak (fixed segments on a tie)."""
        return self.expandable if self.expandable_is_lower else self.fixed


class ReplayOutOfMemory(DoesNotFit):
    """The trace needs more than ``capacity_bytes`` even after the cache was emptied."""


def round_size(size: int, divisions: int = 0) -> int:
    """The block size the allocator hands out for a request of ``size`` bytes (``round_size``)."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    if divisions > 1 and size > MIN_BLOCK * divisions and size & (size - 1):
        step = (1 << (size.bit_length() - 1)) // (1 << (divisions.bit_length() - 1))
        if step == 0:
            return 1 << size.bit_length()
        return -(-size // step) * step
    return -(-size // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    """Bytes a new (non-expandable) segment gets for a rounded request (``get_allocation_size``)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class _Block:
    __slots__ = ("addr", "size", "allocated", "requested", "prev", "next", "pool")

    def __init__(self, pool: _Pool, addr: int, size: int, prev: Optional[_Block] = None,
                 nxt: Optional[_Block] = None):
        self.pool, self.addr, self.size, self.allocated, self.requested = pool, addr, size, False, 0
        self.prev, self.next = prev, nxt


class _Pool:
    """Cached free blocks sorted by (size, address), and the expandable segment's end."""

    __slots__ = ("small", "page", "free", "last", "mapped")

    def __init__(self, small: bool):
        self.small, self.page = small, SMALL_BUFFER if small else LARGE_BUFFER
        self.free: list = []  # (size, addr, block); addresses are unique, blocks never compared
        self.last: Optional[_Block] = None  # expandable: the block at the end of the mapped part
        self.mapped = 0  # expandable: bytes mapped

    def add(self, b: _Block) -> None:
        bisect.insort(self.free, (b.size, b.addr, b))

    def remove(self, b: _Block) -> None:
        del self.free[bisect.bisect_left(self.free, (b.size, b.addr))]


class _Allocator:
    """One ``DeviceCachingAllocator`` on one stream; sizes in bytes."""

    def __init__(self, expandable: bool, max_split_size_mb: Optional[int], divisions: int,
                 capacity: Optional[int]):
        self.expandable, self.divisions, self.capacity = expandable, divisions, capacity
        self.max_split = _UNBOUNDED if max_split_size_mb is None else max_split_size_mb << 20
        self.pools = (_Pool(small=True), _Pool(small=False))
        self.next_addr = 0
        self.allocated = self.reserved = self.requested = self.segments = self.flushes = 0
        self.peak = [0, 0, 0, 0]  # allocated, reserved, requested, segments

    def malloc(self, size: int) -> _Block:
        rounded = round_size(size, self.divisions)
        pool = self.pools[rounded > SMALL_SIZE]
        block = self._cached(pool, rounded) or self._grow(pool, rounded)
        remaining = block.size - rounded
        if (remaining >= MIN_BLOCK if pool.small or self.expandable
                else rounded < self.max_split and remaining > SMALL_SIZE):
            rest = _Block(pool, block.addr + rounded, remaining, block, block.next)
            if block.next:
                block.next.prev = rest
            block.next, block.size = rest, rounded
            if pool.last is block:
                pool.last = rest
            pool.add(rest)
        block.allocated, block.requested = True, size
        self.allocated += block.size
        self.requested += size
        peak = self.peak
        peak[0], peak[2] = max(peak[0], self.allocated), max(peak[2], self.requested)
        return block

    def free(self, block: _Block) -> None:
        pool = block.pool
        block.allocated = False
        self.allocated -= block.size
        self.requested -= block.requested
        prev, nxt = block.prev, block.next
        if prev is not None and not prev.allocated:
            pool.remove(prev)
            block.addr, block.size, block.prev = prev.addr, block.size + prev.size, prev.prev
            if block.prev:
                block.prev.next = block
        if nxt is not None and not nxt.allocated:
            pool.remove(nxt)
            block.size, block.next = block.size + nxt.size, nxt.next
            if block.next:
                block.next.prev = block
            if pool.last is nxt:
                pool.last = block
        pool.add(block)

    def _cached(self, pool: _Pool, size: int) -> Optional[_Block]:
        """The best-fitting cached block, taken out of the pool (``get_free_block``)."""
        free = pool.free
        i = bisect.bisect_left(free, (size,))
        if i == len(free):
            return None
        if self.expandable:  # the end block can grow without bound: prefer a hole that fits
            reach = lambda j: free[j][0] + (_UNBOUNDED if free[j][2] is pool.last else 0)  # noqa: E731
            while i + 1 < len(free) and reach(i + 1) < reach(i):
                i += 1
        found = free[i][0]
        if size < self.max_split <= found or (size >= self.max_split and found >= size + LARGE_BUFFER):
            return None
        return free.pop(i)[2]

    def _grow(self, pool: _Pool, size: int) -> _Block:
        """A new segment, or more pages for the expandable one; empties the cache on OOM."""
        need = self._need(pool, size)
        if not self._fits(need):
            if not (self._release_oversize(pool, size) and self._fits(need)):
                self.flushes += 1
                self._release_all()
                need = self._need(pool, size)  # emptying an expandable segment's end adds pages
                if not self._fits(need):
                    raise ReplayOutOfMemory(
                        f"the trace needs {self.reserved + need:,} bytes reserved at a "
                        f"{size:,}-byte request, over the {self.capacity:,} available")
        if not self.expandable:
            block = _Block(pool, self.next_addr, need)
            self.next_addr += need
            self.segments += 1
        else:
            if pool.last is None:
                self.segments += 1
            if pool.last is not None and not pool.last.allocated:
                block = pool.last
                pool.remove(block)
                block.size += need
            else:
                block = _Block(pool, pool.mapped, need, pool.last)
                if pool.last:
                    pool.last.next = block
                pool.last = block
            pool.mapped += need
        self.reserved += need
        peak = self.peak
        peak[1], peak[3] = max(peak[1], self.reserved), max(peak[3], self.segments)
        return block

    def _fits(self, need: int) -> bool:
        return self.capacity is None or self.reserved + need <= self.capacity

    def _need(self, pool: _Pool, size: int) -> int:
        if not self.expandable:
            return segment_size(size)
        last = pool.last
        have = last.size if last is not None and not last.allocated else 0
        return max(0, -(-(size - have) // pool.page) * pool.page)

    def _release_oversize(self, pool: _Pool, size: int) -> bool:
        """Frees cached oversize segments to make room (``release_available_cached_blocks``)."""
        if self.max_split == _UNBOUNDED or self.expandable:
            return False
        key = max(size, self.max_split)
        whole = [e[2] for e in pool.free
                 if e[0] >= self.max_split and e[2].prev is None and e[2].next is None]
        fit = next((b for b in whole if b.size >= key), None)
        if fit is not None:
            self._drop(pool, fit)
            return True
        released = 0
        for block in reversed(whole):  # none is large enough: free the largest until there is room
            if released >= key:
                break
            released += block.size
            self._drop(pool, block)
        return released >= key

    def _release_all(self) -> None:
        """Gives every wholly free segment, or free end pages, back (``release_cached_blocks``)."""
        for pool in self.pools:
            if not self.expandable:
                for e in [e for e in pool.free if e[2].prev is None and e[2].next is None]:
                    self._drop(pool, e[2])
                continue
            last = pool.last
            if last is None or last.allocated:
                continue
            keep = -(-last.addr // pool.page) * pool.page  # pages partly used stay mapped
            cut = pool.mapped - keep
            if cut <= 0:
                continue
            pool.remove(last)
            pool.mapped, last.size, self.reserved = keep, last.size - cut, self.reserved - cut
            if last.size:
                pool.add(last)
            else:
                pool.last = last.prev
                if last.prev:
                    last.prev.next = None
            if pool.mapped == 0:
                self.segments -= 1

    def _drop(self, pool: _Pool, block: _Block) -> None:
        pool.remove(block)
        self.reserved -= block.size
        self.segments -= 1


def simulate(events: Iterable[Sequence], *, expandable_segments: bool = False,
             max_split_size_mb: Optional[int] = None, roundup_power2_divisions: int = 0,
             capacity_bytes: Optional[int] = None) -> AllocatorPeaks:
    """Replays a trace through one allocator setting.

    Args:
        events: ``("alloc", id, size_bytes)`` and ``("free", id)`` in program order; ids are any
            hashable value, unique among live allocations. A size of 0 takes no memory.
        expandable_segments: ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``.
        max_split_size_mb: the option of that name (must be over 20); None for unlimited.
        roundup_power2_divisions: N of ``roundup_power2_divisions:N``; 0 rounds to 512 bytes.
        capacity_bytes: memory the allocator may reserve (the card less the CUDA context); None
            for a card that never runs out, so the cache is never emptied.

    Returns:
        the peaks of the replay.

    Raises:
        ValueError: an id allocated twice or freed without being allocated, or a bad option.
        ReplayOutOfMemory: the trace needs more than ``capacity_bytes`` after emptying the cache.
    """
    if max_split_size_mb is not None and max_split_size_mb <= LARGE_BUFFER >> 20:
        raise ValueError(f"max_split_size_mb must be over {LARGE_BUFFER >> 20}, not {max_split_size_mb}")
    if roundup_power2_divisions and roundup_power2_divisions & (roundup_power2_divisions - 1):
        raise ValueError(f"roundup_power2_divisions must be a power of two, not {roundup_power2_divisions}")
    alloc = _Allocator(expandable_segments, max_split_size_mb, roundup_power2_divisions, capacity_bytes)
    live: dict = {}
    for event in events:
        if event[0] == "alloc":
            _, key, size = event
            if key in live:
                raise ValueError(f"allocation {key!r} made twice without a free in between")
            live[key] = alloc.malloc(size) if size else None
        elif event[0] == "free":
            block = live.pop(event[1], _UNBOUNDED)
            if block is _UNBOUNDED:
                raise ValueError(f"free of {event[1]!r}, which is not allocated")
            if block is not None:
                alloc.free(block)
        else:
            raise ValueError(f"unknown event {event!r}: expected ('alloc', id, size) or ('free', id)")
    allocated, reserved, requested, segments = alloc.peak
    return AllocatorPeaks(allocated, reserved, requested, segments, alloc.flushes)


def replay(events: Iterable[Sequence], **options) -> AllocatorReplay:
    """Replays a trace with ``expandable_segments`` off and on; options as for ``simulate``."""
    events = events if isinstance(events, Sequence) else list(events)
    return AllocatorReplay(simulate(events, expandable_segments=False, **options),
                           simulate(events, expandable_segments=True, **options))
