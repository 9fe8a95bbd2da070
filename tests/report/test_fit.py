"""`recipe fit-check` and `recipe gpu` through the real entry point: verdicts, exit codes, --write."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from recipecli.read import load
from recipecli.cli import main
from recipecli.errors import ExitCode
from recipecli.fit.gpu_catalog import card
from recipecli.fit.hardware import detect
from recipecli.report.fit import check_files, fitted_yaml

from ..conftest import ROOT, heavy_imports

SEVEN_B = {"model": {"id": "mistralai/Mistral-7B-v0.1"}}
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}
no_gpu_here = pytest.mark.skipif(bool(detect()), reason="this machine has a GPU")


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_shipped_recipes_on_an_rtx2080_as_the_seed_guide_says():
    recipe = Path(sys.executable).parent / "recipe"
    result = subprocess.run([str(recipe), "fit-check", "--gpu", "rtx2080", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, env=OFFLINE, timeout=120)
    assert result.returncode == ExitCode.DOES_NOT_FIT, result.stderr
    report = json.loads(result.stdout)
    status = {r["name"]: r["status"] for r in report["recipes"]}
    for fits in ("tinyllama-1.1b-qlora", "phi-2-qlora", "gemma-2b-qlora", "mistral7b-qlora-8gb"):
        assert status[fits] in ("fits", "tight"), fits
    assert status["llama2-13b-qlora"] == "does_not_fit"
    assert report["errors"] == [] and report["gpu"]["compute_capability"] == "7.5"
    assert "qlora-8gb" not in " ".join(r["file"] for r in report["recipes"])  # abstract base left out


def test_table_columns_and_exit_ok(make_recipe):
    result = invoke("fit-check", make_recipe(), "--gpu", "rtx2080")
    assert result.exit_code == ExitCode.OK, result.output
    lines = result.output.splitlines()
    assert lines[0] == "RTX 2080: 8.00 GiB, compute capability 7.5"
    assert lines[2].split() == ["recipe", "model", "params", "method", "estimate", "VRAM", "verdict"]
    assert lines[3].split()[:4] == ["t", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "1.1B", "qlora"]  # base model only
    assert "fits" in lines[3] and "note: RTX 2080 (CC 7.5) has no bf16: precision auto -> fp16" in result.output


def test_verbose_draws_every_component(make_recipe):
    result = invoke("fit-check", make_recipe(), "--vram", "8", "-v")
    assert result.exit_code == ExitCode.OK
    for component in ("weights", "activations", "cuda_overhead", "total"):
        assert f"  {component} " in result.output
    assert "#" in result.output and "headroom" in result.output


@pytest.mark.parametrize("delta", [{**SEVEN_B, "method": "full"}, {**SEVEN_B, "method": "lora"}])
def test_7b_full_and_16bit_lora_do_not_fit_8gb_and_the_written_fix_does(make_recipe, tmp_path, delta):
    path = make_recipe(delta)
    fitted = tmp_path / "fitted" / "fitted.yaml"
    fitted.parent.mkdir()
    result = invoke("fit-check", path, "--gpu", "rtx2080", "--write", fitted)
    assert result.exit_code == ExitCode.DOES_NOT_FIT
    assert "DOES NOT FIT" in result.output and "It fits" in result.output and "patch:" in result.output
    assert yaml.safe_load(fitted.read_text())["method"] == "qlora"
    again = invoke("fit-check", fitted, "--gpu", "rtx2080", "--format", "json")
    assert again.exit_code == ExitCode.OK
    assert json.loads(again.output)["recipes"][0]["status"] in ("fits", "tight")


def test_json_carries_breakdown_and_suggestion(make_recipe):
    result = invoke("fit-check", make_recipe({**SEVEN_B, "method": "lora"}), "--gpu", "rtx2080", "--format", "json")
    (entry,) = json.loads(result.output)["recipes"]
    assert entry["status"] == "does_not_fit" and entry["headroom_bytes"] < 0
    assert sum(c["bytes"] for c in entry["components"]) == entry["device_bytes"]
    assert entry["suggestion"]["patch"]["method"] == "qlora"
    assert entry["suggestion"]["device_bytes"] <= entry["vram_bytes"]


def test_json_gives_the_three_figures_and_both_parameter_counts(make_recipe):
    """What torch.cuda.max_memory_allocated, max_memory_reserved and nvidia-smi will show, each."""
    from recipecli.fit.gpu_catalog import card

    result = invoke("fit-check", make_recipe(SEVEN_B), "--gpu", "rtx2080", "--format", "json")
    (entry,) = json.loads(result.output)["recipes"]
    assert entry["allocated_bytes"] < entry["reserved_bytes"] < entry["device_bytes"]
    # The card holds its CUDA context too, by its compute capability (7.5 for an RTX 2080).
    assert entry["device_bytes"] == entry["reserved_bytes"] + card("rtx2080").context_bytes
    assert entry["base_params"] == 7_241_732_096 and 0 < entry["trainable_params"] < entry["base_params"] // 100
    verbose = invoke("fit-check", make_recipe(SEVEN_B), "--gpu", "rtx2080", "-v").output
    assert "(max_memory_allocated)" in verbose and "(max_memory_reserved, expandable_segments:True)" in verbose
    assert "what nvidia-smi shows" in verbose


def test_the_estimate_comes_with_its_band_in_table_and_json(make_recipe):
    from recipecli.fit.verdict import BAND

    path = make_recipe(SEVEN_B)
    (entry,) = json.loads(invoke("fit-check", path, "--gpu", "rtx2080", "--format", "json").output)["recipes"]
    low, point, high = entry["device_bytes_low"], entry["device_bytes"], entry["device_bytes_high"]
    assert entry["band_fraction"] == BAND and low < point < high
    assert high == pytest.approx(point * (1 + BAND), abs=1) and low == pytest.approx(point * (1 - BAND), abs=1)
    table = invoke("fit-check", path, "--gpu", "rtx2080").output
    assert f"{point / 2**30:.2f} GiB ({low / 2**30:.2f}–{high / 2**30:.2f} GiB)" in table
    assert f"±{BAND:.0%}" in table


def test_tight_when_only_the_estimate_fits_with_the_change_that_fits_with_margin(make_recipe):
    path = make_recipe(SEVEN_B)
    (entry,) = json.loads(invoke("fit-check", path, "--vram", "64", "--format", "json").output)["recipes"]
    between = (entry["device_bytes"] + entry["device_bytes_high"]) / 2 / 2**30  # a card inside the band
    result = invoke("fit-check", path, "--vram", f"{between:.4f}", "--format", "json")
    (tight,) = json.loads(result.output)["recipes"]
    assert result.exit_code == ExitCode.OK and tight["status"] == "tight"
    assert tight["suggestion"]["status"] == "fits" and tight["suggestion"]["device_bytes_high"] <= tight["vram_bytes"]


def test_write_keeps_local_paths_working_from_another_folder(make_recipe, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    path = make_recipe({**SEVEN_B, "method": "lora", "data": {"datasets": [{"path": "./train.jsonl",
                                                                           "format": "alpaca"}]}})
    fitted = tmp_path / "elsewhere" / "fitted.yaml"
    fitted.parent.mkdir()
    assert invoke("fit-check", path, "--gpu", "rtx2080", "--write", fitted).exit_code == ExitCode.DOES_NOT_FIT
    recipe = load.load_recipe(fitted)
    assert recipe.data.datasets[0].local_path == data.resolve()
    assert fitted.read_text().startswith(f"# {path} fitted to RTX 2080")


def test_write_refuses_to_overwrite_the_recipe_and_needs_one_file(make_recipe):
    path = make_recipe({**SEVEN_B, "method": "lora"})
    result = invoke("fit-check", path, "--gpu", "rtx2080", "--write", path)
    assert result.exit_code == ExitCode.USAGE and "never overwritten" in result.output
    assert invoke("fit-check", path, path, "--gpu", "rtx2080", "--write", "x.yaml").exit_code == ExitCode.USAGE
    teammate = path.with_name("teammate.yaml")
    teammate.write_text("keep me\n")
    assert invoke("fit-check", path, "--gpu", "rtx2080", "--write", teammate).exit_code == ExitCode.USAGE
    assert teammate.read_text() == "keep me\n"


def test_write_into_a_missing_folder_is_a_message(make_recipe, tmp_path):
    """Found in review: --write nodir/x.yaml raised FileNotFoundError with a traceback."""
    result = invoke("fit-check", make_recipe({**SEVEN_B, "method": "lora"}), "--gpu", "rtx2080",
                    "--write", tmp_path / "nodir" / "x.yaml")
    assert result.exit_code == ExitCode.USAGE and "Traceback" not in result.output
    assert "--write: cannot write" in result.output and "No such file or directory" in result.output


def test_only_a_recipe_with_a_suggestion_is_fitted(make_recipe, tmp_path):
    (row,), _ = check_files([make_recipe()], card("rtx2080"))
    assert row.suggestion is None  # it fits as it is
    with pytest.raises(ValueError, match="no suggestion"):
        fitted_yaml(row, tmp_path / "fitted.yaml")


def test_nothing_fits_says_so(make_recipe):
    result = invoke("fit-check", make_recipe({"model": {"id": "meta-llama/Llama-2-70b-hf"}}), "--gpu", "rtx2080")
    assert result.exit_code == ExitCode.DOES_NOT_FIT
    assert "No combination of the memory knobs makes it fit" in result.output


def test_capability_problem_is_invalid_and_other_files_still_checked(make_recipe):
    good = make_recipe(name="good.yaml")
    bf16 = make_recipe({"training": {"precision": "bf16"}}, name="bf16.yaml")
    result = CliRunner().invoke(main, ["fit-check", str(good), str(bf16), "--gpu", "rtx2080"])
    assert result.exit_code == ExitCode.INVALID
    assert "$.training.precision" in result.stderr and f"{bf16}:" in result.stderr
    assert "fits" in result.stdout  # the good recipe still got its row


def test_gpu_options_are_checked():
    assert invoke("fit-check", "--gpu", "rtx2090").exit_code == ExitCode.USAGE
    assert "did you mean" in invoke("fit-check", "--gpu", "rtx2090").output
    assert invoke("fit-check", "--gpu", "t4", "--vram", "8").exit_code == ExitCode.USAGE
    assert invoke("fit-check", "--vram", "0").exit_code == ExitCode.USAGE


@no_gpu_here
def test_without_gpu_or_option_fit_check_explains_how_to_name_a_card(make_recipe):
    result = invoke("fit-check", make_recipe())
    assert result.exit_code == ExitCode.USAGE
    assert "no GPU detected" in result.output and "--vram" in result.output and "--gpu" in result.output


@no_gpu_here
def test_gpu_command_without_gpu_says_so_and_exits_0():
    result = invoke("gpu")
    assert result.exit_code == ExitCode.OK
    assert result.output.startswith("No GPU detected:") and "--gpu rtx2080" in result.output


def test_gpu_command_for_a_named_card():
    result = invoke("gpu", "--gpu", "rtx2080")
    assert result.exit_code == ExitCode.OK, result.output
    lines = result.output.splitlines()
    assert lines[0] == "RTX 2080: 8.00 GiB, compute capability 7.5"
    assert "bf16: no" in lines[1] and "FlashAttention 2: no" in lines[1]
    assert "tinyllama-1.1b-qlora" in lines[2] and lines[3] == "  do not fit: llama2-13b-qlora"
    assert "largest model for QLoRA: " in lines[4]
    assert "bf16: yes" in invoke("gpu", "--gpu", "a100-80gb").output


def test_multi_gpu_options_reach_the_estimate(make_recipe):
    path = make_recipe({**SEVEN_B, "method": "full"})
    one = json.loads(invoke("fit-check", path, "--gpu", "a100-80gb", "--format", "json").output)
    eight = json.loads(invoke("fit-check", path, "--gpu", "a100-80gb", "--gpus", "8", "--parallelism", "fsdp",
                              "--format", "json").output)
    assert eight["recipes"][0]["device_bytes"] < one["recipes"][0]["device_bytes"]


@pytest.mark.parametrize("command", ["fit-check", "gpu"])
def test_help_ends_with_an_example(command):
    help_text = invoke(command, "--help").output
    assert "Example: recipe" in help_text and "GiB" in help_text


def test_fit_check_of_every_shipped_recipe_leaves_torch_out():
    heavy = heavy_imports(["fit-check", "--gpu", "rtx2080", "-v"], ["gpu", "--gpu", "t4"], ["gpu"], exit_codes=(0, 3),
                          env=OFFLINE)
    assert not {"torch", "transformers", "peft", "trl", "bitsandbytes"} & set(heavy), heavy


# ---- parameter counts (defect 19): the base model's published count, never the adapters ----

CALIBRATION = ROOT.parent / "shared" / "calibration" / "architectures.yaml"
PUBLISHED = {e["hf_id"]: e["param_count_total"] for e in yaml.safe_load(CALIBRATION.read_text())} \
    if CALIBRATION.is_file() else {}


@pytest.mark.skipif(not PUBLISHED, reason="shared/calibration/architectures.yaml not present")
def test_params_of_shipped_recipes_are_the_published_base_counts():
    result = invoke("fit-check", "--gpu", "rtx2080", "--format", "json")
    report = json.loads(result.output)
    checked = {r["model"]: r for r in report["recipes"] if r["model"] in PUBLISHED}
    assert {"google/gemma-2b", "mistralai/Mistral-7B-v0.1", "meta-llama/Llama-2-13b-hf"} <= set(checked)
    for model, entry in checked.items():
        # gemma-2b used to show 2,525,784,064 (its LoRA adapters added in) against 2,506,172,416.
        assert entry["base_params"] == PUBLISHED[model], model
        assert 0 < entry["trainable_params"] < entry["base_params"] // 50  # QLoRA trains adapters only
        assert "total_params" not in entry  # the ambiguous key is gone
    table = invoke("fit-check", "--gpu", "rtx2080").output
    row = next(line for line in table.splitlines() if line.startswith("mistral7b-qlora-8gb "))
    assert row.split()[2] == "7.24B"  # was 7.26B with the r=8 adapters


def test_readme_fit_check_table_shows_what_fit_check_prints():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ recipe fit-check --gpu rtx2080\n", 1)[1].split("```", 1)[0]
    documented = [line.split() for line in block.splitlines()[3:] if line and not line.startswith(("...", "note"))]
    table = invoke("fit-check", "--gpu", "rtx2080").output.split("\n\n")[1]  # card line, table, ...
    printed = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert len(documented) >= 3
    for row in documented:
        # name, model, params, method, estimate and its band (4 cells), VRAM (2 cells) and the verdict
        assert row == printed[row[0]], row[0]


# ---- one read per file; failures keep their structure (issue 7) ----

def test_each_file_is_read_and_checked_once(make_recipe, monkeypatch):
    calls = []
    real = load.resolve
    monkeypatch.setattr(load, "resolve", lambda path, overrides=(): calls.append(path) or real(path, overrides))
    rows, failures = check_files([make_recipe()], card("rtx2080"))
    assert len(rows) == 1 and not failures
    assert len(calls) == 1  # it was resolved twice: once directly, once more inside load_recipe


def test_json_errors_keep_every_problem_structured(make_recipe):
    bad = make_recipe({"lora": {"r": 0}, "training": {"micro_batch_size": 0}}, name="bad.yaml")
    unknown = make_recipe({"model": {"id": "acme/never-seen"}}, name="unknown.yaml")
    result = invoke("fit-check", bad, unknown, "--gpu", "rtx2080", "--format", "json")
    assert result.exit_code == ExitCode.INVALID
    errors = {Path(e["file"]).name: e for e in json.loads(result.stdout)["errors"]}
    invalid = errors["bad.yaml"]
    assert invalid["exit_code"] == ExitCode.INVALID and "message" not in invalid
    assert {p["path"] for p in invalid["problems"]} == {"$.lora.r", "$.training.micro_batch_size"}
    for problem in invalid["problems"]:
        assert problem["file"] == str(bad) and problem["line"] > 1 and problem["column"] >= 1
        assert "hint:" not in problem["message"]
    (model,) = errors["unknown.yaml"]["problems"]
    assert model["path"] == "$.model.id" and model["file"] == str(unknown) and model["line"] > 1
    assert "acme/never-seen" in model["message"] and "three ways" in model["hint"]
    assert "three ways" not in model["message"]


def test_fit_check_of_a_folder_is_a_located_problem_like_validate(tmp_path):
    result = invoke("fit-check", tmp_path, "--gpu", "rtx2080")
    assert result.exit_code == ExitCode.INVALID == invoke("validate", tmp_path).exit_code
    assert result.stderr.startswith(f"{tmp_path}:1:1: ") and "is a directory" in result.stderr
    assert "Usage:" not in result.output


# ---- several GPUs (defect 20): per GPU, how many, which strategy ----

def test_several_gpus_say_the_figures_are_per_gpu(make_recipe):
    path = make_recipe({**SEVEN_B, "method": "full"})
    args = ("fit-check", path, "--gpu", "rtx2080", "--gpus", "4", "--parallelism", "zero3")
    table = invoke(*args, "-v")
    assert table.exit_code == ExitCode.DOES_NOT_FIT
    lines = table.output.splitlines()
    assert lines[0] == "RTX 2080: 8.00 GiB, compute capability 7.5; estimates per GPU, 4 GPUs, zero3"
    assert any(line.startswith("t: DOES NOT FIT (") and line.endswith(") per GPU, 4 GPUs, zero3") for line in lines)
    assert "(per GPU, 4 GPUs, zero3), RTX 2080 has 8.00 GiB." in table.output
    report = json.loads(invoke(*args, "--format", "json").output)
    assert (report["num_gpus"], report["parallelism"]) == (4, "zero3")
    single = json.loads(invoke("fit-check", path, "--gpu", "rtx2080", "--format", "json").output)
    assert (single["num_gpus"], single["parallelism"]) == (1, "none")
    assert "per GPU" not in invoke("fit-check", path, "--gpu", "rtx2080").output
    ddp = json.loads(invoke("fit-check", path, "--gpu", "rtx2080", "--gpus", "2", "--format", "json").output)
    assert ddp["parallelism"] == "ddp"  # the default for several GPUs, said so


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_a_strategy_for_several_gpus_with_one_is_a_usage_error(make_recipe, strategy):
    result = invoke("fit-check", make_recipe(), "--gpu", "rtx2080", "--parallelism", strategy)
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith(f"--parallelism: {strategy} spreads training over several GPUs, but --gpus is 1")
    assert f"hint: add the number of GPUs, e.g. --gpus 4 --parallelism {strategy}" in result.stderr
    assert invoke("fit-check", make_recipe(), "--gpu", "rtx2080", "--gpus", "1", "--parallelism", strategy
                  ).exit_code == ExitCode.USAGE


# ---- ambiguous card names (defect 12) through the command ----

def test_an_ambiguous_gpu_name_asks_instead_of_choosing(make_recipe):
    result = invoke("fit-check", make_recipe(), "--gpu", "4060 ti")
    assert result.exit_code == ExitCode.USAGE
    assert "matches several cards: RTX 4060 Ti 8GB, RTX 4060 Ti 16GB" in result.stderr
    assert "RTX 4060 Ti 8GB: 8.00 GiB" in invoke("fit-check", make_recipe(), "--gpu", "rtx 4060 ti 8gb").output


def test_write_keeps_a_local_model_folder_working_from_another_folder(make_recipe, tmp_path):
    from recipecli.fit.model_catalog import CONFIGS

    (config,) = [c for names, c in CONFIGS.items() if "mistralai/Mistral-7B-v0.1" in names.split("|")]
    (tmp_path / "models" / "m7b").mkdir(parents=True)
    (tmp_path / "models" / "m7b" / "config.json").write_text(json.dumps(config))
    path = make_recipe({"model": {"id": "./models/m7b"}, "method": "lora"})
    fitted = tmp_path / "elsewhere" / "fitted.yaml"
    fitted.parent.mkdir()
    assert invoke("fit-check", path, "--gpu", "rtx2080", "--write", fitted).exit_code == ExitCode.DOES_NOT_FIT
    assert yaml.safe_load(fitted.read_text())["model"]["id"] == "../models/m7b"
    assert load.load_recipe(fitted).model.local_path == (tmp_path / "models" / "m7b").resolve()
    # The table shows the model as written, not the absolute path it was resolved to.
    assert " ./models/m7b " in invoke("fit-check", path, "--gpu", "rtx2080").output


@pytest.mark.parametrize("where", ["catalog", "local folder"])
def test_a_mixture_of_experts_is_counted_whole_never_judged_as_dense(make_recipe, offline, tmp_path, where):
    # Read as a dense model, Mixtral 8x7B was 7.24B parameters and "fits" an 8 GB card under QLoRA
    from recipecli.fit.model_catalog import CONFIGS

    (config,) = [c for names, c in CONFIGS.items() if "mistralai/Mixtral-8x7B-v0.1" in names.split("|")]
    model_id = "mistralai/Mixtral-8x7B-v0.1"
    if where == "local folder":
        folder = tmp_path / "mixtral"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        model_id = str(folder)
    path = make_recipe({"model": {"id": model_id}, "lora": {"dropout": 0}})
    result = CliRunner().invoke(main, ["fit-check", str(path), "--gpu", "rtx2080"])
    assert result.exit_code == ExitCode.DOES_NOT_FIT, result.output
    assert "46.7B" in result.output and "DOES NOT FIT" in result.output and "Traceback" not in result.output


def test_all_linear_with_dropout_on_a_mixture_of_experts_is_estimated_with_none_on_the_experts(make_recipe, offline):
    # refused at the dropout before (peft takes none on the experts); the run now gives them none
    path = make_recipe({"model": {"id": "Qwen/Qwen3-30B-A3B"},
                        "lora": {"dropout": 0.1, "target_modules": "all-linear"}})
    result = CliRunner().invoke(main, ["fit-check", str(path), "--gpu", "rtx4090", "-v"])
    assert result.exit_code == ExitCode.DOES_NOT_FIT, result.output
    assert "$.lora.dropout" not in result.output and "DOES NOT FIT" in result.output


def test_recipe_gpu_leaves_a_mixture_of_experts_out_of_the_largest_model_it_names():
    from recipecli.report.gpu import largest_qlora_model

    model, verdict = largest_qlora_model(card("h100"))
    assert verdict.fits and "Mixtral" not in model and "MoE" not in model and "A3B" not in model
