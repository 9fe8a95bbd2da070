"""Memory estimator vs published, measured fine-tuning peaks.

Run: .venv/bin/python benchmarks/calibration.py

Reads ../shared/calibration/published_runs.yaml (beside the repository root), describes each
usable row as a Setup, and compares the estimate, in the row's own unit and metric (allocated,
reserved or the whole device), with what was measured. Rows of the Hugging Face stack
(transformers + peft [+ bitsandbytes], which ``recipe run`` uses) are the targets; the rows
the data file itself calls "not exact targets" (LitGPT, torchtune and Qwen's scripts: bf16
optimizer states, chunked losses, remote-code models) are shown per framework for the shape
of the curves. OOM rows check the verdict: predicted total > the card.
"""
from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipecli.fit.architectures import CATALOG, LAYOUTS, Shape  # noqa: E402
from recipecli.fit.estimate import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, Setup, estimate  # noqa: E402
from recipecli.fit.verdict import status_of  # noqa: E402
from recipecli.units import GIB  # noqa: E402

RUNS = ROOT.parent / "shared" / "calibration" / "published_runs.yaml"
# Stacks the data file marks as "not exact targets" (see its header).
OTHER_STACKS = ("LitGPT", "lit-gpt", "torchtune", "Qwen")
# Published target names -> layer roles (see recipecli.architectures.LAYOUTS).
ROLE_WORDS = {"q": {"q", "qkv"}, "k": {"k", "qkv"}, "v": {"v", "qkv"}, "o": {"o"}, "proj": {"o"},
              "output_proj": {"o"}, "gate": {"gate", "gate_up"}, "up": {"up", "gate_up"},
              "down": {"down"}, "mlp": {"gate", "up", "gate_up", "down"}, "c_attn": {"qkv"},
              "c_proj": {"o", "down"}, "w1": {"gate"}, "w2": {"up"},
              "query_key_value": {"qkv"}}


@dataclass(frozen=True)
class Result:
    row: dict
    predicted: Optional[float]  # bytes in the row's metric; None when the row is not usable
    measured: Optional[float]  # bytes
    card: Optional[float]  # bytes of the GPU it ran on
    note: str  # why the row is unusable, or which metric was compared

    @property
    def hf(self) -> bool:
        return not any(m in self.row["framework"] for m in OTHER_STACKS)

    @property
    def error(self) -> Optional[float]:
        if self.predicted is None or self.measured is None:
            return None
        return self.predicted / self.measured - 1


@dataclass(frozen=True)
class Summary:
    hf_rows: int
    hf_median: float  # median |relative error| over HF-stack rows with a measured peak
    hf_worst: float
    by_framework: dict  # framework -> (rows, median |error|, worst |error|) for every stack
    oom_rows: int
    oom_predicted_fit: tuple[str, ...]  # ids of OOM rows whose verdict is "fits"
    boundary_rows: int
    boundary_predicted_oom: tuple[str, ...]  # "fits at N tokens" rows predicted not to fit


def _shape(model_id: str) -> Optional[Shape]:
    return CATALOG.get(re.split(r"[ (]", model_id)[0])


def _targets(row: dict, shape: Shape):
    words = row["lora"]["target_modules"]
    words = words if isinstance(words, list) else [words.split("(")[-1].rstrip(")")]
    roles = set()
    for word in words:
        for part in re.findall(r"[a-z_0-9]+", word.replace("_proj", "")):
            roles |= ROLE_WORDS.get(part, set())
    return tuple(path for path, role in LAYOUTS[shape.layout] if role in roles)


def _optimizer(text: str) -> str:
    text = str(text)
    if re.search(r"8-?bit", text, re.I):
        return "paged_adamw_8bit" if "Paged" in text else "adamw_8bit"
    if "PagedAdamW" in text:
        return "paged_adamw_32bit"
    return "sgd" if "SGD" in text else "adamw_torch"


def _loss(framework: str) -> str:
    if "itGPT" in framework or "lit-gpt" in framework:  # chunked head and cross-entropy
        return "chunked"
    return "fp32_logits"


def _bytes(value: float, unit: str) -> float:
    if unit.startswith("GiB"):
        return value * GIB
    return value * (1e6 if unit.startswith("MB") else 1e9)


def _card(gpu: Optional[str]) -> Optional[float]:
    # Cards sold as "N GB" hold N GiB (an A100 40GB has 40960 MiB).
    found = re.findall(r"(\d+)\s*-?GB?\b", gpu or "")
    return int(found[-1]) * GIB if found else None


