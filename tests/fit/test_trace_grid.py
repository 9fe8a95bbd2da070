"""The instant estimate against the committed full-size traces (benchmarks/trace_grid.json).

Reads what benchmarks/trace_grid.py traced (it never traces here: that takes torch and minutes)
and holds ``estimate().allocated_bytes`` to each traced peak through the same ``setup_for``.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

GRID_SCRIPT = Path(__file__).parents[2] / "benchmarks" / "trace_grid.py"


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("trace_grid", GRID_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def errors(grid):
    done = grid.load()
    return {rid: grid.compare(record)[2] for rid, record in done.items()
            if rid in {grid.row_id(row) for row in grid.GRID}}


def test_the_grid_covers_what_issue_8_asks(grid):
    rows = grid.GRID
    assert len(rows) >= 150
    assert {r["model"] for r in rows} == set(grid.MODELS)
    assert {r["attention"] for r in rows} == {"sdpa", "eager", "flash_attention_2"}
    assert {r["optimizer"] for r in rows} == {"adamw_torch", "sgd", "adamw_8bit", "paged_adamw_8bit"}
    assert {r["method"] for r in rows} == {"qlora", "lora", "full"}
    assert {(r["weight_bits"], r["quant_type"], r["double_quant"]) for r in rows if r["method"] == "qlora"} == {
        (4, "nf4", False), (4, "fp4", True), (8, "nf4", False)}  # quant_type is unused at 8 bits
    assert {r["precision"] for r in rows} == {"fp32", "bf16", "fp16"}
    assert any(r["packing"] for r in rows) and any(r["grad_accum"] > 1 for r in rows)
    assert {r["gradient_checkpointing"] for r in rows} == {True, False}
    assert min(r["seq_len"] for r in rows) == 256 and max(r["seq_len"] for r in rows) == 8192
    assert min(r["micro_batch"] for r in rows) == 1 and max(r["micro_batch"] for r in rows) == 8
    # a vocabulary of 128k or more, where TRL's head works in several tiles
    assert max(grid.setup_for(r)[0].vocab_size for r in rows) >= 128_000


def test_every_row_was_traced_at_two_steps(grid):
    done = grid.load()
    missing = [grid.row_id(r) for r in grid.GRID if grid.row_id(r) not in done]
    assert not missing, f"not traced yet: run benchmarks/trace_grid.py ({len(missing)} rows, e.g. {missing[0]})"
    for record in done.values():
        assert set(record["versions"]) == {*grid.LIBRARIES, "tracer"}
        # the second step's forward runs with the first one's optimizer state alive
        assert record["breakdown"]["optimizer state"] > 0 or record["row"]["optimizer"] == "sgd"


def test_estimate_matches_the_traced_peaks(errors):
    size = sorted(abs(e) for e in errors.values())
    assert len(size) >= 150
    assert statistics.median(size) <= 0.02
    for rid, error in errors.items():
        assert abs(error) <= 0.06, f"{rid}: {error:+.1%}"


def test_the_setup_describes_the_traced_stack(grid):
    row = next(r for r in grid.GRID if r["method"] == "lora")
    _, setup = grid.setup_for(row)
    # fp32 weights and compute without autocast, TRL's fused head, fp32 adapters, full rows and
    # the GPU's kernels, which the trace stands in for (train/probe.py)
    assert (setup.weight_bits, setup.compute_bytes, setup.autocast) == (32, 4, False)
    assert (setup.loss, setup.adapter_bytes, setup.padded) == ("chunked", 4, False)
