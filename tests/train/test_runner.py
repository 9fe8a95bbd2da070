"""The runner end to end on the project's tiny Llama: real 4-bit/8-bit bitsandbytes, peft and TRL
on the CPU, a few optimizer steps each. Nothing of the training stack is mocked.

Heavy libraries are imported inside the tests, so collecting this file stays cheap.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import time

import pytest
import yaml

from recipecli.train import after, runfolder
from recipecli.errors import DataError, DoesNotFit, ExitCode, RecipeError, UnknownModel, UnknownTargets, UsageError
from recipecli.fit.gpu_catalog import card, gpu_from_vram
from recipecli.read.load import load_recipe
from recipecli.train.model import load_model, load_tokenizer, lora_targets
from recipecli.fit.precision import choose
from recipecli.train.runner import run

from ..conftest import RECIPES

TINY_MODEL = RECIPES / "models" / "tiny-llama"
DATA = RECIPES / "data"

# A few seconds per run on 2 CPU cores: short sequences, a handful of steps, a small rank.
TINY = {
    "recipe_version": 1,
    "name": "tiny",
    "model": {"id": str(TINY_MODEL)},
    "method": "qlora",
    "lora": {"r": 4, "alpha": 8},
    "data": {"datasets": [{"path": str(DATA / "tiny-alpaca.jsonl"), "format": "alpaca", "max_samples": 24}],
             "max_seq_length": 64},
    "training": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1,
                 "save_steps": 100, "gradient_checkpointing": False},
}


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


@pytest.fixture
def tiny(make_recipe, tmp_path):
    """Load TINY plus a delta, training into tmp_path/<out>."""

    def make(delta: dict | None = None, out: str = "run", **overrides):
        path = make_recipe({"output": {"dir": str(tmp_path / out)}, **(delta or {})}, name=f"{out}.yaml", base=TINY)
        return load_recipe(path, [f"{k}={v}" for k, v in overrides.items()])

    return make


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / runfolder.METRICS).read_text().splitlines()]


def _run_yaml(run_dir):
    return yaml.safe_load((run_dir / runfolder.RUN).read_text())


# --- before any training -------------------------------------------------------------------------


@pytest.mark.parametrize("model, method, advice", [
    ("meta-llama/Llama-2-13b-hf", "qlora", "No combination of the memory knobs makes it fit"),
    ("meta-llama/Llama-2-7b-hf", "lora",
     "  - method lora -> qlora (4-bit NF4 base, double quant)\n  patch:\n    method: qlora"),
])
def test_a_recipe_that_does_not_fit_is_refused_with_breakdown_and_fix(make_recipe, tmp_path, model, method, advice):
    recipe = load_recipe(make_recipe({"model": {"id": model}, "method": method,
                                      "output": {"dir": str(tmp_path / "run")}}))
    with pytest.raises(DoesNotFit) as refused:
        run(recipe, gpus=(card("rtx2080"),))
    message = str(refused.value)
    assert "RTX 2080 has 8.00 GiB" in message and "weights" in message
    assert advice in message and "--force" in message
    assert not (tmp_path / "run").exists()


def test_an_existing_run_folder_is_refused_before_anything_loads(tiny, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runfolder.RECIPE).write_text("name: earlier\n")
    with pytest.raises(UsageError, match="--overwrite"):
        run(tiny(), gpus=())
    assert (tmp_path / "run" / runfolder.RECIPE).read_text() == "name: earlier\n"


def test_overwrite_refuses_a_folder_with_a_recipe_but_no_run_record(tiny, tmp_path):
    """A folder of recipes has a recipe.yaml too; only run.yaml, which recipecli alone writes, marks a run."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / runfolder.RECIPE).write_text("name: mine\n")
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not a run folder.*run.yaml.*refusing to delete"):
        run(tiny(), overwrite=True, gpus=())
    assert sorted(p.name for p in folder.iterdir()) == [runfolder.RECIPE, "thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_resume_with_a_changed_recipe_is_refused_before_anything_is_written(tiny, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    runfolder.write_recipe(folder, tiny())
    (folder / "checkpoint-2").mkdir()
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    changed = tiny(**{"training.learning_rate": 1e-3, "lora.r": 8, "training.max_steps": 9})
    with pytest.raises(UsageError, match=r"changed recipe: lora.r, training.learning_rate differ"):
        run(changed, resume=True, gpus=())
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert [p.name for p in folder.iterdir() if p.is_dir()] == ["checkpoint-2"]


def test_a_model_transformers_does_not_know_is_a_recipe_error(tiny, tmp_path):
    unknown = tmp_path / "qwen9"
    shutil.copytree(TINY_MODEL, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "qwen9_moe"}))
    recipe = tiny({"model": {"id": str(unknown)}})
    with pytest.raises(RecipeError, match=r"(?s)cannot load the model .*qwen9_moe.*\n  hint: an unknown model type"):
        load_model(recipe, choose(recipe, None), cuda=False)


def test_data_errors_come_before_the_model_and_leave_no_folder(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "there"}\n{"instruction": "no answer"}\n')
    recipe = tiny({"data": {"datasets": [{"path": str(bad), "format": "alpaca"}]}})
    with pytest.raises(DataError, match=r"bad.jsonl:2:1: \$\.output: missing"):
        run(recipe, gpus=())
    assert not (tmp_path / "run").exists()


def test_trust_remote_code_is_announced_before_anything_runs(tiny, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no records"):
        run(tiny({"model": {"trust_remote_code": True}, "data": {"datasets": [{"path": str(empty),
                                                                               "format": "alpaca"}]}}),
            gpus=(), trust_remote_code=True)
    assert "warning: model.trust_remote_code is true" in capsys.readouterr().err


def test_a_recipe_that_trusts_remote_code_is_refused_without_the_flag_before_anything_loads(
        make_recipe, tmp_path, offline):
    path = make_recipe({"model": {"id": "someone/model-with-code", "trust_remote_code": True},
                        "output": {"dir": str(tmp_path / "run")}})
    with pytest.raises(UsageError) as refused:
        run(load_recipe(path), gpus=())
    error = refused.value
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "trust_remote_code" in text)
    assert (error.where.file, error.where.line, error.path) == (str(path), line, "$.model.trust_remote_code")
    assert error.hint.endswith(f"recipe run {path} --trust-remote-code")
    assert not (tmp_path / "run").exists() and not any(offline.iterdir())  # nothing downloaded, nothing made
    # The flag is all that stood in the way: with it, the run goes on to the (offline) download.
    with pytest.raises(RecipeError, match="cannot load the tokenizer of someone/model-with-code"):
        run(load_recipe(path), gpus=(), trust_remote_code=True)


def test_trust_remote_code_set_on_the_command_line_is_located_there(make_recipe, tmp_path):
    path = make_recipe({"output": {"dir": str(tmp_path / "run")}})
    with pytest.raises(UsageError) as refused:
        run(load_recipe(path, ["model.trust_remote_code=true"]), gpus=())
    assert str(refused.value).startswith("--set model.trust_remote_code=true:1:25: $.model.trust_remote_code: "
                                         "the recipe trusts")


@pytest.mark.parametrize("command", ["merge", "generate"])
def test_merge_and_generate_refuse_remote_code_without_the_flag_before_loading(tiny, tmp_path, command):
    run_dir = _fake_finished_run(tiny({"model": {"id": "someone/model-with-code", "trust_remote_code": True}}),
                                 tmp_path / "run")
    with pytest.raises(UsageError) as refused:
        after.merge(run_dir, gpus=()) if command == "merge" else after.generate(run_dir, "hi", gpus=())
    error = refused.value
    assert error.where.file == str(run_dir / runfolder.RECIPE) and error.path == "$.model.trust_remote_code"
    assert f"recipe {command} {run_dir}" in error.hint and "--trust-remote-code" in error.hint


