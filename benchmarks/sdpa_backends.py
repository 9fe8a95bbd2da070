"""Which kernel torch's scaled_dot_product_attention picks, and what one attention call keeps
for backward, for the head layouts of the shipped models: one short script for a lent GPU.

transformers' sdpa attention passes ``enable_gqa=True`` when a model has fewer key/value heads
than query heads and the batch has no mask (every row full, or packed), and otherwise repeats the
key/value heads itself (``repeat_kv``). torch 2.13's docs say that on CUDA grouped-query attention
"works only for Flash_attention and math kernel": where flash cannot run (fp32, or a card before
compute capability 8.0 such as the reference RTX 2080) the math kernel runs, which makes the
seq x seq attention matrix (in fp32 for half inputs). This records, per head layout (TinyLlama
32/4 heads of 64, Mistral 32/8 of 128, Gemma 2B 8/1 of 256, Llama-2 32/32 of 128), dtype and
sequence length, for the call as transformers makes it (``gqa``: enable_gqa, causal; ``repeat``:
heads repeated first), for the math kernel forced (what a card before 8.0 runs) and for the
memory-efficient kernel forced on grouped heads (``efficient``: an error where it takes none):

- the backend ``torch._fused_sdp_choice`` names for the call;
- ``kept``: bytes allocated after the forward (output and what autograd saved) beyond the inputs;
- ``forward_peak`` / ``backward_peak``: the highest allocated during each, beyond the inputs.

On CUDA the figures are torch.cuda's counters. With ``--device cpu`` the same calls run under
FakeTensorMode inside MemTrace (the CPU trace's own counter): the math rows there are what
``recipe probe`` traces, to set beside the GPU's. Results: OUT/benchmarks/sdpa_backends.json.

    python3 benchmarks/sdpa_backends.py                      # on the GPU machine (no wheels needed)
    .venv/bin/python benchmarks/sdpa_backends.py --device cpu --seq 64   # here: the fake trace
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYOUTS = {  # name -> (query heads, key/value heads, head dim), from the models' config.json
    "tinyllama-32/4-d64": (32, 4, 64),
    "mistral-32/8-d128": (32, 8, 128),
    "gemma2b-8/1-d256": (8, 1, 256),
    "llama2-32/32-d128": (32, 32, 128),
}
DTYPES = ("float32", "float16", "bfloat16")
# efficient: torch's memory-efficient kernel forced on grouped heads, the kernel a card before 8.0
# would want for fp16: an error ("No available kernel") where it takes no grouped heads
PATHS = ("gqa", "repeat", "math", "efficient")


def _call(torch, path: str, q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    groups = q.shape[1] // k.shape[1]
    if path == "repeat":
        k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        return sdpa(q, k, v, is_causal=True)
    forced = {"math": sdpa_kernel([SDPBackend.MATH]), "efficient": sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])}.get(
        path, contextlib.nullcontext())
    with forced:
        return sdpa(q, k, v, is_causal=True, enable_gqa=groups > 1)


def _backend(torch, path: str, q, k, v) -> str:
    from torch.nn.attention import SDPBackend

    if path in ("math", "efficient"):
        return {"math": "MATH", "efficient": "EFFICIENT_ATTENTION"}[path]
    groups = q.shape[1] // k.shape[1]
    if path == "repeat":
        k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        groups = 1
    if q.device.type != "cuda":
        return "cpu"
    chosen = torch._fused_sdp_choice(q, k, v, None, 0.0, True, scale=None, enable_gqa=groups > 1)
    return SDPBackend(chosen).name


class _CudaCounter:
    def __init__(self, torch):
        self.torch = torch

    @contextlib.contextmanager
    def region(self):
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        yield
        self.torch.cuda.synchronize()

    def now(self) -> int:
        return self.torch.cuda.memory_allocated()

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated()


class _TraceCounter:
    """MemTrace's live bytes and their peak since the region began (the CPU trace's own view)."""

    def __init__(self, trace):
        self.trace, self._peak = trace, 0

    @contextlib.contextmanager
    def region(self):
        start = len(self.trace.events)
        live = self.trace.live_bytes
        yield
        peak = running = live
        for event in self.trace.events[start:]:
            running += event.nbytes
            peak = max(peak, running)
        self._peak = peak

    def now(self) -> int:
        return self.trace.live_bytes

    def peak(self) -> int:
        return self._peak


def measure_case(torch, counter, device: str, heads: int, kv_heads: int, dim: int, dtype: str, seq: int,
                 path: str) -> dict:
    shape = (1, heads, seq, dim)
    kind = getattr(torch, dtype)
    q = torch.randn(shape, device=device, dtype=kind, requires_grad=True)
    k, v = (torch.randn(1, kv_heads, seq, dim, device=device, dtype=kind, requires_grad=True) for _ in range(2))
    grad = torch.randn(shape, device=device, dtype=kind)
    row = {"backend": _backend(torch, path, q, k, v)}
    base = counter.now()
    with counter.region():
        out = _call(torch, path, q, k, v)
    row["kept"] = counter.now() - base
    row["forward_peak"] = counter.peak() - base
    with counter.region():
        out.backward(grad)
    row["backward_peak"] = counter.peak() - base
    del out, q, k, v, grad
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seq", type=int, action="append", help="sequence lengths (default 512 and 2048)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    seqs = args.seq or [512, 2048]
    out = args.out or (Path(os.environ["OUT"]) / "benchmarks" if os.environ.get("OUT") else ROOT / "runs")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    result = {"device": args.device, "torch": torch.__version__, "rows": rows}
    if args.device == "cuda":
        result["card"] = torch.cuda.get_device_name()
        result["compute_capability"] = list(torch.cuda.get_device_capability())
    for name, (heads, kv_heads, dim) in LAYOUTS.items():
        for dtype in DTYPES:
            for seq in seqs:
                for path in PATHS:
                    row = {"layout": name, "dtype": dtype, "seq": seq, "path": path}
                    try:
                        if args.device == "cuda":
                            row.update(measure_case(torch, _CudaCounter(torch), "cuda", heads, kv_heads, dim, dtype,
                                                    seq, path))
                        else:
                            from torch._subclasses.fake_tensor import FakeTensorMode

                            from recipecli.train.memtrace import MemTrace

                            trace = MemTrace()
                            with FakeTensorMode(), trace:
                                row.update(measure_case(torch, _TraceCounter(trace), "cpu", heads, kv_heads, dim,
                                                        dtype, seq, path))
                    except Exception as exc:  # one unsupported combination must not hide the rest
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    (out / "sdpa_backends.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
