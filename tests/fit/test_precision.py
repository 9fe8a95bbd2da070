"""The precision decisions for every card, method and precision: one pure function, checked on the CPU.

Each row says what the run stores and computes in; the runner enforces the same dtypes
(tests/train/test_runner.py::test_the_trainer_gets_the_dtypes_precision_decides) and the estimate
counts them (test_the_estimate_counts_the_adapters_in_the_dtype_the_run_trains).
"""
from __future__ import annotations

import pytest

from recipecli.errors import InvalidRecipe
from recipecli.fit.gpu_catalog import card, gpu_from_vram
from recipecli.fit.precision import DTYPE_BYTES, choose, portable
from recipecli.fit.verdict import setup_for
from recipecli.read.load import load_recipe

CARDS = {"cpu": None, "rtx2080": card("rtx2080"), "t4": card("t4"), "rtx3090": card("rtx3090"),
         "a100": card("a100 80gb"), "vram8": gpu_from_vram(8)}
METHODS = {"qlora4": {"method": "qlora"}, "qlora8": {"method": "qlora", "quantization": {"bits": 8}},
           "lora": {"method": "lora"}, "full": {"method": "full"}}
F32, F16, B16 = "float32", "float16", "bfloat16"

# (card, precision) -> resolved precision, or None where the card refuses it.
RESOLVED = {
    ("cpu", "auto"): "fp32", ("cpu", "fp16"): "fp32", ("cpu", "bf16"): "fp32", ("cpu", "fp32"): "fp32",
    ("rtx2080", "auto"): "fp16", ("rtx2080", "fp16"): "fp16", ("rtx2080", "bf16"): None, ("rtx2080", "fp32"): "fp32",
    ("t4", "auto"): "fp16", ("t4", "fp16"): "fp16", ("t4", "bf16"): None, ("t4", "fp32"): "fp32",
    ("rtx3090", "auto"): "bf16", ("rtx3090", "fp16"): "fp16", ("rtx3090", "bf16"): "bf16",
    ("rtx3090", "fp32"): "fp32",
    ("a100", "auto"): "bf16", ("a100", "fp16"): "fp16", ("a100", "bf16"): "bf16", ("a100", "fp32"): "fp32",
    # --vram: the generation is unknown, so auto is counted as fp16 and bf16 is taken at its word.
    ("vram8", "auto"): "fp16", ("vram8", "fp16"): "fp16", ("vram8", "bf16"): "bf16", ("vram8", "fp32"): "fp32",
    # every card computes fp16
    **{(where, "pure_fp16"): "pure_fp16" for where in ("rtx2080", "t4", "rtx3090", "a100", "vram8")},
    ("cpu", "pure_fp16"): "fp32",
}

# (method, resolved precision) -> base weights, trainable parameters, autocast, GradScaler.
DTYPES = {
    ("qlora4", "fp32"): (F32, F32, None, False),
    ("qlora4", "fp16"): (F16, F32, F16, True),  # TRL's bf16 adapters undone: the scaler needs fp32
    ("qlora4", "bf16"): (B16, B16, B16, False),  # TRL's bf16 adapters kept
    ("qlora8", "fp32"): (F32, F32, None, False),
    ("qlora8", "fp16"): (F16, F32, F16, True),
    ("qlora8", "bf16"): (B16, B16, B16, False),
    ("lora", "fp32"): (F32, F32, None, False),
    ("lora", "fp16"): (F16, F32, F16, True),  # peft upcasts adapters on a 16-bit base
    ("lora", "bf16"): (B16, F32, B16, False),
    ("full", "fp32"): (F32, F32, None, False),
    ("full", "fp16"): (F32, F32, F16, True),  # fp16 mixed precision over fp32 master weights
    ("full", "bf16"): (B16, B16, B16, False),
    # fp16 weights as they are: no autocast, no scaler; peft's adapters stay fp32
    ("qlora4", "pure_fp16"): (F16, F32, None, False),
    ("qlora8", "pure_fp16"): (F16, F32, None, False),
    ("lora", "pure_fp16"): (F16, F32, None, False),
    ("full", "pure_fp16"): (F16, F16, None, False),  # no fp32 copy: half of fp16's weights and gradients
}


