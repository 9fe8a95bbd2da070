"""fit-check's estimate of a mixture of experts against the traced training step.

    nice -n 10 .venv/bin/python benchmarks/moe_trace.py [--full]

Each row traces two steps of LoRA or QLoRA with ``recipecli.train.probe.trace_step`` under
FakeTensorMode and prints the traced allocated peak beside ``estimate().allocated_bytes``. The
grid: four families built small (Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE with its shared expert) x lora/qlora x bf16/fp32 x
checkpointing x two batch shapes x moe_experts, with adapters on the attention (the experts
frozen, 16-bit or quantized by quantization.moe_experts: 96 rows), then on every layer peft's
all-linear reaches (the router and the fused experts too, dropout 0; Qwen2-MoE's shared expert
alone) and on one fused stack named in lora.target_parameters (120 more); about a second a row. ``--full`` adds rows at full size from
the catalog (seconds to a minute each on 2 cores). Results: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipecli.fit.architectures import find_config, shape_from_config  # noqa: E402
from recipecli.fit.estimate import estimate  # noqa: E402
from recipecli.fit.precision import DTYPE_BYTES, DTYPE_OF, dtypes  # noqa: E402
from recipecli.fit.setup import Setup  # noqa: E402

SMALL = {
    "mixtral": dict(model_type="mixtral", hidden_size=256, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, num_local_experts=4,
                    num_experts_per_tok=2, max_position_embeddings=4096),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=1024, intermediate_size=2048, moe_intermediate_size=384,
                      num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                      vocab_size=32000, num_experts=32, num_experts_per_tok=4, max_position_embeddings=4096),
    "olmoe": dict(model_type="olmoe", hidden_size=1024, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=16, num_key_value_heads=16, vocab_size=32000, num_experts=16,
                  num_experts_per_tok=4, max_position_embeddings=4096),
    "qwen2_moe": dict(model_type="qwen2_moe", hidden_size=1024, intermediate_size=2048, moe_intermediate_size=384,
                      shared_expert_intermediate_size=1536, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, num_experts=16, num_experts_per_tok=4,
                      max_position_embeddings=4096),
}
ATTENTION, ALL_LINEAR, ONE_STACK = ("attention", ()), ("all-linear", ()), ("attention", ("mlp.experts.down_proj",))
# (hub id, method, precision, checkpointing, seq_len, micro_batch, moe_experts, adapters)
FULL = [("Qwen/Qwen3-30B-A3B", "qlora", "bf16", True, 2048, 1, True, ATTENTION),
        ("Qwen/Qwen3-30B-A3B", "qlora", "bf16", True, 2048, 1, False, ATTENTION),
        ("Qwen/Qwen3-30B-A3B", "qlora", "bf16", True, 2048, 1, False, ALL_LINEAR),
        ("allenai/OLMoE-1B-7B-0924", "qlora", "bf16", True, 4096, 1, True, ATTENTION),
        ("allenai/OLMoE-1B-7B-0924", "lora", "bf16", False, 1024, 1, False, ATTENTION),
        ("allenai/OLMoE-1B-7B-0924", "lora", "bf16", True, 2048, 1, False, ALL_LINEAR),
        ("Qwen/Qwen1.5-MoE-A2.7B", "qlora", "bf16", True, 2048, 1, True, ALL_LINEAR),
        ("mistralai/Mixtral-8x7B-v0.1", "qlora", "fp16", True, 1024, 1, True, ATTENTION)]


def setup(method: str, precision: str, checkpointing: bool, seq_len: int, micro_batch: int, moe_experts: bool,
          adapters: tuple, bits: int = 4, dropout: float | None = None) -> Setup:
    """The estimator's view of what trace_step runs: the dtypes recipe run would choose."""
    kbit = method == "qlora"
    targets, parameters = adapters
    chosen = dtypes(method, kbit, precision, DTYPE_OF[precision] if kbit else None)
    four = kbit and bits == 4
    return Setup(method=method, weight_bits=bits if kbit else 8 * DTYPE_BYTES[chosen["weight_dtype"]],
                 quant_type="nf4" if four else None, double_quant=four, compute_bytes=DTYPE_BYTES[DTYPE_OF[precision]],
                 lora_r=16, lora_targets=targets, micro_batch_size=micro_batch, seq_len=seq_len,
                 gradient_checkpointing=checkpointing, optimizer="adamw_torch", attention="sdpa",
                 gradient_accumulation_steps=1, lora_dropout=_dropout(adapters) if dropout is None else dropout,
                 autocast=precision != "fp32",
                 adapter_bytes=DTYPE_BYTES[chosen["trainable_dtype"]], padded=False, moe_experts=moe_experts,
                 target_parameters=parameters)