@pytest.mark.parametrize("gpu, adapters", [("rtx2080", "float32"), ("rtx3090", "bfloat16"), (None, "float32")])
def test_the_trainer_gets_the_dtypes_precision_decides(tiny, tmp_path, gpu, adapters):
    """TRL casts a 4-bit model's adapters to bf16; under fp16 (an RTX 2080) the runner makes them fp32."""
    import torch

    from recipecli.train import data, runner
    from recipecli.train.model import load_tokenizer

    recipe = tiny()
    choices = choose(recipe, card(gpu) if gpu else None)  # forced: this machine has no such card
    tokenizer = load_tokenizer(recipe)
    train_set, _ = data.load_examples(recipe, tokenizer)
    args = runner._sft_config(recipe, choices, tmp_path / "out", has_eval=False, cuda=False, steps_per_epoch=1)
    assert (args.fp16, args.bf16) == (choices.precision == "fp16", choices.precision == "bf16")
    trainer = runner._trainer(recipe, choices, load_model(recipe, choices, cuda=False), args, tokenizer, train_set,
                              None, ())
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert choices.trainable_dtype == adapters and trained == {getattr(torch, adapters)}
    # What TRL alone leaves: bf16 adapters, which the runner would otherwise train under fp16.
    from trl import SFTTrainer

    base = load_model(recipe, choices, cuda=False)
    plain = SFTTrainer(model=base, args=args, train_dataset=train_set, processing_class=tokenizer,
                       peft_config=runner._lora_config(recipe, base))
    assert {p.dtype for p in plain.model.parameters() if p.requires_grad} == {torch.bfloat16}


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "adafactor", "paged_adamw_32bit", "adamw_torch_8bit",
                                       "adamw_torch_4bit"])
def test_pure_fp16_trains_the_fp16_weights_themselves_without_autocast_or_loss_scaling(tiny, tmp_path, optimizer):
    # Axolotl's float16: on a card without bf16 (forced here: the CPU computes the fp16 step itself),
    # a full fine-tune keeps no fp32 copy; fp16 mixed precision keeps fp32 weights for its GradScaler.
    import torch

    from recipecli.train import data, runner
    from recipecli.train.model import load_tokenizer

    recipe = tiny({"method": "full", "quantization": None, "lora": None,
                   "training": {"precision": "pure_fp16", "optimizer": optimizer}})
    choices = choose(recipe, card("rtx2080"))
    assert (choices.weight_dtype, choices.trainable_dtype, choices.autocast_dtype, choices.grad_scaler) == (
        "float16", "float16", None, False)
    mixed = tiny({"method": "full", "quantization": None, "lora": None, "training": {"precision": "fp16"}}, out="mixed")
    assert choose(mixed, card("rtx2080")).weight_dtype == "float32"
    tokenizer = load_tokenizer(recipe)
    train_set, _ = data.load_examples(recipe, tokenizer)
    args = runner._sft_config(recipe, choices, tmp_path / "out", has_eval=False, cuda=False, steps_per_epoch=1)
    assert (args.fp16, args.bf16) == (False, False)
    trainer = runner._trainer(recipe, choices, load_model(recipe, choices, cuda=False), args, tokenizer, train_set,
                              None, ())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert {p.dtype for p in after.values()} == {torch.float16}
    moved = [n for n, p in after.items() if not torch.equal(p, before[n])]
    assert len(moved) > len(after) // 2 and all(torch.isfinite(p).all() for p in after.values())


def test_torchao_low_bit_adamw_rounds_bf16_weights_stochastically_when_asked(tiny, tmp_path):
    # bf16 full fine-tuning as on a card with bf16 (the CPU computes the bf16 step itself): the Trainer
    # builds torchao's 4-bit AdamW with bf16_stochastic_round, its moments quantized where torchao does
    import torch
    from torchao.optim import AdamW4bit

    from recipecli.train import data, runner
    from recipecli.train.model import load_tokenizer

    recipe = tiny({"method": "full", "quantization": None, "lora": None,
                   "training": {"precision": "bf16", "optimizer": "adamw_torch_4bit", "bf16_stochastic_round": True}})
    choices = choose(recipe, card("rtx4090"))
    assert (choices.weight_dtype, choices.trainable_dtype) == ("bfloat16", "bfloat16")
    tokenizer = load_tokenizer(recipe)
    train_set, _ = data.load_examples(recipe, tokenizer)
    args = runner._sft_config(recipe, choices, tmp_path / "out", has_eval=False, cuda=False, steps_per_epoch=1)
    trainer = runner._trainer(recipe, choices, load_model(recipe, choices, cuda=False), args, tokenizer, train_set,
                              None, ())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper, where there is one
    assert isinstance(inner, AdamW4bit)
    assert inner.bf16_stochastic_round  # transformers passes strtobool's 1
    plain = tiny({"method": "full", "quantization": None, "lora": None,
                  "training": {"precision": "bf16", "optimizer": "adamw_torch_4bit"}}, out="plain")
    assert runner._sft_config(plain, choose(plain, card("rtx4090")), tmp_path / "p", has_eval=False, cuda=False,
                              steps_per_epoch=1).optim_args is None
    kinds = {type(v).__name__ for state in inner.state.values() for v in state.values()}
    assert "OptimState4bit" in kinds and "Tensor" in kinds  # small tensors keep plain moments
    after = dict(trainer.model.named_parameters())
    assert {p.dtype for p in after.values()} == {torch.bfloat16}
    moved = [n for n, p in after.items() if not torch.equal(p, before[n])]
    assert len(moved) > len(after) // 2 and all(torch.isfinite(p).all() for p in after.values())


def test_torchao_s_optimizer_without_torchao_is_refused_at_its_field_before_the_run_folder(tiny, monkeypatch):
    import sys

    recipe = tiny({"method": "full", "lora": None, "training": {"optimizer": "adamw_torch_4bit"}})
    monkeypatch.setitem(sys.modules, "torchao", None)  # what `import torchao` finds when it is not installed
    with pytest.raises(RecipeError) as info:
        run(recipe, gpus=())
    assert info.value.path == "$.training.optimizer" and "recipecli[torchao]" in info.value.hint
    assert "adamw_torch_4bit needs torchao" in str(info.value) and info.value.where.line > 1
    assert not recipe.output_dir.exists()


def test_a_run_with_torchao_s_optimizer_resumes_its_quantized_state(tiny):
    # the checkpoint holds torchao's quantized moments (tensor subclasses); the resumed steps are the
    # straight run's
    from transformers import TrainerCallback

    class SigtermAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    full = {"method": "full", "lora": None, "training": {"optimizer": "adamw_torch_8bit"}}
    settings_ = {"training.max_steps": 4, "training.save_steps": 1}
    stopped = run(tiny(full, out="stopped", **settings_), gpus=(), callbacks=[SigtermAfterStep2()])
    assert stopped.interrupted and stopped.steps < 4
    resumed = run(tiny(full, out="stopped", **settings_), gpus=(), resume=True)
    straight = run(tiny(full, out="straight", **settings_), gpus=())
    assert resumed.steps == 4 and resumed.final_loss == pytest.approx(straight.final_loss, rel=1e-4)


