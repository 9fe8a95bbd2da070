"""The recipe fields added for Axolotl users (training.warmup_steps, training.eval_steps,
lora.use_rslora): checked by the loader, and used by `recipe run` on the tiny model, from an
Axolotl config converted by `recipe convert`."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode, InvalidRecipe
from recipecli.read.load import load_recipe
from recipecli.train import runner

from ..conftest import RECIPES

pytestmark = pytest.mark.usefixtures("offline")

AXOLOTL = f"""\
base_model: {RECIPES / "models" / "tiny-llama"}
adapter: qlora
load_in_4bit: true
lora_r: 4
lora_alpha: 8
lora_target_linear: true
peft_use_rslora: true
datasets:
  - path: {RECIPES / "data" / "tiny-alpaca.jsonl"}
    type: alpaca
val_set_size: 0.25
sequence_len: 192  # the preamble of Axolotl's alpaca prompt is many tokens of the tiny tokenizer
micro_batch_size: 4
max_steps: 4
learning_rate: 0.004
lr_scheduler: constant_with_warmup
warmup_steps: 2
eval_steps: 2
logging_steps: 1
save_steps: 100
output_dir: {{out}}
"""


def _converted(axolotl: str, tmp_path, monkeypatch):
    """`recipe convert` of an Axolotl config (its output_dir under tmp_path), loaded as a recipe."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yml").write_text(axolotl.format(out=tmp_path / "run"))
    result = CliRunner().invoke(main, ["convert", "a.yml", "--from", "axolotl", "-o", "r.yaml"])
    assert result.exit_code == 0, result.output
    return load_recipe(tmp_path / "r.yaml")


