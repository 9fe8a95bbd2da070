"""benchmarks/sdpa_backends.py run here under FakeTensorMode: every layout, dtype and path is
traced, and the math kernel keeps each head's seq x seq matrix (in fp32) where the others keep none."""
from __future__ import annotations

import importlib.util
import json

import pytest

from .conftest import ROOT

pytest.importorskip("torch")


def test_the_cpu_trace_covers_every_case_and_sees_the_math_kernels_matrix(tmp_path):
    spec = importlib.util.spec_from_file_location("sdpa_backends", ROOT / "benchmarks" / "sdpa_backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seq = 512  # where one head's matrix outweighs a head's output, as at training lengths
    assert module.main(["--device", "cpu", "--seq", str(seq), "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sdpa_backends.json").read_text())["rows"]
    assert len(rows) == len(module.LAYOUTS) * len(module.DTYPES) * len(module.PATHS)
    # the CPU has no memory-efficient kernel: only that forced path may fail, and it fails cleanly
    assert {row["path"] for row in rows if "error" in row} <= {"efficient"}
    by = {(r["layout"], r["dtype"], r["path"]): r for r in rows}
    for layout, (heads, kv_heads, dim) in module.LAYOUTS.items():
        for dtype in module.DTYPES:
            matrix = heads * seq * seq * 4  # fp32 whatever the inputs
            assert by[layout, dtype, "math"]["kept"] >= matrix > by[layout, dtype, "gqa"]["kept"]
            if kv_heads < heads:  # repeating costs the copies, not the matrix
                assert by[layout, dtype, "gqa"]["kept"] < by[layout, dtype, "repeat"]["kept"] < \
                    by[layout, dtype, "math"]["kept"]