def test_token_ids_train_with_their_own_labels_and_the_run_records_them(tiny, tmp_path):
    # a pre-tokenized dataset (Axolotl's without a type): the run trains on the ids as given, the
    # -100 labels carry no loss (the run's trained-token count says so)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    path = tmp_path / "tokens.jsonl"
    with path.open("w") as f:
        for i in range(8):
            prompt = tokenizer(f"Question {i}?")["input_ids"]
            answer = tokenizer(f" Answer {i}.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            f.write(json.dumps({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}) + "\n")
    done = run(tiny({"data": {"datasets": [{"path": str(path), "format": "tokenized"}]}}, **{"training.max_steps": 2}),
               gpus=())
    assert done.steps == 2 and math.isfinite(done.final_loss)
    numbers = _run_yaml(done.run_dir)["data"]
    assert numbers["records"] == 8 and 0 < numbers["trained_tokens"] < numbers["tokens"]


def test_half_precision_runs_as_fp32_on_the_cpu_with_a_note(tiny):
    import torch

    recipe = tiny(**{"training.precision": "fp16", "quantization.compute_dtype": "float16"})
    choices = choose(recipe, None)
    assert (choices.precision, choices.compute_dtype) == ("fp32", "float32")
    assert choices.notes == ("no GPU: precision fp16 runs as fp32 on the CPU",
                             "no GPU: quantization.compute_dtype float16 runs as float32 on the CPU")
    model = load_model(recipe, choices, cuda=False)
    assert model.model.layers[0].self_attn.q_proj.compute_dtype == torch.float32


def test_lora_targets_follow_the_architecture(tiny):
    from peft import LoraConfig, get_peft_model

    recipe = tiny()
    model = load_model(recipe, choose(recipe, None), cuda=False)
    attention = lora_targets("attention", model)
    assert attention == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    assert lora_targets(("q_proj", "v_proj"), model) == ["q_proj", "v_proj"]
    with pytest.raises(UnknownTargets, match="q_prj match no linear layer.*self_attn.q_proj"):
        lora_targets(("q_proj", "q_prj"), model)
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=attention)).targeted_module_names
    assert len(adapted) == 4 * TINY_MODEL_LAYERS and all(".self_attn." in n for n in adapted)


TINY_MODEL_LAYERS = json.loads((TINY_MODEL / "config.json").read_text())["num_hidden_layers"]


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_loads_real_bitsandbytes_layers_on_the_cpu(tiny, bits, layer):
    recipe = tiny(**{"quantization.bits": bits})
    model = load_model(recipe, choose(recipe, None), cuda=False)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer


# --- end to end ----------------------------------------------------------------------------------


def _assert_complete_run(result, recipe):
    run_dir = result.run_dir
    assert not result.interrupted and result.steps == recipe.training.max_steps
    assert result.saved == run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)
    assert (result.saved / ("config.json" if recipe.method == "full" else "adapter_config.json")).is_file()
    losses = [m["loss"] for m in _metrics(run_dir) if "loss" in m]
    assert len(losses) == recipe.training.max_steps and result.final_loss == losses[-1]
    assert (run_dir / runfolder.LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
    info = _run_yaml(run_dir)
    assert info["result"]["steps"] == result.steps and info["libraries"]["trl"]
    assert info["device"].startswith("cpu") and info["settings"]["precision"] == "fp32"
    # no GPU counters on the CPU: the training's and the load's peaks are recorded, as unknown
    assert {k: info["result"][k] for k in ("estimated_reserved_gib", "measured_reserved_gib",
                                           "measured_load_reserved_gib")} == dict.fromkeys(
        ("estimated_reserved_gib", "measured_reserved_gib", "measured_load_reserved_gib"))
    # What the run trained in, as precision.dtypes decided and the trainer was made to hold.
    assert info["settings"]["trainable_dtype"] == "float32" and info["settings"]["autocast_dtype"] is None
    assert [d["fingerprint"][:7] for d in info["datasets"]] == ["sha256:"] * len(recipe.data.datasets)
    assert load_recipe(run_dir / runfolder.RECIPE).training == recipe.training


@pytest.mark.slow
@pytest.mark.parametrize("file, format", [
    ("tiny-alpaca.jsonl", "alpaca"),
    ("tiny-chat.jsonl", "chat"),
    ("tiny-sharegpt.jsonl", "sharegpt"),
    ("tiny-text.jsonl", "text"),
    ("tiny-prompt-completion.jsonl", "prompt_completion"),
])
def test_every_data_format_trains_end_to_end(tiny, file, format):
    recipe = tiny({"data": {"datasets": [{"path": str(DATA / file), "format": format, "max_samples": 24}]}})
    _assert_complete_run(run(recipe, gpus=()), recipe)


def test_saves_per_epoch_become_steps_from_the_data(tiny):
    recipe = tiny({"training": {"saves_per_epoch": 2, "save_steps": None, "max_steps": None, "epochs": 1,
                                "save_total_limit": 5}})
    result = run(recipe, gpus=())
    steps = _run_yaml(recipe.output_dir)["data"]["steps_per_epoch"]
    assert steps >= 4  # two saves an epoch: every steps // 2 optimizer steps
    saved = sorted(int(p.name.split("-")[1]) for p in recipe.output_dir.glob("checkpoint-*"))
    assert saved[0] == steps // 2 and result is not None
    # the run folder's copy is what --resume loads: it held save_steps' default beside saves_per_epoch,
    # which validation refuses, until that default was made conditional in the schema
    kept = load_recipe(recipe.output_dir / runfolder.RECIPE)
    assert kept.training.saves_per_epoch == 2 and kept.training.save_steps is None


def test_every_turns_per_epoch_counts_into_steps():
    from recipecli.train import runner

    assert runner.every(10, None, 200) == 200
    assert runner.every(10, 4, 200) == 2
    assert runner.every(3, 8, 200) == 1  # never zero


def test_special_tokens_are_set_before_training_and_saved(tiny):
    from transformers import AutoTokenizer

    from recipecli.train.tiny import EOS, TURN

    recipe = tiny({"data": {"special_tokens": {"pad_token": EOS, "eos_token": TURN}}}, **{"training.max_steps": 1})
    run(recipe, gpus=())
    saved = AutoTokenizer.from_pretrained(recipe.output_dir / "adapter")
    assert (saved.pad_token, saved.eos_token) == (EOS, TURN)


def test_tokens_the_tokenizer_lacks_are_refused_by_name_before_the_model(tiny, tmp_path):
    from recipecli.train.tiny import TURN

    recipe = tiny({"data": {"tokens": [TURN, "<|im_start|>user"]}})
    with pytest.raises(DataError, match=r"\$\.data\.tokens\[1\]: '<\|im_start\|>user' is not a token"):
        run(recipe, gpus=())
    assert not (tmp_path / "run").exists()


def test_gpu_only_speed_knobs_asked_on_the_cpu_train_and_say_they_change_nothing(tiny, capsys):
    # transformers raises on tf32=True without TF32; TRL's activation offloading needs an accelerator
    run(tiny({"training": {"tf32": True, "activation_offloading": True}}, **{"training.max_steps": 1}), gpus=())
    err = capsys.readouterr().err
    assert "no GPU has no TF32 (compute capability >= 8.0): tf32 changes nothing here" in err
    assert "no GPU: activation_offloading changes nothing on the CPU" in err


def test_neftune_noise_and_length_grouped_batches_train_on_the_cpu(tiny):
    from recipecli.fit.precision import choose
    from recipecli.train import runner

    recipe = tiny({"training": {"neftune_noise_alpha": 5, "group_by_length": True}}, **{"training.max_steps": 2})
    args = runner._sft_config(recipe, choose(recipe, None), recipe.output_dir, has_eval=False, cuda=False,
                              steps_per_epoch=1)
    assert (args.neftune_noise_alpha, args.train_sampling_strategy) == (5, "group_by_length")
    result = run(recipe, gpus=())
    assert result.saved.is_dir() and math.isfinite(result.final_loss)


def test_activation_offloading_reaches_trl_on_a_gpu(make_recipe):
    from recipecli.fit.precision import choose

    recipe = load_recipe(make_recipe({"training": {"activation_offloading": True, "precision": "fp32"}}))
    choices = choose(recipe, card("rtx3090"))
    assert choices.activation_offloading and not choose(recipe, None).activation_offloading
    from recipecli.train import runner

    args = runner._sft_config(recipe, choices, recipe.output_dir, has_eval=False, cuda=True, steps_per_epoch=1)
    assert args.activation_offloading is True


@pytest.mark.parametrize("name", ["pad_token", "eos_token", "bos_token", "unk_token"])
def test_a_special_token_the_tokenizer_lacks_is_refused_before_the_model_and_leaves_no_folder(tiny, tmp_path, name):
    recipe = tiny({"data": {"special_tokens": {name: "<|finetune_right_pad_id|>"}}})
    with pytest.raises(DataError, match=rf"\$\.data\.special_tokens\.{name}: {name} '<\|finetune_right_pad_id\|>' "
                                        r"is not a token"):
        run(recipe, gpus=())
    assert not (tmp_path / "run").exists()


JINJA = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' }}{% if m['role'] == 'assistant' %}{% generation %}"
         "{{ m['content'] + eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("template", [{"chat_template": "chatml"},
                                      {"chat_template": "jinja", "chat_template_jinja": JINJA}], ids=["named", "jinja"])