def test_a_converted_config_trains_with_warmup_steps_eval_steps_and_rslora(tmp_path, monkeypatch):
    recipe = _converted(AXOLOTL, tmp_path, monkeypatch)
    seen = {}

    class Spy:  # a TrainerCallback reads what the trainer was built with
        def __getattr__(self, name):
            return lambda args, state, control, **kw: seen.update(model=kw.get("model")) if name == "on_train_begin" \
                else None

    done = runner.run(recipe, gpus=(), callbacks=[Spy()])
    assert done.steps == 4
    logs = [json.loads(line) for line in (done.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["learning_rate"] for r in logs if "learning_rate" in r]
    assert rates[0] < rates[-1] == pytest.approx(0.004)  # warmed up over 2 steps, then constant
    # every eval_steps (2 and 4), and once more at the end of the run
    assert [r["step"] for r in logs if "eval_loss" in r] == [2, 4, 4]
    lora = seen["model"].peft_config["default"]
    assert lora.use_rslora and next(m for m in seen["model"].modules() if isinstance(getattr(m, "scaling", None), dict)).scaling[
        "default"] == pytest.approx(8 / 4 ** 0.5)  # alpha / sqrt(r), not alpha / r


@pytest.mark.parametrize("training, data, words", [
    ({"warmup_steps": 5, "warmup_ratio": 0.1}, {}, "warmup_steps and warmup_ratio both set"),
    ({"eval_steps": 10}, {}, "eval_steps without data.val_fraction"),
])
def test_fields_that_exclude_or_need_each_other(make_recipe, training, data, words):
    path = make_recipe({"training": training, "data": data})
    with pytest.raises(InvalidRecipe, match=words):
        load_recipe(path)


def test_warmup_ratio_default_is_left_out_with_warmup_steps(make_recipe):
    assert load_recipe(make_recipe({"training": {"warmup_steps": 5}})).training.warmup_ratio is None
    assert load_recipe(make_recipe()).training.warmup_ratio == 0.03


# issue 10, the second part: DoRA, modules trained in full, early stopping (run on the CPU) and
# Liger's kernels (refused on the CPU, before anything loads).
AXOLOTL_MORE = f"""\
base_model: {RECIPES / "models" / "tiny-llama"}
adapter: qlora
load_in_4bit: true
lora_r: 4
lora_alpha: 8
lora_target_modules: [q_proj, v_proj]
peft_use_dora: true
lora_modules_to_save: [embed_tokens, lm_head]
datasets:
  - path: {RECIPES / "data" / "tiny-alpaca.jsonl"}
    type: alpaca
val_set_size: 0.05
sequence_len: 192  # the preamble of Axolotl's alpaca prompt is many tokens of the tiny tokenizer
micro_batch_size: 4
max_steps: 8
learning_rate: 0.01
logging_steps: 1
eval_steps: 1
save_steps: 1
save_total_limit: 1
early_stopping_patience: 2
output_dir: {{out}}
"""


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_dora_modules_to_save_and_early_stopping_train_from_a_converted_config(tmp_path, monkeypatch):
    import torch

    recipe = _converted(AXOLOTL_MORE, tmp_path, monkeypatch)
    assert (recipe.lora.use_dora, recipe.lora.modules_to_save, recipe.training.early_stopping_patience) == (
        True, ("embed_tokens", "lm_head"), 2)
    seen: dict = {"weights": {}}

    class Spy:
        """Reads the trained model, and makes eval_loss rise after the first evaluation, so that the
        best checkpoint is step 1's and early stopping stops two evaluations later (step 3)."""

        def __getattr__(self, name):
            return lambda *a, **kw: None

        def on_train_begin(self, args, state, control, model=None, **kw):
            seen["model"] = model
            seen["head_before"] = model.base_model.model.lm_head.original_module.weight.detach().clone()

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics["eval_loss"] = float(state.global_step)

        def on_step_end(self, args, state, control, model=None, **kw):
            seen["weights"][state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()
                                                  if p.requires_grad}

    done = runner.run(recipe, gpus=(), callbacks=[Spy()])
    model = seen["model"]
    lora = model.peft_config["default"]
    assert lora.use_dora and set(lora.modules_to_save) >= {"embed_tokens", "lm_head"}
    # DoRA: a trained magnitude vector per adapted layer; modules_to_save: a trained copy, the original frozen.
    magnitudes = [n for n in seen["weights"][1] if "lora_magnitude_vector" in n]
    assert len(magnitudes) == 2 * 2  # q_proj and v_proj in each of the 2 layers
    head = model.base_model.model.lm_head
    assert not head.original_module.weight.requires_grad
    assert torch.equal(head.original_module.weight, seen["head_before"])
    copy = next(n for n in seen["weights"][1] if "lm_head.modules_to_save" in n)
    assert not torch.equal(seen["weights"][1][copy], seen["weights"][3][copy])  # the copy trains

    # Early stopping: evaluations at 1, 2, 3; 2 and 3 are no better than 1, so it stops at 3.
    assert done.steps == 3 and not done.interrupted
    info = yaml.safe_load((done.run_dir / "run.yaml").read_text())
    assert info["result"]["early_stopping"] == {"stopped_early": True, "best_step": 1, "best_eval_loss": 1.0}
    # The best checkpoint survives rotation (save_total_limit 1) under its published name, and the
    # result is its weights, not step 3's.
    assert [p.name for p in done.run_dir.glob("checkpoint-*")] == ["checkpoint-1"]
    state = json.loads((done.run_dir / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(done.run_dir / "checkpoint-1")
    saved, best = _tensors(done.saved), _tensors(done.run_dir / "checkpoint-1")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
    assert any("lora_magnitude_vector" in k for k in saved) and any("lm_head" in k for k in saved)
    step3 = seen["weights"][3][copy]
    assert not torch.equal(next(v for k, v in saved.items() if "lm_head" in k).to(step3.dtype), step3)


def test_fit_check_refuses_dora_at_its_field_instead_of_under_estimating(make_recipe):
    path = make_recipe({"lora": {"use_dora": True}})
    result = CliRunner().invoke(main, ["fit-check", str(path), "--gpu", "rtx4090"])
    assert result.exit_code == ExitCode.INVALID, result.output
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "use_dora" in text)
    assert f"{path}:{line}:" in result.output
    assert "$.lora.use_dora: fit-check does not model DoRA's memory yet" in result.output


def test_fit_check_says_it_does_not_count_qat_at_its_field(make_recipe):
    path = make_recipe({"method": "full", "training": {"qat": {"activation_dtype": "int8"}}})
    result = CliRunner().invoke(main, ["fit-check", str(path), "--gpu", "rtx4090"])
    assert result.exit_code == ExitCode.INVALID, result.output
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "activation_dtype" in text)
    assert f"{path}:{line}:" in result.output
    assert "$.training.qat: fit-check does not model quantization-aware training's memory yet" in result.output


LIGER_AXOLOTL = AXOLOTL.replace("peft_use_rslora: true\n", "plugins:\n  - axolotl.integrations.liger.LigerPlugin\n"
                                "liger_rope: true\nliger_rms_norm: true\nliger_glu_activation: true\n"
                                "liger_layer_norm: true\nliger_fused_linear_cross_entropy: true\n")


def test_liger_converts_and_is_refused_on_the_cpu_before_anything_loads(tmp_path, monkeypatch):
    recipe = _converted(LIGER_AXOLOTL, tmp_path, monkeypatch)
    assert recipe.training.liger_kernel is True
    with pytest.raises(InvalidRecipe) as info:
        runner.run(recipe, gpus=())
    (problem,) = info.value.problems
    assert problem.path == "$.training.liger_kernel" and "run on a CUDA GPU" in problem.message
    assert problem.location.line == next(i for i, t in enumerate((tmp_path / "r.yaml").read_text().splitlines(), 1)
                                         if "liger_kernel" in t)
    assert not (tmp_path / "run").exists()  # refused before the run folder was taken


def test_liger_reaches_trl_as_its_layer_kernels_with_trl_s_own_head(make_recipe):
    from recipecli.fit.precision import choose

    recipe = load_recipe(make_recipe({"training": {"liger_kernel": True}}))
    args = runner._sft_config(recipe, choose(recipe, None), recipe.output_dir, has_eval=False, cuda=False,
                              steps_per_epoch=1)
    assert args.use_liger_kernel is True and args.liger_kernel_config is None  # Liger's own defaults: every kernel
    some = load_recipe(make_recipe({"training": {"liger_kernel": ["rms_norm", "glu"]}}))
    args = runner._sft_config(some, choose(some, None), some.output_dir, has_eval=False, cuda=False, steps_per_epoch=1)
    assert args.use_liger_kernel is True
    # every kernel said (Liger's functions default the rest to on), TRL's head kept
    assert args.liger_kernel_config == {"rope": False, "rms_norm": True, "swiglu": True, "geglu": True,
                                        "layer_norm": False}
    plain = load_recipe(make_recipe())
    assert runner._sft_config(plain, choose(plain, None), plain.output_dir, has_eval=False,
                              cuda=False, steps_per_epoch=1).use_liger_kernel is False


def test_neftune_reaches_the_trainer(make_recipe):
    from recipecli.fit.precision import choose

    recipe = load_recipe(make_recipe({"training": {"neftune_noise_alpha": 5}}))
    args = runner._sft_config(recipe, choose(recipe, None), recipe.output_dir, has_eval=False, cuda=False,
                              steps_per_epoch=1)
    assert args.neftune_noise_alpha == 5
    plain = load_recipe(make_recipe())
    assert runner._sft_config(plain, choose(plain, None), plain.output_dir, has_eval=False, cuda=False,
                              steps_per_epoch=1).neftune_noise_alpha is None


def test_adam_settings_reach_the_optimizer(make_recipe):
    from recipecli.fit.precision import choose

    recipe = load_recipe(make_recipe({"training": {"adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6}}))
    args = runner._sft_config(recipe, choose(recipe, None), recipe.output_dir, has_eval=False, cuda=False,
                              steps_per_epoch=1)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.8, 0.95, 1e-6)
    from transformers import Trainer

    _, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert kwargs["betas"] == (0.8, 0.95) and kwargs["eps"] == 1e-6


def test_min_lr_ratio_is_the_cosine_schedule_s_floor(make_recipe):
    import torch
    from transformers import get_scheduler

    from recipecli.fit.precision import choose

    recipe = load_recipe(make_recipe({"training": {"min_lr_ratio": 0.1, "max_steps": 10, "warmup_steps": 2}}))
    args = runner._sft_config(recipe, choose(recipe, None), recipe.output_dir, has_eval=False, cuda=False,
                              steps_per_epoch=1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.training.learning_rate)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=2, num_training_steps=10,
                             scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    for _ in range(10):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.1 * recipe.training.learning_rate)


@pytest.mark.parametrize("steps_per_epoch", [10, 101, 3])
def test_early_stopping_saves_every_evaluation_it_may_keep(make_recipe, steps_per_epoch):
    """saves_per_epoch 1, evals_per_epoch 4 (Axolotl's falcon and xgen examples): whatever an epoch's
    steps, save_steps is a multiple of eval_steps, which load_best_model_at_end requires (SFTConfig
    refuses otherwise)."""
    from recipecli.fit.precision import choose

    recipe = load_recipe(make_recipe({"training": {"saves_per_epoch": 1, "evals_per_epoch": 4,
                                                   "early_stopping_patience": 3}, "data": {"val_fraction": 0.1}}))
    args = runner._sft_config(recipe, choose(recipe, None), recipe.output_dir, has_eval=True, cuda=False,
                              steps_per_epoch=steps_per_epoch)
    assert args.save_steps % args.eval_steps == 0 and args.load_best_model_at_end
    assert args.eval_steps == max(1, steps_per_epoch // 4) and args.save_steps == 4 * args.eval_steps


# What fit-check counts for the new fields (pure arithmetic: no model is loaded).
def _setup(**delta):
    import dataclasses

    from recipecli.fit.setup import Setup

    base = Setup(method="lora", weight_bits=16, quant_type=None, double_quant=False, compute_bytes=2, lora_r=16,
                 lora_targets="all-linear", micro_batch_size=1, seq_len=2048, gradient_checkpointing=True,
                 optimizer="adamw_torch", attention="sdpa", gradient_accumulation_steps=1, lora_dropout=0.05,
                 adapter_bytes=4)
    return dataclasses.replace(base, **delta)


LLAMA3 = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False)


def test_modules_to_save_count_a_trained_copy_its_gradients_and_optimizer_state():
    from recipecli.fit.architectures import Shape
    from recipecli.fit.estimate import estimate

    shape = Shape(**LLAMA3)
    plain, saved = estimate(shape, _setup()), estimate(shape, _setup(modules_to_save=("embed_tokens", "lm_head")))
    copies = 2 * 128256 * 4096
    assert saved.trainable_params - plain.trainable_params == copies
    part = {c.name: c.bytes for c in saved.components}
    assert part["lora"] - {c.name: c.bytes for c in plain.components}["lora"] == copies * 4
    # the step's peak: every gradient, both AdamW moments and its step buffer over every trainable weight
    assert part["gradients"] == saved.trainable_params * 4
    assert part["optimizer"] == saved.trainable_params * (8 + 4)
    # Adafactor steps on an fp32 copy of its largest matrix: the trained head now.
    adafactor = estimate(shape, _setup(optimizer="adafactor", modules_to_save=("lm_head",)))
    ada = {c.name: c.bytes for c in adafactor.components}
    assert ada["optimizer"] >= 12 * 128256 * 4096


@pytest.mark.parametrize("delta, words", [
    ({"modules_to_save": ("q_proj",)}, "self_attn.q_proj would get an adapter"),
    # perhaps a module all the same: not counted, so no estimate (recipe run checks the loaded model)
    ({"modules_to_save": ("norm",)}, "norm: fit-check counts modules_to_save among embed_tokens, lm_head"),
    ({"modules_to_save": ("mlp.down_proj",), "method": "qlora", "weight_bits": 4, "quant_type": "nf4",
      "lora_targets": ("q_proj",)}, "mlp.down_proj is quantized"),
    ({"use_dora": True}, "does not model DoRA's memory yet"),
])
def test_fit_check_refuses_what_it_cannot_count(delta, words):
    from recipecli.errors import NotModeled, UnknownTargets
    from recipecli.fit.architectures import Shape
    from recipecli.fit.estimate import estimate

    with pytest.raises((UnknownTargets, NotModeled), match=words) as info:
        estimate(Shape(**LLAMA3), _setup(**delta))
    # not modelled (recipe run goes on without an estimate) versus wrong (refused everywhere)
    assert type(info.value) is (NotModeled if "use_dora" in delta or "norm" in delta["modules_to_save"]
                                else UnknownTargets)
    assert info.value.path == ("$.lora.use_dora" if "use_dora" in delta else "$.lora.modules_to_save")


def test_liger_changes_no_byte_of_the_estimate_and_says_why():
    from recipecli.fit.architectures import Shape
    from recipecli.fit.estimate import estimate

    plain, liger = estimate(Shape(**LLAMA3), _setup(gradient_checkpointing=False)), \
        estimate(Shape(**LLAMA3), _setup(gradient_checkpointing=False, liger_kernel=True))
    assert [c.bytes for c in plain.components] == [c.bytes for c in liger.components]
    how = {c.name: c.explanation for c in liger.components}
    assert "Liger's fused cross-entropy is off" in how["logits"]  # without checkpointing the forward peak holds it
    assert "Liger's kernels counted as the layers they replace" in how["activations"]


@pytest.mark.parametrize("checkpointing", [True, False])
def test_activation_offloading_is_counted_on_the_gpu_an_upper_bound_and_said(checkpointing):
    from recipecli.fit.architectures import Shape
    from recipecli.fit.estimate import estimate

    plain = estimate(Shape(**LLAMA3), _setup(gradient_checkpointing=checkpointing))
    offloaded = estimate(Shape(**LLAMA3), _setup(gradient_checkpointing=checkpointing, activation_offloading=True))
    assert [c.bytes for c in plain.components] == [c.bytes for c in offloaded.components]
    how = {c.name: c.explanation for c in offloaded.components}
    assert "activation_offloading moves most to host memory (an upper bound)" in how["activations"]


def test_modules_to_save_are_checked_against_the_loaded_model():
    from transformers import AutoModelForCausalLM

    from recipecli.errors import UnknownTargets
    from recipecli.train.model import saved_modules

    model = AutoModelForCausalLM.from_pretrained(str(RECIPES / "models" / "tiny-llama"))
    assert saved_modules(("embed_tokens", "lm_head"), ["q_proj"], model) == ["embed_tokens", "lm_head"]
    assert saved_modules((), "all-linear", model) is None
    with pytest.raises(UnknownTargets, match="embeddings match no module of this llama model"):
        saved_modules(("embeddings",), "all-linear", model)  # peft would skip it without a word
    with pytest.raises(UnknownTargets, match="q_proj would get an adapter .target_modules all-linear."):
        saved_modules(("q_proj",), "all-linear", model)  # peft would train it in full, adapter dropped


def test_a_quantized_layer_cannot_be_trained_in_full():
    from transformers import AutoModelForCausalLM

    from recipecli.errors import UnknownTargets
    from recipecli.train.model import bnb_config, saved_modules

    model = AutoModelForCausalLM.from_pretrained(str(RECIPES / "models" / "tiny-llama"),
                                                 quantization_config=bnb_config(4, "nf4", True, "float32"))
    with pytest.raises(UnknownTargets, match="down_proj is quantized"):
        saved_modules(("down_proj",), ["q_proj"], model)
    assert saved_modules(("lm_head",), ["q_proj"], model) == ["lm_head"]  # bitsandbytes leaves the head unquantized


# The fields grown for Axolotl keys that were reported "not converted": resize_token_embeddings_to_32x
# (model.pad_vocab_to_multiple_of) and dataloader_drop_last (training.dataloader_drop_last).
def test_pad_vocab_grows_the_embedding_fit_check_counts_it_and_generate_loads_the_trained_rows(
        tmp_path, monkeypatch, capfd):
    from recipecli.fit.precision import choose
    from recipecli.fit.verdict import recipe_shape
    from recipecli.train import after
    from recipecli.train.model import load_model

    converted = _converted(AXOLOTL.replace("peft_use_rslora: true\n", "resize_token_embeddings_to_32x: true\n"),
                           tmp_path, monkeypatch)
    assert converted.model.pad_vocab_to_multiple_of == 32
    # The tiny model's 512 rows hold its 512 tokens rounded up to 32 already: nothing grows, as in Axolotl.
    model = load_model(converted, choose(converted, None), cuda=False)
    assert model.get_input_embeddings().num_embeddings == 512 and recipe_shape(converted).vocab_size == 512

    recipe = load_recipe(tmp_path / "r.yaml", ["model.pad_vocab_to_multiple_of=96", "training.max_steps=2"])
    assert recipe_shape(recipe).vocab_size == 576  # fit-check counts the rows the run gives the model
    seen = {}

    class Spy:
        def __getattr__(self, name):
            return lambda *a, **kw: None

        def on_train_begin(self, args, state, control, model=None, **kw):
            seen["rows"] = (model.get_input_embeddings().num_embeddings, model.get_output_embeddings().out_features)

    done = runner.run(recipe, gpus=(), callbacks=[Spy()])
    assert seen["rows"] == (576, 576)  # the embedding and the untied head, 512 tokens rounded up to 96
    assert "note: model.pad_vocab_to_multiple_of 96: the embedding grows from 512 to 576 rows" in capfd.readouterr().err
    # peft saves the grown embedding and head with the adapter; generate pads the base alike to load them.
    assert any("embed_tokens" in k for k in _tensors(done.saved))
    assert isinstance(after.generate(done.run_dir, "Name a colour.", max_new_tokens=3, gpus=()), str)


def test_dataloader_drop_last_leaves_out_the_short_micro_batch_and_counts_the_steps_so(tmp_path, monkeypatch):
    config = AXOLOTL.replace("max_steps: 4\n", "num_epochs: 1\ndataloader_drop_last: true\n").replace(
        "micro_batch_size: 4", "micro_batch_size: 5")
    recipe = _converted(config, tmp_path, monkeypatch)
    assert recipe.training.dataloader_drop_last is True
    done = runner.run(recipe, gpus=())
    info = yaml.safe_load((done.run_dir / "run.yaml").read_text())
    train = info["examples"]["train"]
    assert train % 5 and done.steps == train // 5 == info["data"]["steps_per_epoch"]  # not the ceiling


def test_dataloader_drop_last_refuses_data_that_fills_no_micro_batch_at_its_field(make_recipe):
    from recipecli.errors import DataError

    path = make_recipe({"model": {"id": str(RECIPES / "models" / "tiny-llama")},
                        "data": {"datasets": [{"path": str(RECIPES / "data" / "tiny-alpaca.jsonl"), "format": "alpaca",
                                               "max_samples": 12}], "val_fraction": 0.25},
                        "training": {"dataloader_drop_last": True, "micro_batch_size": 4}})
    with pytest.raises(DataError) as info:
        runner.run(load_recipe(path), gpus=())
    assert info.value.path == "$.training.dataloader_drop_last"
    assert info.value.where.line == next(i for i, t in enumerate(path.read_text().splitlines(), 1)
                                         if "dataloader_drop_last" in t)
    assert "the 3 held-out sequences fill no micro-batch of 4" in info.value.message
    assert "nothing to evaluate" in info.value.message and "data.val_fraction" in info.value.hint
