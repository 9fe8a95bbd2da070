"""`recipe probe`: a recipe traced at full size under FakeTensorMode, through the real entry point."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode
from recipecli.fit.architectures import find_shape
from recipecli.fit.estimate import CUDA_CONTEXT_BYTES

from ..conftest import RECIPES

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

TINY_LORA = {"model": {"id": str(RECIPES / "models" / "tiny-llama")}, "method": "lora",
             "data": {"max_seq_length": 64}, "training": {"micro_batch_size": 2}}


def probe(*args: str):
    return CliRunner().invoke(main, ["probe", *map(str, args)])


@pytest.fixture
def tiny(make_recipe, offline):
    return make_recipe(TINY_LORA)


def test_the_tiny_recipe_probes_as_a_table(tiny):
    result = probe(tiny)
    assert result.exit_code == 0, result.output
    assert "traced on the CPU under fake tensors: allocated peak exact for transformers" in result.output
    assert "bf16 CPU autocast, bf16 weights, fp32 adapters); reserved and device modelled" in result.output
    assert "note: no --gpu: traced and estimated as on an A100 80GB (bf16)" in result.output
    for row in ("after load", "forward", "backward", "optimizer step", "fit-check (A100 80GB, assumed)"):
        assert row in result.output


def test_the_json_figures_are_consistent(tiny):
    result = probe(tiny, "--format", "json", "--steps", "1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert 0 < out["allocated_bytes"] <= out["reserved_bytes"] < out["device_bytes"]
    assert out["device_bytes"] == out["reserved_bytes"] + CUDA_CONTEXT_BYTES
    assert out["allocated_bytes"] == max(p["allocated_bytes"] for p in out["phases"].values())
    assert list(out["phases"]) == ["load", "forward", "backward", "optimizer"]
    assert sum(out["categories"].values()) == out["allocated_bytes"]
    assert out["base_params"] == find_shape(str(RECIPES / "models" / "tiny-llama"),
                                            RECIPES / "models" / "tiny-llama").param_count()
    # the adapters counted from the traced model equal fit-check's count of them
    assert out["trainable_params"] == out["estimate"]["trainable_params"] > 0
    assert out["steps"] == 1


def test_the_second_step_keeps_the_optimizer_state_through_backward(tiny):
    one, two = (json.loads((r := probe(tiny, "--format", "json", "--steps", n)).output[r.output.index("{"):])
                for n in ("1", "2"))
    assert one["phases"]["backward"]["allocated_bytes"] < two["phases"]["backward"]["allocated_bytes"]


def test_a_qlora_recipe_with_a_paged_8bit_optimizer_probes(make_recipe, offline):
    """What the shipped recipes ask for: a 4-bit base, fp16 on a Turing card, paged_adamw_8bit."""
    recipe = make_recipe({**TINY_LORA, "method": "qlora", "quantization": {"bits": 4, "double_quant": True},
                          "training": {"micro_batch_size": 2, "optimizer": "paged_adamw_8bit"}})
    result = probe(recipe, "--gpu", "rtx2080", "--format", "json", "--steps", "1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["precision"] == "fp16" and out["autocast"] and out["trainable_dtype"] == "float32"
    assert out["categories"]["quantization state"] > 0 and out["trainable_params"] == out["estimate"]["trainable_params"]
    assert "fp16 CPU autocast, 4-bit base, fp32 adapters" in out["provenance"]


@pytest.mark.parametrize("delta", [{"training": {"micro_batch_size": 2, "optimizer": "adamw_8bit"}},
                                   {"training": {"micro_batch_size": 2, "attention": "flash_attention_2"}}])
def test_what_was_refused_is_traced(make_recipe, offline, delta):
    result = probe(make_recipe({**TINY_LORA, **delta}), "--steps", "1")
    assert result.exit_code == 0, result.output
    if delta["training"].get("attention"):
        assert "flash_attention_2 is traced as sdpa's flash kernel" in result.output


def test_a_directory_is_a_located_message(tmp_path):
    result = probe(tmp_path)
    assert result.exit_code == ExitCode.INVALID
    assert str(tmp_path) in result.output and "Traceback" not in result.output


def test_a_missing_file_is_a_located_message(tmp_path):
    result = probe(tmp_path / "nope.yaml")
    assert result.exit_code == ExitCode.INVALID
    assert "nope.yaml" in result.output and "Traceback" not in result.output


def test_a_model_unknown_offline_is_located_at_model_id(make_recipe, offline):
    recipe = make_recipe({"model": {"id": "someone/unknown-model"}, "method": "lora"})
    result = probe(recipe)
    assert result.exit_code == ExitCode.INVALID
    assert f"{recipe}:4:" in result.output and "$.model.id: cannot find the architecture" in result.output
    assert "Traceback" not in result.output


def test_a_mistral_7b_lora_step_probes_under_fake_tensors(make_recipe, offline):
    recipe = make_recipe({"model": {"id": "mistralai/Mistral-7B-v0.1"}, "method": "lora",
                          "data": {"max_seq_length": 512}, "training": {"micro_batch_size": 1}})
    result = probe(recipe, "--format", "json", "--set", "training.precision=fp32")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["base_params"] == 7_241_732_096
    assert out["categories"]["weights"] == 4 * out["base_params"]  # fp32, untied head
    assert out["allocated_bytes"] <= out["reserved_bytes"] < out["device_bytes"]
    # the arithmetic and the trace of the same fp32 setup agree within a few percent
    assert abs(out["estimate"]["allocated_bytes"] / out["allocated_bytes"] - 1) < 0.05


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "recipe.yaml")
    result = probe(tmp_path / "recipe.yaml")  # returns at once: opening a FIFO with no writer would hang
    assert result.exit_code == ExitCode.INVALID and "not a regular file" in result.output


@pytest.mark.parametrize("delta, path", [({"training": {"micro_batch_size": 2.0}}, "$.training.micro_batch_size"),
                                         ({"lora": {"dropout": float("nan")}}, "$.lora.dropout")])
def test_a_float_for_a_whole_number_or_nan_is_refused_before_tracing(make_recipe, offline, delta, path):
    result = probe(make_recipe({**TINY_LORA, **delta}))
    assert result.exit_code == ExitCode.INVALID and path in result.output and "Traceback" not in result.output


def test_a_relative_model_path_probes_from_another_directory(tmp_path, monkeypatch, offline):
    """./models/... is relative to the recipe, wherever the command runs; ~ in output.dir is home."""
    import shutil

    (tmp_path / "proj" / "models").mkdir(parents=True)
    shutil.copytree(RECIPES / "models" / "tiny-llama", tmp_path / "proj" / "models" / "tiny-llama")
    (tmp_path / "proj" / "r.yaml").write_text(
        "recipe_version: 1\nname: rel\nmodel: {id: ./models/tiny-llama}\nmethod: lora\n"
        "data: {datasets: [{path: tatsu-lab/alpaca, format: alpaca}], max_seq_length: 64}\n"
        "training: {micro_batch_size: 2}\noutput: {dir: ~/runs/rel}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = probe("../proj/r.yaml", "--steps", "1")
    assert result.exit_code == 0, result.output