def test_the_recipe_s_chat_template_is_saved_with_the_adapter(tiny, template):
    from transformers import AutoTokenizer

    from recipecli.train import data

    recipe = tiny({"data": {"datasets": [{"path": str(DATA / "tiny-chat.jsonl"), "format": "chat",
                                          "max_samples": 8}], **template}}, **{"training.max_steps": 1})
    run(recipe, gpus=())
    saved = AutoTokenizer.from_pretrained(recipe.output_dir / "adapter")
    assert saved.chat_template == data.recipe_template(recipe)  # `recipe generate` asks as training did
    assert saved.chat_template in (JINJA, data.templates.template("chatml"))


@pytest.mark.slow
@pytest.mark.parametrize("delta", [
    {"quantization": {"bits": 8}},
    {"method": "lora"},
    {"method": "full", "lora": None},
], ids=["qlora-8bit", "lora", "full"])
def test_every_method_trains_end_to_end(tiny, delta):
    recipe = tiny(delta)
    _assert_complete_run(run(recipe, gpus=()), recipe)


@pytest.mark.slow
def test_mixed_datasets_with_validation_split_and_packing(tiny):
    recipe = tiny({"data": {"datasets": [
        {"path": str(DATA / "tiny-alpaca.jsonl"), "format": "alpaca", "max_samples": 16},
        {"path": str(DATA / "tiny-chat.jsonl"), "format": "chat", "max_samples": 16}],
        "val_fraction": 0.25, "packing": True}})
    result = run(recipe, gpus=())
    _assert_complete_run(result, recipe)
    assert result.eval_loss is not None and _run_yaml(result.run_dir)["examples"] == {"train": 24, "eval": 8}


