"""`recipe probe --device`: where the steps run, through the real entry point. Without a GPU, cuda
is a usage error that says why; with one, the output says what it measured on."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode

from .conftest import RECIPES

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

CUDA = torch.cuda.is_available()
TINY_LORA = {"model": {"id": str(RECIPES / "models" / "tiny-llama")}, "method": "lora",
             "data": {"max_seq_length": 64}, "training": {"micro_batch_size": 2}}


def probe(*args):
    return CliRunner().invoke(main, ["probe", *map(str, args)])


@pytest.fixture
def tiny(make_recipe, offline):
    return make_recipe(TINY_LORA)


@pytest.mark.skipif(CUDA, reason="a GPU is here")
def test_cuda_without_a_gpu_is_a_usage_error_not_a_traceback(tiny):
    result = probe(tiny, "--device", "cuda")
    assert result.exit_code == ExitCode.USAGE
    assert result.output.startswith("--device: no CUDA GPU: ")
    assert "hint: trace it on the CPU instead: --device cpu" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_device_is_a_usage_error(tiny):
    result = probe(tiny, "--device", "tpu")
    assert result.exit_code == ExitCode.USAGE and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in result.output


@pytest.mark.skipif(CUDA, reason="a GPU is here: auto measures on it")
def test_auto_without_a_gpu_traces_on_the_cpu(tiny):
    runs = [probe(tiny, "--format", "json", "--steps", "1", *device) for device in ((), ("--device", "cpu"))]
    auto, cpu = (json.loads(r.output[r.output.index("{"):]) for r in runs)
    assert auto["traced_on"] == cpu["traced_on"] == "cpu" and auto["fake_tensors"] is True
    assert "measured" not in auto and auto["allocated_bytes"] == cpu["allocated_bytes"]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_on_a_gpu_the_output_says_what_it_measured_on(tiny):
    table = probe(tiny, "--device", "cuda")
    assert table.exit_code == 0, table.output
    name = torch.cuda.get_device_name()
    assert f"measured on {name}: allocated and reserved peaks per phase from torch.cuda" in table.output
    out = json.loads((r := probe(tiny, "--device", "cuda", "--format", "json")).output[r.output.index("{"):])
    measured = out["measured"]
    assert out["traced_on"] == "cuda" and measured["device"] == name
    assert list(measured["phases"]) == ["load", "forward", "backward", "optimizer"]
    assert 0 < measured["allocated_bytes"] <= measured["reserved_bytes"]
    assert measured["tokens_per_second"] > 0 and measured["memory_stats"]["num_alloc_retries"] >= 0
