"""Training throughput with data.packing on vs off, on examples of very different lengths.

Padding makes short examples cost as much as the longest one in their batch; packing fills each
sequence with several examples instead. Both arms run the same recipe through the runner (tiny
Llama, 4-bit QLoRA, CPU) in fresh processes, alternating, and report real (non-padding) tokens
trained per second: TRL's num_tokens / train_runtime.

    .venv/bin/python benchmarks/packing.py [--repeats 3] [--steps 20]
"""
from __future__ import annotations

import json
import random
import statistics
import tempfile
from pathlib import Path

from fresh import ROOT, alternate, arguments, measure_in_child, report  # benchmarks/ is on sys.path when run as a script

MODEL = ROOT / "recipes" / "models" / "tiny-llama"
WORDS = ("red", "green", "blue", "gold", "lime", "owl", "cat", "sky", "sea", "tree")


def variable_length_data(path: Path, n: int = 512, seed: int = 0) -> None:
    """Alpaca records whose length spans ~20 to ~240 tokens, most of them short, as chat data is."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(min(60, int(rng.expovariate(1 / 12)) + 1))]
            f.write(json.dumps({"instruction": "Reverse the words.", "input": " ".join(words),
                                "output": " ".join(reversed(words))}) + "\n")


def recipe_yaml(data: Path, out: Path, packing: bool, steps: int) -> str:
    return f"""recipe_version: 1
name: packing
model: {{id: {MODEL}}}
method: qlora
lora: {{r: 16, alpha: 32, dropout: 0.0}}
data:
  datasets: [{{path: {data}, format: alpaca}}]
  max_seq_length: 256
  packing: {str(packing).lower()}
training: {{micro_batch_size: 4, max_steps: {steps}, learning_rate: 5.0e-3, lr_scheduler: constant,
           warmup_ratio: 0.0, gradient_checkpointing: false, logging_steps: 5, save_steps: 1000}}
output: {{dir: {out}}}
"""


def child(packing: bool, steps: int) -> None:
    from recipecli.read.load import load_recipe
    from recipecli.train.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        data, recipe_file = Path(tmp) / "varlen.jsonl", Path(tmp) / "recipe.yaml"
        variable_length_data(data)
        recipe_file.write_text(recipe_yaml(data, Path(tmp) / "run", packing, steps))
        result = run(load_recipe(recipe_file), gpus=())
        log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = max(r["num_tokens"] for r in log if "num_tokens" in r)
    runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
    report({"tokens": tokens, "train_runtime": runtime, "tokens_per_s": tokens / runtime})


def main() -> None:
    args = arguments(__doc__, ("on", "off"), repeats=3, steps=20)
    if args.child:
        return child(args.child == "on", args.steps)

    def show(repeat: int, arm: str, r: dict) -> None:
        print(f"repeat {repeat} packing {arm:<3}  {r['tokens']:7.0f} tokens in "
              f"{r['train_runtime']:6.2f} s  {r['tokens_per_s']:7.1f} tok/s")

    results = alternate(("on", "off"), args.repeats, lambda arm: measure_in_child(__file__, arm, args.steps), show)
    on, off = (statistics.median(r["tokens_per_s"] for r in results[arm]) for arm in ("on", "off"))
    print(f"\n{args.steps} steps x {args.repeats} repeats, median tokens/s: packing on {on:.1f}, off {off:.1f}, "
          f"ratio {on / off:.2f}")


if __name__ == "__main__":
    main()