@pytest.mark.slow
def test_force_trains_a_recipe_the_card_cannot_hold(tiny):
    recipe = tiny()
    with pytest.raises(DoesNotFit):
        run(recipe, gpus=(gpu_from_vram(0.001),))
    # No CUDA here, so the forced run falls back to the CPU; on a GPU it would try the card.
    result = run(recipe, gpus=(gpu_from_vram(0.001),), force=True)
    assert result.saved is not None
    estimate = json.loads((result.run_dir / runfolder.ESTIMATE).read_text())
    assert estimate["status"] == "does_not_fit" and estimate["device_bytes"] > estimate["vram_bytes"]


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_result(tiny):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class SigtermAfterStep2(TrainerCallback):
        """A real SIGTERM to this process, as `kill` or a scheduler would send it."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    settings_ = {"training.max_steps": 6, "lora.dropout": 0.1}
    stopped = run(tiny(out="stopped", **settings_), gpus=(), callbacks=[SigtermAfterStep2()])
    assert stopped.interrupted and stopped.saved is None and stopped.steps < 6
    assert stopped.checkpoint == stopped.run_dir / f"checkpoint-{stopped.steps}"

    resumed = run(tiny(out="stopped", **settings_), gpus=(), resume=True)
    assert _run_yaml(resumed.run_dir)["resumed_from"] == stopped.checkpoint.name
    straight = run(tiny(out="straight", **settings_), gpus=())
    # The resumed run trained only the missing steps: metrics.jsonl counts each step once.
    assert [m["step"] for m in _metrics(resumed.run_dir) if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert resumed.steps == straight.steps == 6
    # Same data order, dropout masks and optimizer state (fp32 adapters on the CPU: precision.dtypes).
    assert resumed.final_loss == pytest.approx(straight.final_loss, rel=1e-3)
    a = load_file(resumed.saved / "adapter_model.safetensors")
    b = load_file(straight.saved / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-2


def test_a_quadratic_warm_up_rises_as_the_square_and_resumes_where_it_stopped(tiny):
    # Axolotl's lr_quadratic_warmup: transformers has none, so the trainer builds it (trainer.py)
    from transformers import TrainerCallback

    class SigtermAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    settings_ = {"training.max_steps": 8, "training.warmup_steps": 4, "training.warmup_shape": "quadratic",
                 "training.save_steps": 1}
    stopped = run(tiny(out="quadratic", **settings_), gpus=(), callbacks=[SigtermAfterStep3()])
    assert stopped.interrupted and stopped.steps < 8
    resumed = run(tiny(out="quadratic", **settings_), gpus=(), resume=True)
    lr = 5e-3
    logged = [m["learning_rate"] for m in _metrics(resumed.run_dir) if "loss" in m]
    # each step trains at the rate its step number sets, from 0 (the Trainer logs the rate a step used):
    # (k/4)^2 of the peak through the warm-up, the peak, then the cosine towards 0 over the last four steps
    expected = [0, lr / 16, lr / 4, 9 * lr / 16, lr] + [lr * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)]
    assert logged == pytest.approx(expected, abs=1e-9)
    linear = run(tiny(out="linear", **{**settings_, "training.warmup_shape": "linear"}), gpus=())
    assert [m["learning_rate"] for m in _metrics(linear.run_dir) if "loss" in m][:4] == \
        pytest.approx([0, lr / 4, lr / 2, 3 * lr / 4], abs=1e-9)


def test_rex_stays_near_the_peak_and_falls_to_its_floor_at_the_end(tiny):
    # REX (Axolotl's lr_scheduler rex): transformers has none, so the trainer builds it (trainer.py)
    settings_ = {"training.max_steps": 8, "training.warmup_steps": 2, "training.lr_scheduler": "rex",
                 "training.min_lr_ratio": 0.1}
    done = run(tiny(out="rex", **settings_), gpus=())
    lr = 5e-3
    logged = [m["learning_rate"] for m in _metrics(done.run_dir) if "loss" in m]
    # the rate each step used, steps 0..7: a linear warm-up over two, then z = (8 - s) / 6 left of the decay
    rex = [0.1 + 0.9 * z / (0.1 + 0.9 * z) for z in ((8 - s) / 6 for s in range(2, 8))]
    assert logged == pytest.approx([0, lr / 2] + [lr * f for f in rex], abs=1e-9)
    assert logged[2] - logged[3] < logged[-2] - logged[-1]  # flat at first, steep at the end


def test_dynamic_fine_tuning_weights_each_token_s_loss_by_its_probability(tiny):
    # TRL's loss_type dft (Axolotl's use_dft): on the tiny model's first step, with the same weights and
    # batch, each token's loss is scaled by a probability near 1/vocabulary: far below the plain loss
    settings_ = {"training.max_steps": 1}
    nll = run(tiny(out="nll", **settings_), gpus=())
    dft = run(tiny(out="dft", **{**settings_, "training.loss": "dft"}), gpus=())
    plain, weighted = (_metrics(r.run_dir)[0]["loss"] for r in (nll, dft))
    assert 0 < weighted < plain / 10, (weighted, plain)


def _complete_checkpoints(run_dir):
    """The checkpoint folders of a run, each checked whole; and nothing half-written beside them."""
    from recipecli.train import checkpoints

    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no .partial-*, no .replaced-*
    found = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert all(checkpoints.problem(run_dir / name) is None for name in found), found
    return found


def _finite(folder):
    import torch
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors")
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(tiny):
    """An absurd learning rate really makes the loss NaN on the CPU (the schema caps the field at 1,
    so the Recipe is changed directly). Before the check the run went on to 'done', logging a loss
    of 0.0 for every NaN step (the Trainer's logging_nan_inf_filter)."""
    recipe = tiny(**{"training.max_steps": 6, "training.save_steps": 2})
    recipe = dataclasses.replace(recipe, training=dataclasses.replace(recipe.training, learning_rate=1e30))
    with pytest.raises(RecipeError) as stopped:
        run(recipe, gpus=())
    error = stopped.value
    assert error.exit_code == ExitCode.RUNTIME
    # Step 1 warms up at learning rate 0, step 2 updates at 1e30, step 3's forward overflows.
    assert error.message == "the training loss became nan at step 3; training stopped"
    assert "the learning rate (1e+30) is likely too high" in error.hint
    assert "checkpoint-2, saved before it, is the last checkpoint" in error.hint
    assert _complete_checkpoints(recipe.output_dir) == ["checkpoint-2"]
    assert _finite(recipe.output_dir / "checkpoint-2") and not (recipe.output_dir / runfolder.ADAPTER).exists()


@pytest.mark.slow
def test_weights_that_turn_non_finite_are_never_saved(tiny):
    """NaN reaching the weights in the step a checkpoint is due stops the run before that save."""
    import torch
    from transformers import TrainerCallback

    class NanAtStep4(TrainerCallback):
        """What an overflowing update does to an adapter, at the end of step 4."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    recipe = tiny(**{"training.max_steps": 6, "training.save_steps": 2})
    with pytest.raises(RecipeError, match="the trained weights hold NaN or infinity after step 4") as stopped:
        run(recipe, gpus=(), callbacks=[NanAtStep4()])
    assert "checkpoint-2, saved before it, is the last checkpoint" in stopped.value.hint
    assert _complete_checkpoints(recipe.output_dir) == ["checkpoint-2"]
    assert _finite(recipe.output_dir / "checkpoint-2")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["weights cut", "state cut"])
def test_resume_skips_a_damaged_last_checkpoint_with_a_note(tiny, capsys, damage):
    settings_ = {"training.max_steps": 4, "training.save_steps": 2}
    first = run(tiny(**settings_), gpus=())
    run_dir = first.run_dir
    assert _complete_checkpoints(run_dir) == ["checkpoint-2", "checkpoint-4"]
    broken = run_dir / "checkpoint-4" / ("adapter_model.safetensors" if damage == "weights cut" else "trainer_state.json")
    broken.write_bytes(broken.read_bytes()[:-64])  # cut short, as a crash or a full disk leaves a file
    capsys.readouterr()

    resumed = run(tiny(**{**settings_, "training.max_steps": 6}), gpus=(), resume=True)
    assert _run_yaml(run_dir)["resumed_from"] == "checkpoint-2"
    assert "note: checkpoint-4 is skipped: " in capsys.readouterr().err
    assert resumed.steps == 6 and resumed.checkpoint == run_dir / "checkpoint-6"
    assert _complete_checkpoints(run_dir) == ["checkpoint-4", "checkpoint-6"]  # 4 written again, whole


@pytest.mark.slow
def test_resume_refuses_when_its_only_checkpoint_is_damaged(tiny):
    first = run(tiny(**{"training.max_steps": 2, "training.save_steps": 2}), gpus=())
    (first.checkpoint / "optimizer.pt").unlink()
    with pytest.raises(UsageError, match=r"no complete checkpoint to resume from: checkpoint-2 is skipped: "
                                         r"it has no optimizer.pt"):
        run(tiny(**{"training.max_steps": 4, "training.save_steps": 2}), gpus=(), resume=True)


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tiny):
    """The disk fills up in the middle of writing checkpoint-4: model and optimizer are written, the
    trainer state is not. A real trainer callback raises the OSError the kernel would."""
    import errno

    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class DiskFullAtStep4(TrainerCallback, ExportableState):
        """The Trainer asks ExportableState callbacks for their state in the middle of every save."""

        step = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.step = state.global_step

        def state(self) -> dict:
            if self.step == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return {}

    settings_ = {"training.max_steps": 6, "training.save_steps": 2}
    with pytest.raises(RecipeError) as stopped:
        run(tiny(**settings_), gpus=(), callbacks=[DiskFullAtStep4()])
    error, run_dir = stopped.value, tiny().output_dir
    assert error.where == str(run_dir / "checkpoint-4")
    assert error.message.startswith("no space left on the disk while writing this folder (")
    assert "checkpoint-2 is complete: continue from it with --resume" in error.hint
    assert _complete_checkpoints(run_dir) == ["checkpoint-2"]  # the half-written one is gone
    resumed = run(tiny(**settings_), gpus=(), resume=True)
    assert resumed.steps == 6 and resumed.saved.is_dir()


@pytest.fixture
def fresh_wandb():
    """wandb reads its environment once per process, into a singleton: each test starts without one."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


@pytest.fixture
def wandb_dir(fresh_wandb, tmp_path, monkeypatch):
    """Where wandb writes its local runs in a test: a fresh folder, never the user's."""
    folder = tmp_path / "wandb"
    folder.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(folder))
    return folder


