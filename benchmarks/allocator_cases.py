"""Replay speed and outcome of the caching-allocator model on traces shaped like training steps.

Each case is a synthetic trace of about 10^5 events: weights, then per step the activations a
decoder keeps for backward (sizes follow the batch's token count) and a per-layer temporary,
freed in reverse. Reports events, seconds per replay (median of the repeats), and the peaks with
expandable segments off and on.

    .venv/bin/python benchmarks/allocator_cases.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipecli.fit.allocator import replay  # noqa: E402

MIB = 1 << 20


def trace(steps: int, layers: int, fixed_length: bool, seed: int = 0) -> list:
    """Weights, then ``steps`` forward/backward passes of a ``layers``-deep decoder."""
    rng, events, ident = random.Random(seed), [("alloc", "weights", 4_000 * MIB)], 0
    for _ in range(steps):
        tokens = 4096 if fixed_length else rng.randrange(256, 4096)
        kept = []
        for _ in range(layers):
            for width in (4096, 4096, 11008, 11008, 4096):
                events.append(("alloc", ident, tokens * width * 2))
                kept.append(ident)
                ident += 1
            events.append(("alloc", "tmp", tokens * 11008 * 4))
            events.append(("free", "tmp"))
        events.extend(("free", i) for i in reversed(kept))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| case | events | s per replay (both settings) | fixed reserved MiB "
          "| expandable reserved MiB | allocated MiB |")
    print("|---|---|---|---|---|---|")
    for name, fixed_length in (("fixed length", True), ("variable length", False)):
        events = trace(steps=520, layers=16, fixed_length=fixed_length)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = replay(events)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {len(events):,} | {statistics.median(times):.3f} | "
              f"{result.fixed.reserved_bytes / MIB:,.0f} | {result.expandable.reserved_bytes / MIB:,.0f} | "
              f"{result.fixed.allocated_bytes / MIB:,.0f} |")


if __name__ == "__main__":
    main()
