"""Each benchmark arm runs in a fresh Python process, so imports and caches count the same for all."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
_MARK = "RESULT "


def report(result: dict) -> None:
    """In the child: hand the measured numbers back to the parent."""
    print(_MARK + json.dumps(result))


def measure_in_child(script: str, child: str, steps: int) -> dict:
    """Run ``script --child CHILD --steps N`` and return what it reported; exit if it failed."""
    proc = subprocess.run([sys.executable, script, "--child", child, "--steps", str(steps)], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        sys.exit(f"{child} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(_MARK))
    return json.loads(line[len(_MARK):])


def arguments(doc: str, arms: tuple[str, str], repeats: int, steps: int):
    """The command line every side-by-side benchmark takes; ``--child`` runs one arm."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--child", choices=arms, help=argparse.SUPPRESS)
    return parser.parse_args()


def alternate(arms: tuple[str, str], repeats: int, measure: Callable[[str], dict],
              show: Callable[[int, str, dict], None]) -> dict[str, list[dict]]:
    """Measure both arms ``repeats`` times, swapping which goes first each time, so that a change
    in the machine's load during the benchmark falls on both arms alike."""
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for i in range(repeats):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            results[arm].append(measure(arm))
            show(i + 1, arm, results[arm][-1])
    return results