@pytest.mark.slow
def test_wandb_offline_holds_the_loss_and_no_secret_reaches_the_run_folder(tiny, wandb_dir, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    secrets = {"WANDB_API_KEY": "wandb-secret-9f3a1c" + "0" * 21, "HF_TOKEN": "hf_secret_77b2e0",
               "HUGGING_FACE_HUB_TOKEN": "hf_secret_old_name_5d1", "HF_HUB_TOKEN": "hf_secret_other_c3"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    recipe = tiny({"logging": {"wandb": {"project": "recipecli-test", "run_name": "tiny-offline",
                                         "tags": ["ci"], "mode": "offline"}}})
    result = run(recipe, gpus=())
    printed = capfd.readouterr()

    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # W&B's writer is its own process (wandb-core): on a loaded machine finish() has returned while
    # the offline file still holds only its header (seen once in CI). What matters is that the
    # records arrive: wait for them, a while.
    deadline = time.monotonic() + 60
    while b"train/loss" not in (log := next(runs[0].glob("run-*.wandb")).read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"recipecli-test" in log and b"tiny-offline" in log
    assert b"train/loss" in log and json.dumps(result.final_loss).encode() in log
    assert "WANDB_PROJECT" not in os.environ  # the recipe's settings do not outlive the run
    # Every file of the run folder (checkpoints and their pickled training arguments included) and
    # of W&B's offline run, and everything printed.
    assert any(result.run_dir.glob("checkpoint-*/training_args.bin")) and result.saved.is_dir()
    files = [p for folder in (result.run_dir, wandb_dir) for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        content = path.read_bytes()
        assert not any(v.encode() in content for v in secrets.values()), path
    assert not any(v in printed.out + printed.err for v in secrets.values())
    # run.yaml records the environment that decides the outcome, never variables.
    recorded = (result.run_dir / runfolder.RUN).read_text()
    assert not any(name in recorded or value in recorded for name, value in secrets.items())


@pytest.mark.slow
@pytest.mark.parametrize("log_model, aliases", [
    ("end", [b"final_model"]),
    ("checkpoint", [b"checkpoint_global_step_2", b"checkpoint_global_step_3", b"final_model"])])
def test_log_model_uploads_the_result_or_each_checkpoint_as_wandb_artifacts(tiny, wandb_dir, monkeypatch, log_model,
                                                                           aliases):
    """logging.wandb.log_model reaches transformers' WandbCallback as WANDB_LOG_MODEL: offline, the
    artifacts are recorded in the local run (their files staged for `wandb sync`)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR"):  # the artifacts' staging and cache, not the user's
        monkeypatch.setenv(name, str(wandb_dir / name.lower()))
    monkeypatch.delenv("WANDB_LOG_MODEL", raising=False)
    recipe = tiny({"logging": {"wandb": {"project": "recipecli-test", "run_name": "tiny-artifacts", "mode": "offline",
                                         "log_model": log_model}}}, **{"training.save_steps": 2})
    result = run(recipe, gpus=())
    (offline,) = (wandb_dir / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + 60  # wandb-core writes the offline file in its own process
    while not all(a in (log := next(offline.glob("run-*.wandb")).read_bytes()) for a in aliases) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(alias in log for alias in aliases) and b"model-tiny-artifacts" in log
    assert log_model == "checkpoint" or b"checkpoint_global_step" not in log  # end: the result alone
    assert result.saved.is_dir() and "WANDB_LOG_MODEL" not in os.environ  # the setting does not outlive the run


@pytest.mark.slow
def test_a_run_shorter_than_logging_steps_still_reports_a_loss(tiny):
    result = run(tiny(**{"training.max_steps": 2, "training.logging_steps": 5}), gpus=())
    assert not any("loss" in m for m in _metrics(result.run_dir))  # nothing logged at step 5
    assert result.final_loss is not None and result.final_loss > 0
    assert _run_yaml(result.run_dir)["result"]["final_loss"] == result.final_loss


@pytest.mark.slow
def test_wandb_switched_off_in_the_environment_beats_the_recipe(tiny, wandb_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = run(tiny({"logging": {"wandb": {"project": "recipecli-test", "mode": "offline"}}}), gpus=())
    assert result.saved is not None
    assert not any(wandb_dir.rglob("offline-run-*"))  # the recipe's offline would write one
    assert os.environ["WANDB_MODE"] == "disabled"


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_wandb")
def test_wandb_that_cannot_start_is_a_recipe_error(tiny, tmp_path, monkeypatch):
    # Online without any API key: wandb refuses at once, before touching the network.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name, folder in (("HOME", "home"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DIR", "wandb")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    with pytest.raises(RecipeError, match="W&B failed: .*API key.*\n  hint: `wandb login`"):
        run(tiny({"logging": {"wandb": {"project": "recipecli-test", "mode": "online"}}}), gpus=())


@pytest.mark.slow
def test_without_a_wandb_section_no_wandb_run_starts(tiny, wandb_dir, monkeypatch):
    # transformers and trl import wandb themselves whenever it is installed; what matters is that
    # recipecli never reports to it: no run, no offline folder, nothing sent.
    monkeypatch.setenv("WANDB_MODE", "offline")
    run(tiny(), gpus=())
    assert not any(wandb_dir.rglob("offline-run-*"))


# --- after training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished alpaca QLoRA run, shared by the merge and generate tests."""
    root = tmp_path_factory.mktemp("trained")
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({**TINY, "output": {"dir": str(root / "run")},
                                           "training": {**TINY["training"], "max_steps": 4}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return run(load_recipe(recipe_file), gpus=())


@pytest.mark.slow
def test_merge_gives_the_same_model_as_base_plus_adapter(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = after.merge(trained.run_dir, gpus=())
    assert merged_dir == trained.run_dir / runfolder.MERGED and (merged_dir / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY_MODEL), trained.saved)
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)  # the adapter did something


def _moved_run(trained, recipe, run_dir):
    """The trained adapter in a run folder whose recipe.yaml says something else about where it ran."""
    run_dir.mkdir()
    runfolder.write_recipe(run_dir, recipe)
    shutil.copytree(trained.saved, run_dir / runfolder.ADAPTER)
    return run_dir


@pytest.mark.slow
def test_merge_and_generate_work_where_the_training_gpu_settings_do_not(trained, tiny, tmp_path, capsys):
    """Trained in bf16 with FlashAttention 2 on a new card; merged on an RTX 2080, asked on the CPU."""
    recipe = tiny(**{"training.precision": "bf16", "training.attention": "flash_attention_2"})
    run_dir = _moved_run(trained, recipe, tmp_path / "ampere")
    assert (after.merge(run_dir, gpus=(card("rtx2080"),)) / "config.json").is_file()
    assert "loading in fp32 with sdpa attention instead" in capsys.readouterr().err
    assert isinstance(after.generate(run_dir, "Reverse the words.", 4, input="a b", gpus=()), str)
    assert "flash_attention_2 needs compute capability" in capsys.readouterr().err


@pytest.mark.slow
def test_merge_and_generate_trust_remote_code_of_the_saved_tokenizer(trained, tiny, tmp_path):
    """A tokenizer with its own code, saved with the adapter, loads only with trust_remote_code."""
    from transformers import AutoTokenizer

    custom = tmp_path / "custom-tokenizer"
    shutil.copytree(TINY_MODEL, custom)
    (custom / "my_tokenizer.py").write_text("from transformers import PreTrainedTokenizerFast\n\n\n"
                                            "class MyTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    config = json.loads((custom / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="MyTokenizer", auto_map={"AutoTokenizer": [None, "my_tokenizer.MyTokenizer"]})
    (custom / "tokenizer_config.json").write_text(json.dumps(config))
    run_dir = _moved_run(trained, tiny({"model": {"id": str(custom), "trust_remote_code": True}}), tmp_path / "run")
    # As the trainer saves it: the tokenizer's code travels with the adapter.
    AutoTokenizer.from_pretrained(custom, trust_remote_code=True).save_pretrained(run_dir / runfolder.ADAPTER)
    assert (run_dir / runfolder.ADAPTER / "my_tokenizer.py").is_file()
    for refused in (lambda: after.generate(run_dir, "Reverse the words.", 4, input="a b", gpus=()),
                    lambda: after.merge(run_dir, gpus=())):
        with pytest.raises(UsageError, match=r"\$\.model\.trust_remote_code: .*--trust-remote-code"):
            refused()
    assert not (run_dir / runfolder.MERGED).exists()
    assert isinstance(after.generate(run_dir, "Reverse the words.", 4, input="a b", gpus=(),
                                     trust_remote_code=True), str)
    assert (after.merge(run_dir, gpus=(), trust_remote_code=True) / "my_tokenizer.py").is_file()


def test_a_tokenizer_from_another_folder_trains_and_is_saved_for_generate_and_merge(tiny, tokenizer_elsewhere):
    """model.tokenizer (Axolotl's tokenizer_config): the model's folder holds no tokenizer."""
    weights, tokenizer = tokenizer_elsewhere
    recipe = tiny({"model": {"id": str(weights), "tokenizer": str(tokenizer)}})
    with pytest.raises(RecipeError, match=f"cannot load the tokenizer of {weights}"):  # the model's own: none
        load_tokenizer(dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, tokenizer=None)))
    result = run(recipe, gpus=())
    assert result.steps == 3 and (result.saved / "tokenizer.json").is_file()
    for file in tokenizer.iterdir():  # the folder stays (recipe.yaml still validates), its files go:
        file.unlink()  # merge and generate must read the tokenizer saved beside the adapter
    assert isinstance(after.generate(result.run_dir, "Reverse the words.", 4, input="a b", gpus=()), str)
    assert (after.merge(result.run_dir, gpus=()) / "tokenizer.json").is_file()


def test_generate_pads_with_the_pad_token_even_when_its_id_is_0():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    assert tokenizer.pad_token_id == 0 and after._pad_token_id(tokenizer) == 0
    tokenizer.pad_token = None
    assert after._pad_token_id(tokenizer) == tokenizer.eos_token_id


@pytest.mark.slow
def test_generate_answers_deterministically(trained):
    ask = dict(prompt="Reverse the words.", input="gold red green blue", max_new_tokens=8, gpus=())
    first = after.generate(trained.run_dir, **ask)
    assert isinstance(first, str)  # after 4 steps the answer may well be the stop token alone
    assert after.generate(trained.run_dir, **ask) == first


def test_merge_and_generate_refuse_what_is_not_a_finished_run(tiny, tmp_path):
    with pytest.raises(UsageError, match="not a run folder"):
        after.merge(tmp_path)
    with pytest.raises(UsageError, match="not a run folder"):
        after.generate(tmp_path, "hi")
    run_dir = tmp_path / "unfinished"
    run_dir.mkdir()
    runfolder.write_recipe(run_dir, tiny())
    with pytest.raises(UsageError, match="training did not finish.*--resume"):
        after.generate(run_dir, "hi")


def _fake_finished_run(recipe, run_dir):
    """A run folder as far as the checks before loading anything can tell."""
    run_dir.mkdir()
    runfolder.write_recipe(run_dir, recipe)
    (run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)).mkdir()
    return run_dir


def test_a_full_fine_tune_has_nothing_to_merge(tiny, tmp_path):
    run_dir = _fake_finished_run(tiny({"method": "full", "lora": None}), tmp_path / "full")
    with pytest.raises(UsageError, match="full fine-tune.*already is the whole model"):
        after.merge(run_dir, gpus=())


def test_an_input_only_goes_with_alpaca_prompts(tiny, tmp_path):
    chat = tiny({"data": {"datasets": [{"path": str(DATA / "tiny-chat.jsonl"), "format": "chat"}]}})
    with pytest.raises(UsageError, match="alpaca prompts only"):
        after.generate(_fake_finished_run(chat, tmp_path / "chat"), "Reverse the words.", input="a b", gpus=())


@pytest.mark.parametrize("file, format", [("tiny-alpaca.jsonl", "alpaca"), ("tiny-chat.jsonl", "chat")])
def test_generate_prompts_are_the_training_prompts(tiny, file, format):
    """The ids generate feeds the model are exactly the prompt part of a training sequence."""
    import re

    from transformers import AutoTokenizer

    from recipecli.train import data

    recipe = tiny({"data": {"datasets": [{"path": str(DATA / file), "format": format}]}})
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    train, _ = data.load_examples(recipe, tokenizer)
    if format == "chat":
        messages = next(e["messages"] for e in train if e["messages"][0]["role"] == "user")
        asked, context = messages[0]["content"], ""
        # As TRL tokenizes a conversation (trl.data_utils._tokenize)
        full = tokenizer.apply_chat_template(messages[:2], tokenize=True, return_dict=True)["input_ids"]
    else:
        example = train[0]
        asked, context = re.fullmatch(r"### Instruction:\n(.*?)(?:\n\n### Input:\n(.*))?\n\n### Response:\n",
                                      example["prompt"], re.S).groups(default="")
        full = tokenizer(text=example["prompt"] + example["completion"])["input_ids"]
    prompt = after._prompt_inputs(recipe, tokenizer, asked, context)["input_ids"][0].tolist()
    assert full[:len(prompt)] == prompt and len(full) > len(prompt)


# --- the CUDA caching allocator's configuration (PYTORCH_CUDA_ALLOC_CONF) ---------------------


@pytest.mark.parametrize("environ, cuda, variable, value, source, expandable", [
    ({}, True, "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", "recipe run", True),
    ({}, False, None, None, "none: no CUDA, no caching allocator", False),
    ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, False, None, None,
     "none: no CUDA, no caching allocator", False),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, True, "PYTORCH_CUDA_ALLOC_CONF",
     "max_split_size_mb:128", "your environment", False),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128, expandable_segments:True"}, True,
     "PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128, expandable_segments:True", "your environment", True),
    # torch's device-generic name: setting the CUDA one would have overridden it silently
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:False"}, True, "PYTORCH_ALLOC_CONF",
     "expandable_segments:False", "your environment", False),
    ({"PYTORCH_CUDA_ALLOC_CONF": ""}, True, "PYTORCH_CUDA_ALLOC_CONF", "", "your environment", False),
])
def test_recipe_run_sets_expandable_segments_on_cuda_unless_the_user_configured_the_allocator(
        environ, cuda, variable, value, source, expandable):
    from recipecli.train.runner import allocator_setting

    setting = allocator_setting(environ, cuda=cuda)
    assert (setting.variable, setting.value, setting.source, setting.expandable_segments) == (
        variable, value, source, expandable)
    assert setting.record() == {"variable": variable, "value": value, "source": source,
                                "expandable_segments": expandable}