def _dropout(adapters: tuple) -> float:
    # the grid's own choice: on parameters peft takes none, and recipe gives them none either way
    return 0.05 if adapters == ATTENTION else 0.0


def traced_and_counted(config: dict, method, precision, checkpointing, seq_len, micro_batch, moe_experts,
                       adapters, bits: int = 4, dropout: float | None = None) -> tuple[int, int]:
    """(the traced allocated peak, fit-check's allocated figure) of one set-up; imports torch.
    dropout: lora.dropout (None: the grid's own, :func:`_dropout`)."""
    from recipecli.train.probe import trace_step

    dropout = _dropout(adapters) if dropout is None else dropout
    targets, parameters = adapters
    traced = trace_step(config, method=method, targets=targets, target_parameters=parameters, precision=precision,
                        steps=2, gradient_checkpointing=checkpointing, seq_len=seq_len, micro_batch=micro_batch,
                        bits=bits, double_quant=True, moe_experts=moe_experts,
                        lora_dropout=dropout).peak_bytes
    counted = estimate(shape_from_config(config), setup(method, precision, checkpointing, seq_len, micro_batch,
                                                        moe_experts, adapters, bits, dropout)).allocated_bytes
    return traced, counted


def compare(name: str, config: dict, method, precision, checkpointing, seq_len, micro_batch, moe_experts,
            adapters) -> float:
    start = time.perf_counter()
    traced, counted = traced_and_counted(config, method, precision, checkpointing, seq_len, micro_batch, moe_experts,
                                         adapters)
    error = (counted - traced) / traced
    targets, parameters = adapters
    on = "+".join(parameters) if parameters else targets
    flags = (" ckpt" if checkpointing else "") + (" moe_experts" if moe_experts else "")
    print(f"| {name} | {method} {precision} {on}{flags} "
          f"| {seq_len} x {micro_batch} | {traced / 2**20:,.1f} | {counted / 2**20:,.1f} | {100 * error:+.1f} % "
          f"| {time.perf_counter() - start:.0f} s |", flush=True)
    return error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="add the full-size rows")
    args = parser.parse_args(argv)
    print("| model | set-up | tokens | traced MiB | estimate MiB | error | time |\n|---|---|---|---|---|---|---|")
    errors = []
    for adapters, (name, config), method, precision, checkpointing, (seq_len, batch), moe in product(
            (ATTENTION, ALL_LINEAR, ONE_STACK), SMALL.items(), ("lora", "qlora"), ("bf16", "fp32"), (False, True),
            ((512, 1), (2048, 2)), (False, True)):
        if moe and (method != "qlora" or adapters == ONE_STACK):
            continue  # moe_experts quantizes: qlora only; peft finds no quantized stack to adapt
        if adapters != ATTENTION and precision == "fp32" and (seq_len, batch) == (512, 1):
            continue  # the adapter rows: half the grid
        errors.append(compare(name, config, method, precision, checkpointing, seq_len, batch, moe, adapters))
    for model_id, *row in FULL if args.full else ():
        errors.append(compare(model_id, find_config(model_id), *row))
    print(f"\n{len(errors)} rows: median error {100 * statistics.median(errors):+.1f} %, "
          f"from {100 * min(errors):+.1f} % to {100 * max(errors):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
