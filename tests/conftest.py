"""Shared test helpers: a minimal recipe plus a delta, no network, and paths of the repository."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipecli.read.load import deep_merge

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "wandb", "mistral_common")


def heavy_imports(*commands: list[str], exit_codes=(0,), cwd=ROOT, env=None) -> list[str]:
    """The heavy libraries (HEAVY) a fresh interpreter has imported after running these `recipe`
    commands in turn (through click's CliRunner), each ending with one of ``exit_codes``."""
    code = ("import json, sys\n"
            "from click.testing import CliRunner\n"
            "from recipecli.cli import main\n"
            "commands, codes, heavy = json.loads(sys.argv[1])\n"
            "for args in commands:\n"
            "    result = CliRunner().invoke(main, args)\n"
            "    assert result.exit_code in codes, (args, result.exit_code, result.output)\n"
            "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([list(commands), list(exit_codes), HEAVY])],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
SHARED = ROOT.parent / "shared"
SHIPPED = sorted(RECIPES.rglob("*.yaml"))

# The smallest valid recipe: a hub model and a hub dataset, so nothing needs to exist on disk.
MINIMAL = {
    "recipe_version": 1,
    "name": "t",
    "model": {"id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0"},
    "method": "qlora",
    "data": {"datasets": [{"path": "tatsu-lab/alpaca", "format": "alpaca"}]},
}


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No network for Hugging Face hub and datasets, and an empty hub cache; returns the cache.

    The empty cache keeps a test from passing only on a machine that once downloaded a model.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def tokenizer_elsewhere(tmp_path) -> tuple[Path, Path]:
    """The tiny model split in two folders: (its weights and config alone, its tokenizer alone)."""
    weights, tokenizer = tmp_path / "weights", tmp_path / "tokenizer"
    for folder in (weights, tokenizer):
        folder.mkdir()
    for file in (RECIPES / "models" / "tiny-llama").iterdir():
        shutil.copy(file, (tokenizer if file.name.startswith(("tokenizer", "chat_template")) else weights) / file.name)
    return weights, tokenizer


@pytest.fixture
def make_recipe(tmp_path):
    """Write MINIMAL merged with a delta (None values delete keys) and return its path."""

    def make(delta: dict | None = None, name: str = "recipe.yaml", base: dict | None = None) -> Path:
        doc = _drop_none(deep_merge(MINIMAL if base is None else base, delta or {}))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def two_step_run(model: dict, method: str, run_dir: Path) -> dict:
    """A recipe for the model (its model section) training 2 steps of rank-4 adapters on the
    attention, 8 tiny alpaca records, into run_dir: a base for make_recipe."""
    return {"recipe_version": 1, "name": "two-steps", "model": model, "method": method,
            "lora": {"r": 4, "alpha": 8, "target_modules": "attention"},
            "data": {"datasets": [{"path": str(RECIPES / "data" / "tiny-alpaca.jsonl"), "format": "alpaca",
                                   "max_samples": 8}], "max_seq_length": 64},
            "training": {"max_steps": 2, "micro_batch_size": 2, "logging_steps": 1, "save_steps": 100,
                         "gradient_checkpointing": False},
            "output": {"dir": str(run_dir)}}


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value
