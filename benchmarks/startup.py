"""Start-up cost of the light commands, against bare imports of the libraries they need.

`recipe validate` and `recipe fit-check` must start instantly: they import yaml, jsonschema and
click, and nothing heavy. This runs each command and the bare-import baseline alternately, many
times, in one process tree, and reports medians and the ratio, so the number does not depend on
how busy the machine is at one moment.

    .venv/bin/python benchmarks/startup.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p) for p in (ROOT / "recipes").rglob("*.yaml"))
BASELINE = [sys.executable, "-c", "import yaml, jsonschema, click"]
COMMANDS = {
    "validate (all shipped recipes)": [sys.executable, "-m", "recipecli", "validate", *RECIPES],
    "fit-check --gpu rtx2080 (all shipped)": [sys.executable, "-m", "recipecli", "fit-check", "--gpu", "rtx2080"],
}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"baseline": [], **{name: [] for name in COMMANDS}}
    for cmd in [BASELINE, *COMMANDS.values()]:
        wall(cmd)  # warm the file cache and .pyc files once
    for _ in range(args.repeats):
        times["baseline"].append(wall(BASELINE))
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    base = statistics.median(times["baseline"])
    print(f"{date.today()} on {platform.machine()} {platform.python_version()}, {args.repeats} runs each, medians:")
    print("| command | median | ratio to `import yaml, jsonschema, click` |")
    print("|---|---|---|")
    print(f"| bare imports (baseline) | {base * 1000:.0f} ms | 1.00 |")
    for name in COMMANDS:
        med = statistics.median(times[name])
        print(f"| recipe {name} | {med * 1000:.0f} ms | {med / base:.2f} |")


if __name__ == "__main__":
    main()
