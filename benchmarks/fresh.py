"""Each benchmark arm runs in a fresh Python process, so imports and caches count the same for all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