@pytest.fixture
def recipe_for(make_recipe):
    def make(method: str, precision: str):
        delta = {**METHODS[method], "training": {"precision": precision}}
        if method == "full":
            delta["lora"] = None
            if precision == "pure_fp16":  # torch's AdamW is refused with it (rules.pure_fp16_needs_an_fp32_update)
                delta["training"]["optimizer"] = "adamw_8bit"
        return load_recipe(make_recipe(delta))

    return make


@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16", "fp32", "pure_fp16"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("where", list(CARDS))
def test_every_card_method_and_precision(recipe_for, where, method, precision):
    recipe = recipe_for(method, precision)
    resolved = RESOLVED[(where, precision)]
    if resolved is None:
        with pytest.raises(InvalidRecipe, match="bf16 needs compute capability >= 8.0"):
            choose(recipe, CARDS[where])
        return
    choices = choose(recipe, CARDS[where])
    assert choices.precision == resolved
    got = (choices.weight_dtype, choices.trainable_dtype, choices.autocast_dtype, choices.grad_scaler)
    assert got == DTYPES[(method, resolved)]
    # The GradScaler unscales fp32 gradients only: fp16 trainable weights would make it refuse.
    assert not choices.grad_scaler or choices.trainable_dtype == F32
    if method.startswith("qlora"):
        assert choices.compute_dtype == {"fp32": F32, "fp16": F16, "bf16": B16, "pure_fp16": F16}[resolved]


def test_turing_with_fp16_trains_fp32_adapters(recipe_for):
    """The RTX 2080 case of the issue: fp16 AMP, 4-bit base, adapters that the scaler accepts."""
    choices = choose(recipe_for("qlora4", "auto"), card("rtx2080"))
    assert (choices.precision, choices.trainable_dtype, choices.grad_scaler) == ("fp16", F32, True)
    assert "RTX 2080 (CC 7.5) has no bf16: precision auto -> fp16" in choices.notes


@pytest.mark.parametrize("method", list(METHODS))
def test_portable_choices_run_anywhere_in_fp32(recipe_for, method):
    recipe = recipe_for(method, "bf16")
    choices = portable(recipe)
    assert (choices.precision, choices.attention, choices.autocast_dtype, choices.grad_scaler) == \
        ("fp32", "sdpa", None, False)
    assert choices.weight_dtype == choices.trainable_dtype == F32
    assert choices.compute_dtype == (F32 if method.startswith("qlora") else None)


@pytest.mark.parametrize("where", ["rtx2080", "rtx3090", "vram8"])
@pytest.mark.parametrize("method", ["qlora4", "qlora8", "lora"])
def test_the_estimate_counts_the_adapters_in_the_dtype_the_run_trains(recipe_for, where, method):
    recipe = recipe_for(method, "auto")
    setup, _ = setup_for(recipe, CARDS[where])
    assert setup.adapter_bytes == DTYPE_BYTES[choose(recipe, CARDS[where]).trainable_dtype]


def test_fp32_adapters_on_turing_are_counted_at_4_bytes(recipe_for):
    """The mechanism that changed: a 4-bit base on an fp16 card trains fp32, not TRL's bf16, adapters."""
    from recipecli.fit.verdict import check

    recipe = recipe_for("qlora4", "auto")
    turing, ampere = check(recipe, card("rtx2080")), check(recipe, card("rtx3090"))
    adapters = turing.estimate.trainable_params
    parts = {v: {c.name: c.bytes for c in v.estimate.components} for v in (turing, ampere)}
    assert parts[turing]["lora"] == 4 * adapters
    assert parts[ampere]["lora"] == 2 * adapters


@pytest.mark.parametrize("where, on", [("cpu", False), ("rtx2080", False), ("t4", False), ("vram8", False),
                                        ("rtx3090", True), ("a100", True)])
def test_tf32_is_on_only_where_the_card_has_it_and_said_elsewhere(make_recipe, where, on):
    choices = choose(load_recipe(make_recipe({"training": {"tf32": True, "precision": "fp32"}})), CARDS[where])
    assert choices.tf32 is on
    assert any("tf32 changes nothing here" in note for note in choices.notes) is not on
    assert choose(load_recipe(make_recipe({"training": {"precision": "fp32"}})), CARDS[where]).tf32 is False


