"""`recipe run` end to end on a GPU, against fit-check: one script for the minutes a GPU is lent.

`benchmarks/gpu_probe.py` measures the probe's training step; this measures the runner itself,
which nothing has run on CUDA yet: from_pretrained loading a quantized base layer by layer, TRL's
SFTTrainer with its collator, the optimizer the recipe names (paged 8-bit Adam for the shipped
8 GB recipes), checkpoint saving, the grouped-heads repeat on cards without a fused kernel.

For each recipe (default: the shipped TinyLlama and Mistral 7B recipes, as shipped), with nothing
downloaded:
- model: a local folder with random weights of the real architecture (the catalog's config.json,
  built on the card and saved as safetensors) and the project's tiny tokenizer, whose token ids
  index the model's real vocabulary (the memory is the real model's);
- data: alpaca rows of the demo's words, each longer than max_seq_length, so every row is
  truncated to full length: the worst case fit-check estimates;
- the run: `recipe run` (runner.run, in this process) for --steps optimizer steps, saving at the
  last, with a callback that resets torch.cuda's peak counters when training begins and reads
  them when it ends: the training's allocated and reserved peaks, the load left out. The
  runner's own figures (run.yaml's result: the training's and the load's peak reserved) are
  recorded beside them.

Results: OUT/benchmarks/gpu_run.json ($OUT, else runs/gpu_run), rewritten after every recipe.

    python3 benchmarks/gpu_run.py                        # on the GPU machine (gpu_probe.sh's Python)
    .venv/bin/python benchmarks/gpu_run.py --device cpu --recipe recipes/tiny-demo.yaml --steps 2
        # everything but CUDA, on the CPU: what the tests run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it (the GPU machine's case)

SEEDS = ("tinyllama-1.1b", "mistral7b")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
ROWS_PER_STEP_SLACK = 2  # more rows than the steps take, so no epoch ends early


def build_model(config: dict, folder: Path, device: str) -> None:
    """Random weights of the architecture ``config`` describes, saved into ``folder`` with the tiny
    tokenizer: what a downloaded model folder holds, at its real size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in config.items() if k != "model_type"}
    with torch.device(device):  # initialized on the card: seconds, where the CPU takes minutes for 7B
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **values),
                                                 dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    for name in TOKENIZER_FILES:
        shutil.copy(ROOT / "recipes" / "models" / "tiny-llama" / name, folder / name)


def write_data(path: Path, rows: int, words_per_row: int) -> None:
    """Alpaca rows of the demo's words, each ``words_per_row`` words of output."""
    from recipecli.train.tiny import demo_records

    words = " ".join(r["output"] for r in demo_records()).split()
    with path.open("w") as f:
        for n in range(rows):
            text = " ".join(words[(n + i) % len(words)] for i in range(words_per_row))
            f.write(json.dumps({"instruction": "Repeat the words.", "input": "", "output": text}) + "\n")


def variant(recipe_file: Path, folder: Path, model_dir: Path, data: Path, steps: int) -> Path:
    """The recipe as shipped, on the local model and data, for ``steps`` steps saved at the last."""
    from recipecli.read import codec
    from recipecli.read.load import load_recipe

    doc = codec.to_document(load_recipe(recipe_file))
    doc["model"] = {k: v for k, v in doc["model"].items() if k not in ("tokenizer", "revision")}
    doc["model"]["id"] = str(model_dir)
    doc["data"]["datasets"] = [{"path": str(data), "format": "alpaca"}]
    doc["data"].pop("val_fraction", None)  # no evaluation: the steps alone
    doc["training"].update({"max_steps": steps, "save_steps": steps, "logging_steps": 1})
    doc["training"].pop("epochs", None)
    doc.get("logging", {}).pop("wandb", None)
    doc["output"] = {**doc.get("output", {}), "dir": str(folder / "run")}
    path = folder / f"{recipe_file.stem}.yaml"
    path.write_text(codec.dump(doc, f"{recipe_file} on random weights and generated data (gpu_run.py)"))
    return path