def test_the_estimate_counts_on_the_allocator_setting(make_recipe, tmp_path):
    from recipecli.train.preflight import refuse_unless_fits

    recipe = load_recipe(make_recipe({"output": {"dir": str(tmp_path / "run")}}))
    grown = refuse_unless_fits(recipe, card("rtx2080"), force=False, expandable_segments=True)
    fixed = refuse_unless_fits(recipe, card("rtx2080"), force=False, expandable_segments=False)
    assert grown["expandable_segments"] and not fixed["expandable_segments"]
    assert grown["allocated_bytes"] == fixed["allocated_bytes"] and grown["reserved_bytes"] <= fixed["reserved_bytes"]
    assert grown["device_bytes_low"] < grown["device_bytes"] < grown["device_bytes_high"]


def test_a_tight_recipe_trains_with_a_warning(make_recipe, tmp_path, capsys):
    from recipecli.fit.verdict import check
    from recipecli.train.preflight import refuse_unless_fits

    recipe = load_recipe(make_recipe({"output": {"dir": str(tmp_path / "run")}}))
    need = check(recipe, gpu_from_vram(8)).estimate.device_bytes  # a card known by its memory, like those below
    tight = gpu_from_vram(need * 1.05 / 2**30)  # the estimate fits, the upper end of its band does not
    assert refuse_unless_fits(recipe, tight, force=False)["status"] == "tight"
    assert "warning: tight" in capsys.readouterr().err
    with pytest.raises(DoesNotFit) as refused:
        refuse_unless_fits(recipe, gpu_from_vram(need * 0.95 / 2**30), force=False)
    assert "GiB (" in str(refused.value) and "–" in str(refused.value)  # the estimate and its band