# (card, precision) -> whether the run repeats grouped key/value heads: no fused kernel for grouped
# heads there (flash/cuDNN: compute capability 8.0 and 16-bit; the memory-efficient kernel takes none).
GQA_REPEAT = {
    ("cpu", "auto"): False,  # the CPU's sdpa takes grouped heads
    ("rtx2080", "auto"): True, ("t4", "fp16"): True, ("rtx2080", "fp32"): True,
    ("rtx3090", "auto"): False, ("rtx3090", "fp16"): False, ("rtx3090", "fp32"): True,
    ("a100", "bf16"): False, ("a100", "fp32"): True,
    ("vram8", "auto"): True,  # an unknown generation is taken as pre-Ampere, as for precision
}


@pytest.mark.parametrize("where, precision", sorted(GQA_REPEAT))
@pytest.mark.parametrize("method", ["qlora4", "lora", "full"])
def test_grouped_heads_are_repeated_where_no_fused_kernel_takes_them(recipe_for, where, precision, method):
    recipe = recipe_for(method, precision)
    choices = choose(recipe, CARDS[where])
    assert choices.gqa_repeat is GQA_REPEAT[where, precision]
    setup, _ = setup_for(recipe, CARDS[where])
    assert setup.grouped_attention == ("repeat" if choices.gqa_repeat else "native")


def test_grouped_heads_are_left_to_other_attention_kernels(make_recipe):
    for attention in ("eager", "flash_attention_2"):
        recipe = load_recipe(make_recipe({"training": {"attention": attention}}))
        assert choose(recipe, card("a100 80gb")).gqa_repeat is False
    assert choose(load_recipe(make_recipe({"training": {"attention": "eager"}})), card("rtx2080")).gqa_repeat is False


def test_fit_check_says_when_the_grouped_heads_are_repeated(make_recipe):
    """The activations' line names the kernel, and why it holds repeated heads on a 2080 (Mistral:
    32 query, 8 key/value heads) and not on an A100 in bf16."""
    from recipecli.fit.verdict import check

    said = "key/value heads repeated: this card has no fused kernel for grouped heads in this dtype"
    recipe = load_recipe(make_recipe({"model": {"id": "mistralai/Mistral-7B-v0.1"}}))
    lines = {name: dict((c.name, c.explanation) for c in check(recipe, card(name)).estimate.components)
             for name in ("rtx2080", "a100 80gb")}
    assert said in lines["rtx2080"]["activations"] and said not in lines["a100 80gb"]["activations"]


def test_a_model_transformers_runs_without_sdpa_gets_eager_from_auto_and_refuses_sdpa(make_recipe):
    # Gemma 2 (logit softcapping) has no sdpa path in transformers: asked for it, from_pretrained refuses
    # the model, so fit-check's "fits" with sdpa's memory was a run that could not start.
    from recipecli.fit.verdict import check

    auto = load_recipe(make_recipe({"model": {"id": "google/gemma-2-9b"}}))
    choices = choose(auto, card("rtx2080"), "gemma2")
    assert choices.attention == "eager" and any("without sdpa: attention auto -> eager" in n for n in choices.notes)
    assert choose(auto, card("rtx2080"), "llama").attention == "sdpa"
    eager = load_recipe(make_recipe({"model": {"id": "google/gemma-2-9b"}, "training": {"attention": "eager"}},
                                    name="eager.yaml"))
    assert check(auto, card("a100 80gb")).estimate.device_bytes == check(eager, card("a100 80gb")).estimate.device_bytes
    sdpa = load_recipe(make_recipe({"model": {"id": "google/gemma-2-9b"}, "training": {"attention": "sdpa"}},
                                   name="sdpa.yaml"))
    with pytest.raises(InvalidRecipe) as refused:
        check(sdpa, card("a100 80gb"))
    assert [(p.path, p.hint) for p in refused.value.problems] == [
        ("$.training.attention", "set training.attention to auto (eager for this model)")]
    flash = load_recipe(make_recipe({"model": {"id": "google/gemma-2-9b"},
                                     "training": {"attention": "flash_attention_2"}}, name="flash.yaml"))
    with pytest.raises(InvalidRecipe, match="eager for this model"):
        choose(flash, card("rtx2080"), "gemma2")