def training_peaks():
    """A trainer callback: torch.cuda's peak counters reset when training begins, read when it ends."""
    import torch
    from transformers import TrainerCallback

    class Peaks(TrainerCallback):
        allocated = reserved = None

        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def on_train_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                self.allocated = torch.cuda.max_memory_allocated()
                self.reserved = torch.cuda.max_memory_reserved()

    return Peaks()


def run_case(recipe_file: Path, work: Path, steps: int, device: str) -> dict:
    import yaml

    from recipecli.fit.architectures import find_config
    from recipecli.fit.verdict import check
    from recipecli.read.load import load_recipe
    from recipecli.train import runner

    shipped = load_recipe(recipe_file)
    folder = work / recipe_file.stem
    shutil.rmtree(folder, ignore_errors=True)
    model_dir = folder / "model"
    model_dir.mkdir(parents=True)
    started = time.perf_counter()
    model = shipped.model
    build_model(find_config(model.id, model.local_path, model.architecture, model.revision), model_dir, device)
    rows = steps * shipped.training.micro_batch_size * shipped.training.gradient_accumulation_steps
    write_data(folder / "data.jsonl", rows * ROWS_PER_STEP_SLACK, words_per_row=2 * shipped.data.max_seq_length)
    recipe = load_recipe(variant(recipe_file, folder, model_dir, folder / "data.jsonl", steps))
    built = time.perf_counter()
    gpus = None if device == "cuda" else []  # detected on the GPU machine; none: train on the CPU
    peaks = training_peaks()
    result = runner.run(recipe, gpus=gpus, callbacks=[peaks])
    out = {"recipe": str(recipe_file), "steps": result.steps, "final_loss": result.final_loss,
           "seconds": {"build": round(built - started, 1), "run": round(time.perf_counter() - built, 1)},
           "measured": {"train_allocated_bytes": peaks.allocated, "train_reserved_bytes": peaks.reserved,
                        "run_reserved_bytes": result.peak_bytes},
           "runner_estimate_reserved_bytes": result.estimate_bytes,
           "run_yaml_result": yaml.safe_load((result.run_dir / "run.yaml").read_text())["result"]}
    if device == "cuda":
        from recipecli.fit import hardware

        gpu = hardware.detect()[0]
        verdict = check(recipe, gpu)
        out["gpu"] = {"name": gpu.name, "total_bytes": gpu.total_bytes,
                      "compute_capability": gpu.compute_capability}
        out["fit_check"] = {"allocated_bytes": verdict.estimate.allocated_bytes,
                            "reserved_bytes": verdict.estimate.reserved_bytes,
                            "device_bytes": verdict.estimate.device_bytes}
        measured, fit = out["measured"], out["fit_check"]
        out["errors"] = {name: round((fit[f"{name}_bytes"] - measured[f"train_{name}_bytes"])
                                     / measured[f"train_{name}_bytes"], 4)
                         for name in ("allocated", "reserved") if measured[f"train_{name}_bytes"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--recipe", action="append", type=Path, help="default: the shipped recipes of SEEDS")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run")
    parser.add_argument("--out", type=Path, default=None, help="folder of gpu_run.json (default: $OUT/benchmarks)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_run" / "work",
                        help="where the model folders, data and runs go (gigabytes: never under $OUT)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = args.out
    if out is None:  # $OUT is what comes back from a lent machine
        out = Path(os.environ["OUT"]) / "benchmarks" if os.environ.get("OUT") else ROOT / "runs" / "gpu_run"
    out.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    recipes = args.recipe or [ROOT / "recipes" / f"{seed}.yaml" for seed in SEEDS]
    cases = []
    result = {"device": args.device, "steps": args.steps, "cases": cases}
    for recipe_file in recipes:
        try:
            case = run_case(recipe_file, work, args.steps, args.device)
        except Exception as exc:  # one recipe's failure must not cost the others
            case = {"recipe": str(recipe_file), "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=-4)}
        finally:
            shutil.rmtree(work / recipe_file.stem / "model", ignore_errors=True)  # a 7B folder is 14 GB
        cases.append(case)
        print(json.dumps({k: v for k, v in case.items() if k != "traceback"}), flush=True)
        (out / "gpu_run.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
