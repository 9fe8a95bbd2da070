"""What `recipe run` costs over a hand-written TRL script with the same settings.

The runner arm is the `recipe run` command itself (click, recipe loading, fit checks, run folder,
loss.png); the plain arm is what a user writes from the TRL and peft docs. Both train the
project's tiny Llama with real 4-bit QLoRA on the CPU, in fresh processes, alternating which goes
first, several times. Each child reports its wall time from start to saved adapter (imports
included) and its training throughput (TRL's num_tokens / train_runtime). Both arms must end on
the same loss, or the comparison is void: the script checks it.

    .venv/bin/python benchmarks/overhead.py [--repeats 5] [--steps 60]
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fresh import ROOT, alternate, arguments, measure_in_child, report  # benchmarks/ is on sys.path when run as a script

MODEL = ROOT / "recipes" / "models" / "tiny-llama"
DATA = ROOT / "recipes" / "data" / "tiny-alpaca.jsonl"

# The one set of settings both arms use; the recipe below and the plain script spell it out.
SEED, BATCH, LR, SEQ, RANK, ALPHA, LOG_STEPS, SAVE_STEPS = 42, 8, 5e-3, 128, 16, 32, 5, 30
ALPACA = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def recipe_yaml(steps: int, out: Path) -> str:
    return f"""recipe_version: 1
name: overhead
model: {{id: {MODEL}}}
method: qlora
quantization: {{bits: 4, type: nf4, double_quant: true, compute_dtype: float32}}
lora: {{r: {RANK}, alpha: {ALPHA}, dropout: 0.0, target_modules: all-linear}}
data:
  datasets: [{{path: {DATA}, format: alpaca}}]
  max_seq_length: {SEQ}
training:
  micro_batch_size: {BATCH}
  max_steps: {steps}
  learning_rate: {LR}
  lr_scheduler: constant
  warmup_ratio: 0.0
  gradient_checkpointing: false
  precision: fp32
  seed: {SEED}
  logging_steps: {LOG_STEPS}
  save_steps: {SAVE_STEPS}
output: {{dir: {out}}}
"""


def arm_runner(steps: int, out: Path) -> dict:
    """`recipe run FILE` as a user types it: the click command, recipe loading, checks and run folder
    included (in this process: the console script's own start-up is the interpreter's, as for plain)."""
    from recipecli.cli import main

    recipe_file = out.parent / "overhead.yaml"
    recipe_file.write_text(recipe_yaml(steps, out))
    main(["run", str(recipe_file)], standalone_mode=False)
    return _throughput([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])


def arm_plain(steps: int, out: Path) -> dict:
    """What a user writes by hand from the TRL and peft docs, settings as in the recipe."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    examples = [{"prompt": (ALPACA if r.get("input") else ALPACA_NO_INPUT).format(**r), "completion": r["output"]}
                for r in rows]
    random.Random(SEED).shuffle(examples)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=quantization, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                     lr_scheduler_type="constant", warmup_steps=0.0, optim="adamw_torch", gradient_checkpointing=False,
                     bf16=False, use_cpu=True, seed=SEED, logging_steps=LOG_STEPS, save_steps=SAVE_STEPS, save_total_limit=2,
                     report_to="none", max_length=SEQ, packing=False, completion_only_loss=True)
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=peft_config)
    # TRL casts the adapters of a quantized base to bf16; in an fp32 run `recipe run` keeps them in
    # fp32 (recipecli/fit/precision.py). The careful user does the same, so both train the same numbers.
    for parameter in trainer.model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    return _throughput(trainer.state.log_history)


def _throughput(log: list[dict]) -> dict:
    losses = [r["loss"] for r in log if "loss" in r]
    tokens = max(r["num_tokens"] for r in log if "num_tokens" in r)
    runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
    return {"final_loss": losses[-1], "tokens": tokens, "train_runtime": runtime, "tokens_per_s": tokens / runtime}


def child(arm: str, steps: int) -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = (arm_runner if arm == "runner" else arm_plain)(steps, Path(tmp) / "run")
    report({**result, "wall_s": time.perf_counter() - start})


def measure(arm: str, steps: int) -> dict:
    start = time.perf_counter()
    return {**measure_in_child(__file__, arm, steps), "process_s": time.perf_counter() - start}


def main() -> None:
    args = arguments(__doc__, ("runner", "plain"), repeats=5, steps=60)
    if args.child:
        return child(args.child, args.steps)

    def show(repeat: int, arm: str, r: dict) -> None:
        print(f"repeat {repeat} {arm:<6}  process {r['process_s']:6.2f} s  in-process {r['wall_s']:6.2f} s  "
              f"train {r['train_runtime']:6.2f} s  {r['tokens_per_s']:7.1f} tok/s  loss {r['final_loss']:.4f}")

    results = alternate(("runner", "plain"), args.repeats, lambda arm: measure(arm, args.steps), show)
    losses = {round(r["final_loss"], 4) for arm in results.values() for r in arm}
    if len(losses) != 1:
        sys.exit(f"the arms trained differently (final losses {sorted(losses)}): settings are not identical")

    for arm in results.values():
        for r in arm:
            r["fixed_s"] = r["wall_s"] - r["train_runtime"]  # imports, loading, data, saving, run folder

    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    # Other processes share the machine: each repeat's two runs sit side by side in time, so the
    # ratio within a repeat cancels most of the drift that ratios of overall medians keep.
    print(f"\n{args.steps} steps x {args.repeats} repeats: medians runner / plain, and the median and range "
          "of the per-repeat ratios")
    for key, label in (("process_s", "wall time, process"), ("wall_s", "wall time, in-process"),
                       ("fixed_s", "outside trainer.train()"), ("train_runtime", "trainer.train()"),
                       ("tokens_per_s", "tokens/s")):
        ratios = sorted(a[key] / b[key] for a, b in zip(results["runner"], results["plain"]))
        print(f"  {label:<24} {median('runner', key):8.2f} / {median('plain', key):8.2f}  "
              f"ratio {statistics.median(ratios):.3f}  ({ratios[0]:.3f} .. {ratios[-1]:.3f})")


if __name__ == "__main__":
    main()