@pytest.mark.slow
def test_run_yaml_records_the_allocator_setting_and_the_environment_is_left_as_it_was(tiny, monkeypatch):
    for variable in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(variable, raising=False)
    # An NVIDIA card NVML reports, with this CPU-only torch: the run falls back to the CPU.
    result = run(tiny(**{"training.max_steps": 1}), gpus=(card("rtx2080"),))
    assert _run_yaml(result.run_dir)["cuda_allocator"] == {
        "variable": None, "value": None, "source": "none: no CUDA, no caching allocator",
        "expandable_segments": False}
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_unfrozen_parameters_train_those_weights_alone(tiny):
    import torch
    from safetensors.torch import load_file

    recipe = tiny({"method": "full", "lora": None,
                   "training": {"unfrozen_parameters": [r"model\.layers\.1\.mlp\.", r"lm_head\.weight"]}},
                  **{"training.max_steps": 2})
    done = run(recipe, gpus=())
    before, after = load_file(TINY_MODEL / "model.safetensors"), load_file(done.saved / "model.safetensors")
    changed = sorted(name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype)))
    assert changed == ["lm_head.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight",
                       "model.layers.1.mlp.up_proj.weight"]


QAT = {"method": "full", "lora": None, "training": {"qat": {"activation_dtype": "int8", "group_size": 32}}}


def test_quantization_aware_training_rounds_the_decoder_layers_and_saves_plain_weights(tiny):
    # torchao's fake quantization (training.qat): the loss is the rounded model's from the first step
    # (start_step 0), or from start_step on; the saved weights are plain full-precision ones
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    settings_ = {"training.max_steps": 2}
    plain = run(tiny({"method": "full", "lora": None}, out="plain", **settings_), gpus=())
    rounded = run(tiny(QAT, out="qat", **settings_), gpus=())
    later = run(tiny(QAT, out="later", **{**settings_, "training.qat.start_step": 1}), gpus=())
    losses = {name: [m["loss"] for m in _metrics(r.run_dir) if "loss" in m]
              for name, r in (("plain", plain), ("qat", rounded), ("later", later))}
    assert abs(losses["qat"][0] - losses["plain"][0]) > 1e-4, losses  # rounded from the first step
    assert losses["later"][0] == pytest.approx(losses["plain"][0], abs=1e-6), losses  # not before start_step
    assert abs(losses["later"][1] - losses["plain"][1]) > 1e-4, losses  # and from it on
    assert load_file(rounded.saved / "model.safetensors").keys() == load_file(TINY_MODEL / "model.safetensors").keys()
    reloaded = AutoModelForCausalLM.from_pretrained(rounded.saved)
    assert {type(m).__name__ for m in reloaded.modules()} >= {"Linear"}
    assert not any("FakeQuant" in type(m).__name__ for m in reloaded.modules())


def test_mxfp4_quantization_aware_training_rounds_weights_and_inputs_and_saves_plain_weights(tiny):
    # torchao's MX layers (emulated on the CPU): both operands rounded to the 4-bit float from the first step
    import torch
    from safetensors.torch import load_file

    from recipecli.train import qat

    mx = {"method": "full", "lora": None,
          "training": {"qat": {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 32}}}
    recipe = tiny(mx)
    model = load_model(recipe, choose(recipe, None), cuda=False)
    assert qat.prepare(model, recipe) == 2 * 7
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["model.layers.1.mlp.down_proj"] == "MXFakeQuantizedLinear" and kinds["lm_head"] == "Linear"
    settings_ = {"training.max_steps": 2}
    plain = run(tiny({"method": "full", "lora": None}, out="plain", **settings_), gpus=())
    rounded = run(tiny(mx, out="mx", **settings_), gpus=())
    losses = [[m["loss"] for m in _metrics(r.run_dir) if "loss" in m] for r in (plain, rounded)]
    assert abs(losses[1][0] - losses[0][0]) > 1e-4 and all(math.isfinite(x) for x in losses[1]), losses
    saved = load_file(rounded.saved / "model.safetensors")
    assert saved.keys() == load_file(TINY_MODEL / "model.safetensors").keys()
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in saved.values())


def test_quantization_aware_training_resumes_rounded_where_it_stopped(tiny):
    # stopped after fake quantization started (start_step 1): the resumed steps round as the straight run's
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class SigtermAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    settings_ = {"training.max_steps": 4, "training.qat.start_step": 1, "training.save_steps": 1}
    stopped = run(tiny(QAT, out="stopped", **settings_), gpus=(), callbacks=[SigtermAfterStep2()])
    assert stopped.interrupted and stopped.steps < 4
    resumed = run(tiny(QAT, out="stopped", **settings_), gpus=(), resume=True)
    straight = run(tiny(QAT, out="straight", **settings_), gpus=())
    assert resumed.final_loss == pytest.approx(straight.final_loss, rel=1e-4)
    a, b = load_file(resumed.saved / "model.safetensors"), load_file(straight.saved / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_quantization_aware_training_leaves_the_output_head_and_refuses_a_group_it_cannot_make(tiny):
    from recipecli.errors import InvalidRecipe
    from recipecli.train import qat

    recipe = tiny(QAT)
    model = load_model(recipe, choose(recipe, None), cuda=False)
    assert qat.prepare(model, recipe) == 2 * 7  # q, k, v, o, gate, up, down in each of two layers
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["model.layers.0.self_attn.q_proj"] == "FakeQuantizedLinear" and kinds["lm_head"] == "Linear"
    wide = tiny({**QAT, "training": {"qat": {"group_size": 256}}})  # the tiny model's layers read 64 or 128
    with pytest.raises(InvalidRecipe) as refused:
        qat.prepare(load_model(wide, choose(wide, None), cuda=False), wide)
    (problem,) = refused.value.problems
    assert problem.path == "$.training.qat.group_size" and "does not divide the input width" in problem.message
    assert "64, 128" in problem.message and problem.location.line > 1


def test_an_unfrozen_pattern_matching_no_parameter_is_located(tiny):
    recipe = tiny({"method": "full", "lora": None, "training": {"unfrozen_parameters": ["transformer\\.h\\."]}})
    with pytest.raises(UnknownTargets) as refused:
        run(recipe, gpus=())
    assert refused.value.path == "$.training.unfrozen_parameters" and refused.value.where is not None
    assert "match no parameter of this llama model" in refused.value.message


@pytest.mark.parametrize("method", ["qlora", "lora"])  # bitsandbytes quantized them as they came; transformers refused
def test_weights_saved_for_another_config_are_located_before_anything_loads(tiny, tmp_path, method):
    folder = tmp_path / "edited"
    shutil.copytree(TINY_MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2  # a hand-edited config.json beside the original weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownModel) as refused:
        run(tiny({"model": {"id": str(folder)}, "method": method}), gpus=())
    assert refused.value.path == "$.model.id" and refused.value.where is not None
    assert re.search(r"the weights do not fit config.json: model\.layers\.0\.mlp\.\w+_proj\.weight holds 8,192 "
                     r"values, config.json's llama shape gives it 16,384 \(5 more like it\)", refused.value.message)
    assert not (tmp_path / "run").exists()


def test_weights_transformers_cannot_load_are_a_message_not_a_traceback(tiny, tmp_path):
    # weights in PyTorch's format, whose header fit-check does not read, are left to transformers, which refuses
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(TINY_MODEL, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match="cannot load the model") as refused:
        run(tiny({"model": {"id": str(folder)}, "method": "lora"}), gpus=())
    assert "saved for another config.json" in refused.value.hint
