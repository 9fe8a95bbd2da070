"""Wall time of `recipe data`: the shipped demo recipe, and 100,000 generated chat records.

Targets (issue 11): the demo in at most 3 s on 2 CPU cores, tokenizer load included; 100,000
chat records in at most 60 s. Each is a fresh `python -m recipecli data` process, so imports
count. The chat set is generated here (multi-turn conversations in the tiny model's words, some
with a system turn) and trained on the tiny model, whose chat template marks assistant turns.

    .venv/bin/python benchmarks/data_stats.py [--records 100000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "red green blue gold lime owl bird rain star cat rock pear fox tree".split()


def conversation(rng: random.Random) -> dict:
    messages = [{"role": "system", "content": "You follow instructions exactly."}] if rng.random() < 0.3 else []
    for _ in range(rng.choice((1, 1, 2, 3))):
        words = rng.choices(WORDS, k=rng.randint(2, 40))
        task = rng.choice(("Reverse the words.", "Uppercase the words."))
        answer = " ".join(reversed(words)) if task.startswith("Reverse") else " ".join(words).upper()
        messages += [{"role": "user", "content": f"{task}\n{' '.join(words)}"},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages}


def wall(args: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one fresh `recipe data` process: on a shared
    machine the CPU time says what the command costs, the wall time what it waited besides."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "recipecli", "data", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    demo = [wall(["recipes/tiny-demo.yaml"]) for _ in range(args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        chat = Path(tmp) / "chat.jsonl"
        rng = random.Random(0)
        with open(chat, "w", encoding="utf-8") as f:
            for _ in range(args.records):
                f.write(json.dumps(conversation(rng)) + "\n")
        recipe = Path(tmp) / "chat.yaml"
        recipe.write_text(json.dumps({
            "recipe_version": 1, "name": "chat-bench", "model": {"id": str(ROOT / "recipes/models/tiny-llama")},
            "method": "lora", "data": {"datasets": [{"path": str(chat), "format": "chat"}], "max_seq_length": 256,
                                       "val_fraction": 0.01},
            "training": {"micro_batch_size": 8, "gradient_accumulation_steps": 4, "epochs": 1}}))
        big = wall([str(recipe)])
        packed = wall([str(recipe), "--set", "data.packing=true"])
    print(f"{date.today()}, {platform.machine()}, Python {platform.python_version()}")
    print(f"recipe data recipes/tiny-demo.yaml: wall median {statistics.median(w for w, _ in demo):.2f} s "
          f"(min {min(w for w, _ in demo):.2f}), CPU median {statistics.median(c for _, c in demo):.2f} s, "
          f"{args.repeats} runs")
    print(f"recipe data, {args.records:,} chat records: wall {big[0]:.1f} s, CPU {big[1]:.1f} s; "
          f"with packing: wall {packed[0]:.1f} s, CPU {packed[1]:.1f} s")


if __name__ == "__main__":
    main()
