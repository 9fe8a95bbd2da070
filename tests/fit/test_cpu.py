"""Training on the CPU: the model-size limit and the RAM rule, with the RAM passed as a number."""
from __future__ import annotations

import pytest

from recipecli.errors import UnknownModel
from recipecli.fit.cpu import CPU_MAX_PARAMS, check_cpu, host_memory_bytes
from recipecli.read.load import load_recipe
from recipecli.units import GIB

from ..conftest import RECIPES

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


def test_a_13b_model_is_refused_on_the_cpu_even_with_ram_to_spare():
    verdict = check_cpu(load_recipe(RECIPES / "llama2-13b.yaml"), 1024 * GIB)
    assert not verdict.fits and verdict.params > 13e9
    (reason,) = verdict.reasons
    assert "meta-llama/Llama-2-13b-hf has 13.0B parameters, over the 2B" in reason and "days" in reason


def test_the_tiny_demo_and_a_1b_model_train_on_a_laptop():
    assert check_cpu(load_recipe(RECIPES / "tiny-demo.yaml"), 8 * GIB).fits
    tinyllama = check_cpu(load_recipe(RECIPES / "tinyllama-1.1b.yaml"), 16 * GIB)
    assert tinyllama.fits and tinyllama.params < CPU_MAX_PARAMS


def test_a_recipe_needing_more_than_the_ram_is_refused_with_both_numbers():
    recipe = load_recipe(RECIPES / "tinyllama-1.1b.yaml")
    need = check_cpu(recipe, None).need_bytes
    assert check_cpu(recipe, need).fits
    verdict = check_cpu(recipe, need - 1)
    assert verdict.reasons == (f"training needs ~{need / GIB:.1f} GiB (fp32 on the CPU), more than this "
                               f"machine's {(need - 1) / GIB:.1f} GiB of RAM",)


def test_the_cpu_estimate_is_fp32_and_has_no_cuda_context(make_recipe):
    """A LoRA base loads in fp32 on the CPU: four bytes a weight, whatever precision the recipe asks."""
    recipe = load_recipe(make_recipe({"method": "lora", "training": {"precision": "bf16"}}))
    verdict = check_cpu(recipe, None)
    assert verdict.need_bytes > 4 * verdict.params
    assert verdict.need_bytes < 4 * verdict.params + 8 * GIB  # no 16-bit halving, nothing like a CUDA context


def test_unknown_ram_skips_only_the_ram_rule():
    assert check_cpu(load_recipe(RECIPES / "tiny-demo.yaml"), None).fits
    assert not check_cpu(load_recipe(RECIPES / "llama2-13b.yaml"), None).fits


def test_a_model_of_unknown_shape_is_unknown_not_allowed(make_recipe):
    with pytest.raises(UnknownModel):
        check_cpu(load_recipe(make_recipe({"model": {"id": "nobody/unknown-model"}})), 8 * GIB)


def test_this_machine_reports_its_memory():
    ram = host_memory_bytes()
    assert ram is None or ram > 256 * 2**20
