"""The instant estimate against full-size traces of the real training step (issue 8, section 4).

Run: nice -n 10 .venv/bin/python benchmarks/trace_grid.py [--table] [--only TEXT]

Each row of GRID is one training setup; ``recipecli.train.probe.trace_step`` runs two steps of it
under FakeTensorMode (shapes only, no memory: a 13B step traces on a laptop), so the second
step's forward and backward run with the optimizer state the first one made. The traced peak,
the peak of each phase, what was live at the peak by category and the library versions go to
trace_grid.json beside this file, written whole after every row. A rerun traces only the rows
missing there or traced under other versions of torch/transformers/peft/trl/bitsandbytes, so an
interrupted run resumes. Rows that trace_step cannot trace yet (a 4/8-bit base, autocast, an
optimizer it does not know, accumulation, packing) are listed and skipped with the reason;
they trace once trace_step takes the keyword that describes them.

``setup_for`` describes a row as the estimator's Setup; tests/fit/test_trace_grid.py holds the
estimate to the committed traces with it (and never traces). ``--table`` only prints the
comparison: row, traced, estimate, error.

Imports torch only to trace (inside ``trace_row``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
from importlib import metadata
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipecli.fit.architectures import find_config, shape_from_config  # noqa: E402
from recipecli.fit.estimate import estimate  # noqa: E402
from recipecli.fit.precision import DTYPE_BYTES, DTYPE_OF, dtypes  # noqa: E402
from recipecli.fit.setup import Setup  # noqa: E402

RESULTS = Path(__file__).with_name("trace_grid.json")
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes")
STEPS = 2  # the second step runs forward and backward with the first one's optimizer state
LORA_DROPOUT = 0.05  # trace_step's default, and the recipes'

# The five seed architectures, then three more: a 128k vocabulary with GQA (Llama-3), a 152k
# tied vocabulary with biased q/k/v (Qwen2.5), fused qkv and gate_up projections (Phi-3).
MODELS = {
    "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "phi-2": "microsoft/phi-2",
    "gemma-2b": "google/gemma-2b",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "phi-3-mini": "microsoft/Phi-3-mini-4k-instruct",
}
# Two attention projections each model has under these names (Phi-3 fuses q, k and v).
QV_TARGETS = {"phi-3-mini": ("qkv_proj",)}

# Groups of rows, applied to every model: (group, fixed settings, [(seq_len, micro_batch)]).
# Settings not named are lora r16 on all linear layers, sdpa, adamw_torch, no checkpointing,
# fp32 weights and compute, one micro-batch per step, no packing.
GROUPS = (
    ("lora sdpa", {}, [(256, 1), (1024, 1), (4096, 1), (512, 4), (256, 8)]),
    ("lora sdpa ckpt", {"gradient_checkpointing": True}, [(1024, 1), (4096, 1), (8192, 1), (2048, 4)]),
    ("lora eager", {"attention": "eager"}, [(256, 1), (1024, 1), (1024, 2)]),
    ("full", {"method": "full"}, [(256, 1)]),
    ("full ckpt", {"method": "full", "gradient_checkpointing": True}, [(1024, 1)]),
    ("full sgd", {"method": "full", "optimizer": "sgd"}, [(512, 1)]),
    ("lora eager ckpt", {"attention": "eager", "gradient_checkpointing": True}, [(1024, 1)]),
    ("lora r8 attention", {"lora_r": 8, "targets": "attention"}, [(1024, 1)]),
    ("lora qv", {"targets": "qv"}, [(2048, 2)]),
    ("lora sgd", {"optimizer": "sgd"}, [(1024, 1)]),
    ("qlora nf4 bf16", {"method": "qlora", "weight_bits": 4, "precision": "bf16", "gradient_checkpointing": True,
                        "optimizer": "paged_adamw_8bit"}, [(1024, 1), (4096, 1)]),
    ("qlora fp4 dq fp16", {"method": "qlora", "weight_bits": 4, "quant_type": "fp4", "double_quant": True,
                           "precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw_8bit"},
     [(2048, 1)]),
    ("qlora int8 bf16", {"method": "qlora", "weight_bits": 8, "precision": "bf16",
                         "gradient_checkpointing": True}, [(1024, 1)]),
    ("lora bf16", {"weight_bits": 16, "precision": "bf16"}, [(1024, 1), (2048, 2)]),
    ("lora bf16 fa2", {"weight_bits": 16, "precision": "bf16", "attention": "flash_attention_2",
                       "gradient_checkpointing": True}, [(4096, 2)]),
    ("lora accum", {"grad_accum": 4}, [(1024, 1)]),
    ("lora packed", {"packing": True, "gradient_checkpointing": True}, [(2048, 4)]),
)
DEFAULTS = dict(method="lora", lora_r=16, targets="all-linear", attention="sdpa", optimizer="adamw_torch",
                gradient_checkpointing=False, weight_bits=32, quant_type="nf4", double_quant=False, precision="fp32",
                grad_accum=1, packing=False)
# The tracer's own code: a row traced by an older probe is traced again.
TRACER = [ROOT / "recipecli" / "train" / name for name in ("probe.py", "kernels.py", "memtrace.py", "model.py")]


def _rows(groups) -> list[dict]:
    rows = []
    for (name, fixed, sizes), model in product(groups, MODELS):
        for seq_len, batch in sizes:
            row = {**DEFAULTS, **fixed, "model": model, "group": name, "seq_len": seq_len, "micro_batch": batch}
            if row["targets"] == "qv":
                row["targets"] = QV_TARGETS.get(model, ("q_proj", "v_proj"))
            if row["method"] == "full":
                row["lora_r"], row["targets"] = None, None
            rows.append(row)
    return rows


GRID = _rows(GROUPS)


def row_id(row: dict) -> str:
    """A stable name for a row: every setting that changes the trace."""
    targets = row["targets"] if isinstance(row["targets"], str) or row["targets"] is None else "+".join(row["targets"])
    adapters = f"r{row['lora_r']} {targets}" if row["method"] != "full" else ""
    return " ".join(str(p) for p in (
        row["model"], row["method"], adapters, f"s{row['seq_len']}x{row['micro_batch']}",
        "ckpt" if row["gradient_checkpointing"] else "", row["attention"], row["optimizer"],
        f"w{row['weight_bits']}", row["quant_type"] if row["weight_bits"] == 4 else "",
        "dq" if row["weight_bits"] == 4 and row["double_quant"] else "", row["precision"],
        f"ga{row['grad_accum']}" if row["grad_accum"] > 1 else "", "packed" if row["packing"] else "") if p)


def setup_for(row: dict) -> tuple:
    """The estimator's view of a grid row: (Shape, Setup).

    The traced stack: an fp32 base (or a 4/8-bit one for qlora rows), no autocast unless the row
    asks for a 16-bit precision, TRL's fused LM head (the chunked loss), adapters kept in fp32
    by peft, every sequence of the batch full length (no padding).
    """
    shape = shape_from_config(find_config(MODELS[row["model"]]))
    sixteen = row["precision"] in ("bf16", "fp16")
    kbit = row["weight_bits"] in (4, 8)
    compute = DTYPE_OF[row["precision"]] if kbit else None  # trace_step's compute dtype for a k-bit base
    trained = dtypes(row["method"], kbit, row["precision"], compute)["trainable_dtype"]
    four = row["weight_bits"] == 4
    setup = Setup(
        method=row["method"], weight_bits=row["weight_bits"], quant_type=row["quant_type"] if four else None,
        double_quant=four and row["double_quant"], compute_bytes=2 if sixteen else 4, lora_r=row["lora_r"],
        lora_targets=row["targets"] or (), micro_batch_size=row["micro_batch"], seq_len=row["seq_len"],
        gradient_checkpointing=row["gradient_checkpointing"], optimizer=row["optimizer"],
        attention=row["attention"], gradient_accumulation_steps=row["grad_accum"],
        lora_dropout=LORA_DROPOUT if row["method"] != "full" else 0.0, loss="chunked", autocast=sixteen,
        adapter_bytes=DTYPE_BYTES[trained] if row["method"] != "full" else None, padded=False,
        packing=row["packing"])
    return shape, setup


def versions() -> dict:
    found = {name: metadata.version(name) for name in LIBRARIES}
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in TRACER)).hexdigest()[:12]
    return {**found, "tracer": digest}


def trace_row(row: dict) -> dict:
    """Trace one row at full size under FakeTensorMode; the record trace_grid.json keeps."""
    from recipecli.train.probe import trace_step

    kwargs = dict(method=row["method"], seq_len=row["seq_len"], micro_batch=row["micro_batch"],
                  gradient_checkpointing=row["gradient_checkpointing"], optimizer=row["optimizer"],
                  attention=row["attention"], fake=True, loss="trl", steps=STEPS, lora_dropout=LORA_DROPOUT)
    if row["method"] != "full":
        kwargs.update(lora_r=row["lora_r"], targets=row["targets"])
    kwargs.update(precision=row["precision"], gradient_accumulation_steps=row["grad_accum"], packing=row["packing"])
    if row["method"] == "qlora":
        kwargs.update(bits=row["weight_bits"], quant_type=row["quant_type"], double_quant=row["double_quant"])
    trace = trace_step(find_config(MODELS[row["model"]]), **kwargs)
    return {"id": row_id(row), "row": row, "model_id": MODELS[row["model"]], "peak_bytes": trace.peak_bytes,
            "peak_phase": trace.peak_phase, "phase_peaks": trace.phase_peaks, "breakdown": trace.breakdown,
            "seconds": round(trace.seconds, 2), "versions": versions()}


def load(path: Path = RESULTS) -> dict:
    """The traced rows by id ({} when nothing was traced yet)."""
    if not path.is_file():
        return {}
    return {r["id"]: r for r in json.loads(path.read_text(encoding="utf-8"))["rows"]}


def save(done: dict, path: Path = RESULTS) -> None:
    """Write every traced row, whole or not at all (a temporary file renamed over the old one)."""
    order = {row_id(r): i for i, r in enumerate(GRID)}
    rows = sorted(done.values(), key=lambda r: order.get(r["id"], len(order)))
    doc = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
           "python": platform.python_version(), "steps": STEPS, "rows": rows}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".trace_grid.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def compare(record: dict) -> tuple[int, int, float]:
    """(traced peak, estimated allocated bytes, relative error of the estimate)."""
    shape, setup = setup_for(record["row"])
    est = estimate(shape, setup).allocated_bytes
    return record["peak_bytes"], est, est / record["peak_bytes"] - 1


def table(done: dict) -> list[float]:
    """Print row, traced, estimate and error; return the errors."""
    errors = []
    print(f"{'row':78s} {'traced':>9s} {'estimate':>9s} {'error':>7s}  peak in")
    for row in GRID:
        record = done.get(row_id(row))
        if record is None:
            continue
        traced, est, err = compare(record)
        errors.append(err)
        print(f"{row_id(row):78s} {traced / 2**30:7.2f}Gi {est / 2**30:7.2f}Gi {err:+7.1%}  {record['peak_phase']}")
    if errors:
        size = sorted(abs(e) for e in errors)
        print(f"\n{len(errors)} rows: |error| median {statistics.median(size):.2%}, worst {size[-1]:.2%}")
        summary(done)
    return errors


def summary(done: dict) -> None:
    """Median / worst |error| by setting group (rows) and model (columns), as a Markdown table."""
    cells: dict = {}
    for row in GRID:
        record = done.get(row_id(row))
        if record is not None:
            cells.setdefault((row["group"], row["model"]), []).append(abs(compare(record)[2]))
    print("\n| group | " + " | ".join(MODELS) + " |\n|---|" + "---|" * len(MODELS))
    for group, _, _ in GROUPS:
        found = [cells.get((group, model)) for model in MODELS]
        print(f"| {group} | " + " | ".join(f"{statistics.median(e):.1%} / {max(e):.1%}" if e else "-"
                                           for e in found) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help="only compare the traced rows; trace nothing")
    parser.add_argument("--only", default="", help="trace only rows whose id contains this text")
    args = parser.parse_args()
    done = load()
    if not args.table:
        now = versions()
        done = {rid: record for rid, record in done.items() if record["versions"] == now}  # the rest are stale
        for row in GRID:
            rid = row_id(row)
            if args.only not in rid or rid in done:
                continue
            done[rid] = trace_row(row)
            save(done)
            print(f"traced {rid}: {done[rid]['peak_bytes'] / 2**30:.2f} GiB in {done[rid]['seconds']} s",
                  flush=True)
    table(done)


if __name__ == "__main__":
    main()
