"""Resolving "auto" on a card, the card's rules, verdicts and suggestions: GPUs passed as numbers."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from recipecli.read import load
from recipecli.errors import InvalidRecipe
from recipecli.errors import UnknownModel, UnknownTargets
from recipecli.fit.architectures import find_shape
from recipecli.fit.gpu_catalog import Gpu, card, gpu_from_vram
from recipecli.units import MIB
from recipecli.fit.verdict import BAND, band, check, setup_for, status_of
from recipecli.report.gpu import STANDARD_QLORA_BASE, largest_qlora_model, standard_qlora
from recipecli.units import GIB

RTX2080 = card("rtx2080")
A100 = card("a100-80gb")
SEVEN_B = {"model": {"id": "mistralai/Mistral-7B-v0.1"}}


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def test_auto_precision_is_fp16_without_bf16_with_a_note(make_recipe):
    recipe = load.load_recipe(make_recipe())
    setup, notes = setup_for(recipe, RTX2080)
    assert setup.compute_bytes == 2 and setup.attention == "sdpa"
    assert notes == ["RTX 2080 (CC 7.5) has no bf16: precision auto -> fp16"]
    assert setup_for(recipe, A100)[1] == []


def test_auto_precision_without_gpu_is_fp32(make_recipe):
    setup, notes = setup_for(load.load_recipe(make_recipe()), None)
    assert setup.compute_bytes == 4 and notes == ["no GPU: precision auto -> fp32"]


def test_bf16_on_turing_is_a_located_problem_naming_the_knob(make_recipe):
    path = make_recipe({"training": {"precision": "bf16"}})
    resolved = load.resolve(path)
    with pytest.raises(InvalidRecipe) as exc:
        setup_for(load.load_recipe(path), RTX2080)  # the recipe knows where its values were written
    (problem,) = exc.value.problems
    assert problem.path == "$.training.precision" and "7.5" in problem.message
    assert problem.location == resolved.locate(("training", "precision"))
    assert problem.location.line > 1 and "training.precision to auto" in problem.hint
    setup_for(load.load_recipe(path), A100)  # fine on Ampere


def test_flash_attention_2_needs_ampere(make_recipe):
    recipe = load.load_recipe(make_recipe({"training": {"attention": "flash_attention_2"}}))
    with pytest.raises(InvalidRecipe, match=r"\$\.training\.attention.*compute capability >= 8\.0"):
        setup_for(recipe, RTX2080)
    assert setup_for(recipe, A100)[0].attention == "flash_attention_2"


def test_every_capability_problem_at_once(make_recipe):
    recipe = load.load_recipe(make_recipe({"training": {"precision": "bf16", "attention": "flash_attention_2"},
                                           "quantization": {"compute_dtype": "bfloat16"}}))
    with pytest.raises(InvalidRecipe) as exc:
        setup_for(recipe, card("t4"))
    assert [p.path for p in exc.value.problems] == [
        "$.training.precision", "$.training.attention", "$.quantization.compute_dtype"]


def test_fp16_without_gpu_runs_as_fp32_with_a_note(make_recipe):
    setup, notes = setup_for(load.load_recipe(make_recipe({"training": {"precision": "fp16"}})), None)
    assert setup.compute_bytes == 4 and notes == ["no GPU: precision fp16 runs as fp32 on the CPU"]


def test_unknown_capability_checks_nothing_and_says_so(make_recipe):
    recipe = load.load_recipe(make_recipe({"training": {"precision": "bf16", "attention": "flash_attention_2"}}))
    setup, notes = setup_for(recipe, gpu_from_vram(24))
    assert setup.attention == "flash_attention_2"
    assert len(notes) == 1 and "compute capability unknown" in notes[0] and "--gpu" in notes[0]


@pytest.mark.parametrize("delta, gpu, bits", [
    ({}, RTX2080, 4),
    ({"quantization": {"bits": 8}}, RTX2080, 8),
    ({"method": "lora"}, RTX2080, 16),
    ({"method": "lora", "training": {"precision": "fp32"}}, RTX2080, 32),
    ({"method": "full"}, A100, 16),  # pure bf16 training
    ({"method": "full"}, RTX2080, 32),  # fp16 mixed precision keeps fp32 master weights
    ({"method": "full"}, gpu_from_vram(24), 32),  # unknown card: the larger estimate
])
def test_weight_bits_follow_method_and_precision(make_recipe, delta, gpu, bits):
    setup, _ = setup_for(load.load_recipe(make_recipe(delta)), gpu)
    assert setup.weight_bits == bits


def test_setup_carries_the_recipe_knobs(make_recipe):
    recipe = load.load_recipe(make_recipe({
        "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.1},
        "data": {"max_seq_length": 512},
        "training": {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "optimizer": "paged_adamw_8bit",
                     "gradient_checkpointing": False}}))
    setup, _ = setup_for(recipe, RTX2080, num_gpus=2, parallelism="ddp")
    assert (setup.method, setup.quant_type, setup.double_quant) == ("qlora", "nf4", True)
    assert (setup.lora_r, setup.lora_targets, setup.lora_dropout) == (8, ("q_proj", "v_proj"), 0.1)
    assert (setup.seq_len, setup.micro_batch_size, setup.gradient_accumulation_steps) == (512, 4, 2)
    assert (setup.optimizer, setup.gradient_checkpointing) == ("paged_adamw_8bit", False)
    assert (setup.num_gpus, setup.parallelism) == (2, "ddp")


def test_fits_only_when_the_upper_end_of_the_band_fits():
    vram = 8 * GIB
    at_upper_end = int(vram / (1 + BAND))  # the largest estimate whose band still ends on the card
    while band(at_upper_end + 1)[1] <= vram:
        at_upper_end += 1
    assert band(at_upper_end)[1] <= vram < band(at_upper_end + 1)[1]
    assert status_of(at_upper_end, vram) == "fits"  # exactly at the upper end
    assert status_of(at_upper_end + 1, vram) == "tight"  # between the estimate and the upper end
    assert status_of(vram, vram) == "tight"  # the estimate itself just fits
    assert status_of(vram + 1, vram) == "does_not_fit"  # above the estimate
    low, high = band(GIB)
    assert low < GIB < high and high - GIB == pytest.approx(BAND * GIB, abs=1)


def test_verdict_numbers(make_recipe):
    verdict = check(load.load_recipe(make_recipe()), RTX2080)
    assert verdict.fits and verdict.vram_bytes == 8 * GIB
    assert verdict.headroom_bytes == 8 * GIB - verdict.estimate.device_bytes
    small = check(load.load_recipe(make_recipe()), gpu_from_vram(1))
    assert small.status == "does_not_fit" and small.headroom_bytes < 0


def test_busy_detected_gpu_gets_a_note(make_recipe):
    recipe = load.load_recipe(make_recipe())
    need = check(recipe, RTX2080).estimate.device_bytes
    busy = Gpu("RTX 2080", 8 * GIB, need - GIB, (7, 5), "550.54", 0)
    assert any("other processes hold" in n for n in check(recipe, busy).notes)


def test_largest_qlora_model_grows_with_the_card():
    eight = largest_qlora_model(RTX2080)
    sixteen = largest_qlora_model(card("t4"))
    assert eight is not None and eight[1].fits
    assert 6e9 < eight[1].estimate.base_params < 8e9  # a 7B model on 8 GB
    assert sixteen[1].estimate.base_params > eight[1].estimate.base_params
    assert largest_qlora_model(gpu_from_vram(0.5)) is None


def test_quantized_compute_dtype_sets_the_compute_width(make_recipe):
    # fp16 autocast, but bitsandbytes dequantizes to fp32 for its matmuls.
    recipe = load.load_recipe(make_recipe({"training": {"precision": "fp16"},
                                           "quantization": {"compute_dtype": "float32"}}))
    assert setup_for(recipe, RTX2080)[0].compute_bytes == 4
    fp16 = load.load_recipe(make_recipe({"training": {"precision": "fp16"}}))
    assert setup_for(fp16, RTX2080)[0].compute_bytes == 2


def test_flash_attention_2_without_a_gpu_says_so(make_recipe):
    recipe = load.load_recipe(make_recipe({"training": {"attention": "flash_attention_2"}}))
    with pytest.raises(InvalidRecipe) as exc:
        setup_for(recipe, None)
    (problem,) = exc.value.problems
    assert problem.message == ("flash_attention_2 needs compute capability >= 8.0 (an NVIDIA GPU); "
                               "there is no GPU here")
    assert "training.attention to auto" in problem.hint


def test_flex_attention_needs_an_ampere_card_and_is_counted_as_flash_attention(make_recipe):
    # below compute capability 8.0 (and on the CPU) torch runs FlexAttention's dense fallback, which
    # keeps the whole matrix and fails in fp16; from 8.0 its Triton kernel keeps what flash attention keeps
    from recipecli.fit.estimate import estimate

    flex = load.load_recipe(make_recipe({"training": {"attention": "flex_attention"}}))
    for gpu, where in ((None, "there is no GPU here"), (RTX2080, "lacks it")):
        with pytest.raises(InvalidRecipe) as exc:
            setup_for(flex, gpu)
        (problem,) = exc.value.problems
        assert problem.path == "$.training.attention" and "flex_attention needs compute capability >= 8.0" in \
            problem.message and where in problem.message
    flash = load.load_recipe(make_recipe({"training": {"attention": "flash_attention_2"}}))
    shape = find_shape(flex.model.id)
    for packing in (False, True):
        counted = [estimate(shape, setup_for(dataclasses.replace(r, data=dataclasses.replace(r.data, packing=packing)),
                                             A100)[0]).allocated_bytes for r in (flex, flash)]
        assert counted[0] == counted[1]


def test_the_standard_qlora_run_is_what_a_recipe_extending_the_base_gets(make_recipe):
    extending = load.load_recipe(make_recipe(base={"recipe_version": 1, "name": "x",
                                                   "extends": str(STANDARD_QLORA_BASE), **SEVEN_B}))
    for gpu in (RTX2080, A100):
        assert setup_for(standard_qlora(), gpu) == setup_for(extending, gpu)


@pytest.mark.parametrize("delta, error, field", [
    ({"model": {"id": "acme/never-seen"}}, UnknownModel, ("model", "id")),
    ({"lora": {"target_modules": ["q_proj", "q_prj"]}}, UnknownTargets, ("lora", "target_modules")),
])
def test_model_and_target_errors_are_located_at_their_field(make_recipe, delta, error, field):
    path = make_recipe(delta)
    resolved = load.resolve(path)
    with pytest.raises(error) as exc:
        check(load.load_recipe(path), RTX2080)
    located = exc.value
    assert located.where == resolved.locate(field) and located.where.line > 1
    assert located.path == "$." + ".".join(field)
    assert error is UnknownTargets or "three ways" in located.hint  # the fixes are the hint, apart
    assert str(located).startswith(f"{path}:{located.where.line}:")


def test_the_card_sets_the_cuda_context_and_the_allocator_setting_the_reserve(make_recipe):
    recipe = load.load_recipe(make_recipe())
    turing, hopper = check(recipe, RTX2080).estimate, check(recipe, card("h100")).estimate
    assert turing.device_bytes - turing.reserved_bytes == RTX2080.context_bytes < card("h100").context_bytes
    assert hopper.device_bytes - hopper.reserved_bytes == card("h100").context_bytes
    unknown = check(recipe, gpu_from_vram(8)).estimate
    # a card known by its memory alone: the published upper end, above every generation before Hopper
    assert RTX2080.context_bytes < card("a100 80gb").context_bytes < unknown.context_bytes == 500 * MIB
    fixed = check(recipe, RTX2080, expandable_segments=False).estimate
    assert fixed.allocated_bytes == turing.allocated_bytes and fixed.reserved_bytes >= turing.reserved_bytes
    assert turing.allocated_bytes < turing.reserved_bytes < turing.device_bytes


# --- the band against measured and traced peaks ----------------------------------------------

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published():
    calibration = _benchmark("calibration")
    if not calibration.RUNS.is_file():
        pytest.skip(f"no published runs at {calibration.RUNS}")
    return [calibration.evaluate(row) for row in calibration.load()]


def test_the_band_covers_every_published_run_of_the_stack(published):
    # The Hugging Face stack's rows, the ones recipe run reproduces (calibration.py's targets).
    measured = [r for r in published if r.hf and r.error is not None and not r.row["oom"]]
    assert measured
    outside = {r.row["id"]: f"{r.measured / r.predicted - 1:+.1%}" for r in measured
               if abs(r.measured / r.predicted - 1) > BAND}
    assert not outside, f"measured peaks outside the ±{BAND:.0%} band: {outside}"


def test_no_published_out_of_memory_run_is_called_fits(published):
    ooms = [r for r in published if r.hf and r.row["oom"] and r.predicted is not None and r.card]
    assert ooms
    called_fits = [r.row["id"] for r in ooms if status_of(round(r.predicted), round(r.card)) == "fits"]
    assert not called_fits


def test_the_band_covers_every_traced_row():
    if not (BENCHMARKS / "trace_grid.json").is_file():
        pytest.skip("benchmarks/trace_grid.json has not been traced yet")
    grid = _benchmark("trace_grid")
    records = grid.load().values()
    outside = {}
    for record in records:
        traced, estimated, _ = grid.compare(record)
        if abs(traced / estimated - 1) > BAND:
            outside[record["id"]] = f"{traced / estimated - 1:+.1%}"
    assert not outside, f"traced peaks outside the ±{BAND:.0%} band of the estimate: {outside}"
