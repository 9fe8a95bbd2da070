"""benchmarks/gpu_run.py, `recipe run` end to end for a lent GPU, run here on the CPU: the model
folder is built at the recipe's architecture, every row fills max_seq_length, the shipped recipe
is left as it was, and the run trains the steps asked for and writes its result."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess

import pytest

from .conftest import RECIPES, ROOT

pytest.importorskip("torch")
pytest.importorskip("trl")


@pytest.fixture(scope="module")
def gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "benchmarks" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_is_longer_than_the_sequence(gpu_run, tmp_path):
    from recipecli.train.tiny import build_tokenizer

    path = tmp_path / "data.jsonl"
    gpu_run.write_data(path, rows=3, words_per_row=256)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and len({r["output"] for r in rows}) == 3
    tokenizer = build_tokenizer([r["output"] for r in rows])
    assert all(len(tokenizer(r["output"])["input_ids"]) > 128 for r in rows)  # the tiny demo's length


def test_the_tiny_demo_runs_end_to_end_and_the_shipped_recipe_is_untouched(gpu_run, tmp_path):
    shipped = RECIPES / "tiny-demo.yaml"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert gpu_run.main(["--device", "cpu", "--recipe", str(shipped), "--steps", "2", "--out", str(tmp_path),
                         "--work", str(tmp_path / "work")]) == 0
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
    (case,) = json.loads((tmp_path / "gpu_run.json").read_text())["cases"]
    assert "error" not in case, case.get("traceback")
    assert case["steps"] == 2 and case["final_loss"] > 0
    assert case["measured"] == {"train_allocated_bytes": None, "train_reserved_bytes": None,
                                "run_reserved_bytes": None}  # the CPU has no CUDA counters
    work = tmp_path / "work" / "tiny-demo"
    assert not (work / "model").exists()  # the random model folder goes (a 7B one is 14 GB)
    variant = (work / "tiny-demo.yaml").read_text()
    assert "max_steps: 2" in variant and "data.jsonl" in variant


@pytest.mark.slow
def test_gpu_probe_sh_run_sets_up_and_runs_it(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_probe.sh"), "run", "--device", "cpu", "--recipe",
                           str(RECIPES / "tiny-demo.yaml"), "--steps", "1", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    (case,) = json.loads((tmp_path / "benchmarks" / "gpu_run.json").read_text())["cases"]
    assert case["steps"] == 1 and "error" not in case
    assert "transformers" in (tmp_path / "benchmarks" / "gpu_run.log").read_text()