def setup_for(row: dict) -> tuple[Optional[Shape], Optional[Setup], str]:
    """Describe a published row as (Shape, Setup), or say why it cannot be."""
    shape = _shape(row["model_id"])
    quant = str(row["quantization"])
    if shape is None:
        return None, None, "model not in the catalog (encoder-decoder)"
    if row["method"] not in ("qlora", "lora", "full"):
        return None, None, f"method {row['method']} not modelled"
    if "gptq" in quant:
        return None, None, "GPTQ quantization not modelled"
    if (row["lora"] or {}).get("modules_to_save"):
        return None, None, "trainable embeddings (modules_to_save) not modelled"
    seq_len = row["seq_len"]
    if seq_len is None and "any tested length" in str(row["fits_boundary"]):
        seq_len = 1  # "OOM at any length": the verdict must hold at the shortest one
    if seq_len is None or row["micro_batch_size"] is None:
        return None, None, "sequence length or batch not published"
    kbit = row["method"] == "qlora"
    lora = row["lora"] or {}
    framework = row["framework"]
    pure_16bit = "bf16-true" in str(row["precision_mode"]) or "use_amp false" in str(
        row["precision_mode"]) or framework.startswith("torchtune")
    gc = row["gradient_checkpointing"]
    setup = Setup(
        method=row["method"], weight_bits=4 if kbit else (32 if "fp32" in row["weight_dtype"]
                                                          else 16),
        quant_type=quant[:3] if kbit else None, double_quant=bool(row["double_quant"]),
        compute_bytes=4 if str(row["compute_dtype"]).startswith("fp32") else 2,
        lora_r=lora.get("rank"), lora_targets=_targets(row, shape) if lora else "all-linear",
        micro_batch_size=row["micro_batch_size"], seq_len=seq_len,
        gradient_checkpointing=True if gc is None else gc,  # unstated: long-context runs need it
        optimizer=_optimizer(row["optimizer"]),
        attention=("eager" if "eager" in row["attention_impl"] else
                   "flash_attention_2" if "lash" in row["attention_impl"] else "sdpa"),
        num_gpus=row["num_gpus"], parallelism="fsdp" if row["num_gpus"] > 1 else "none",
        gradient_accumulation_steps=row["grad_accum"] or 1,
        lora_dropout=lora.get("dropout", 0.05) if lora else 0.0,
        loss=_loss(framework), autocast=not pure_16bit)
    return shape, setup, ""


def evaluate(row: dict) -> Result:
    """Estimate one row in its own metric."""
    card = _card(row["gpu"])
    shape, setup, why = setup_for(row)
    if setup is None:
        return Result(row, None, None, card, why)
    # The published runs used PyTorch's default allocator (fixed segments), and their cards'
    # compute capability is not parsed here: the context of an unknown card.
    est = estimate(shape, setup).on_card(CUDA_CONTEXT_BYTES, CUBLAS_WORKSPACE_BYTES, expandable_segments=False)
    metric = str(row["metric"])
    if "reserved" in metric:
        predicted, note = est.reserved_bytes, "reserved"
    elif "allocated" in metric:
        predicted, note = est.allocated_bytes, "allocated"
    else:  # nvidia-smi or unstated: the whole device
        predicted, note = est.device_bytes, "device"
    if row["oom"] or row["fits_boundary"]:
        predicted, note = est.device_bytes, "verdict"
    measured = _bytes(row["measured_peak"], row["unit"]) if row["measured_peak"] else None
    return Result(row, predicted, measured, card, note)


def load(path: Path = RUNS) -> list[dict]:
    """The published rows; exits with a message when the file is not there."""
    if not path.is_file():
        sys.exit(f"calibration data not found: {path} (expected beside the repository root)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def summarize(results: list[Result]) -> Summary:
    """Errors on HF-stack rows with a measured peak, and verdicts on OOM/boundary rows."""
    measured = [r for r in results if r.error is not None and not r.row["oom"]]
    errors = [abs(r.error) for r in measured if r.hf]
    groups: dict[str, list[float]] = {}
    for r in measured:
        groups.setdefault(r.row["framework"], []).append(abs(r.error))
    ooms = [r for r in results if r.row["oom"] and r.predicted is not None and r.card]
    bounds = [r for r in results if r.row["fits_boundary"] and not r.row["oom"]
              and r.predicted is not None and r.card]
    return Summary(
        hf_rows=len(errors), hf_median=statistics.median(errors), hf_worst=max(errors),
        by_framework={f: (len(e), statistics.median(e), max(e)) for f, e in groups.items()},
        oom_rows=len(ooms),
        # A false "fits" is the verdict's: the band's upper end on the card (tight is a warning).
        oom_predicted_fit=tuple(r.row["id"] for r in ooms if status_of(round(r.predicted), round(r.card)) == "fits"),
        boundary_rows=len(bounds),
        boundary_predicted_oom=tuple(r.row["id"] for r in bounds if r.predicted > r.card))


def main() -> None:
    results = [evaluate(row) for row in load()]
    by_framework: dict[str, list[Result]] = {}
    for r in results:
        by_framework.setdefault(r.row["framework"], []).append(r)
    for framework, group in by_framework.items():
        print(f"\n## {framework}{'  [HF stack: target]' if group[0].hf else ''}")
        for r in group:
            if r.predicted is None:
                print(f"  {r.row['id']:58s} skipped: {r.note}")
            elif r.note == "verdict":
                fits = status_of(round(r.predicted), round(r.card)).replace("does_not_fit", "OOM")
                truth = "OOM" if r.row["oom"] else "fits"
                print(f"  {r.row['id']:58s} predicted {r.predicted / GIB:6.1f} GiB on a "
                      f"{r.card / GIB:.0f} GiB card -> {fits:4s} (published: {truth})")
            else:
                print(f"  {r.row['id']:58s} predicted {r.predicted / 1e9:6.2f} GB  measured "
                      f"{r.measured / 1e9:6.2f} GB  {r.error:+6.1%}  ({r.note})")
    s = summarize(results)
    print("\n|error| by framework (rows, median, worst):")
    for framework, (n, median, worst) in s.by_framework.items():
        print(f"  {framework[:70]:70s} {n:3d} {median:6.1%} {worst:6.1%}")
    print(f"\nHF-stack rows with a measured peak: {s.hf_rows}; |error| median {s.hf_median:.1%}, "
          f"worst {s.hf_worst:.1%}")
    print(f"OOM rows: {s.oom_rows}, predicted to fit: {list(s.oom_predicted_fit) or 'none'}")
    print(f"'fits at N tokens' rows: {s.boundary_rows}, predicted OOM: "
          f"{list(s.boundary_predicted_oom) or 'none'}")


if __name__ == "__main__":
    main()
