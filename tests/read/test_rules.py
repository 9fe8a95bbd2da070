"""Each cross-field rule fires on a minimal recipe plus the delta that breaks it, and only then."""
from __future__ import annotations

import os

import pytest

from recipecli.read import rules
from recipecli.errors import InvalidRecipe
from recipecli.read.load import load_recipe, resolve

BREAKING = {
    "lora_with_full": ({"method": "full", "lora": {"r": 8}}, "$.lora"),
    "unfrozen_parameters_are_full_fine_tuning": ({"training": {"unfrozen_parameters": ["lm_head"]}},
                                                 "$.training.unfrozen_parameters"),
    "quantization_without_qlora": ({"method": "lora", "quantization": {"bits": 4}}, "$.quantization"),
    "four_bit_options_with_8bit": ({"quantization": {"bits": 8, "double_quant": True}},
                                   "$.quantization.double_quant"),
    "compute_dtype_against_precision": ({"quantization": {"compute_dtype": "float16"},
                                         "training": {"precision": "bf16"}}, "$.quantization.compute_dtype"),
    "flash_attention_needs_half": ({"training": {"attention": "flash_attention_2", "precision": "fp32"}},
                                   "$.training.attention"),
    "model_is_a_folder_or_a_hub_id": ({"model": {"id": "../nowhere/model"}}, "$.model.id"),
    "datasets_are_files_or_hub_ids": ({"data": {"datasets": [{"path": "missing.csv", "format": "alpaca"}]}},
                                      "$.data.datasets[0].path"),
    # issue 9: the distributed section (more cases in tests/read/test_distributed.py)
    "one_process_without_a_strategy": ({"distributed": {"strategy": "none", "processes_per_node": 2}},
                                       "$.distributed.processes_per_node"),
    "several_nodes_need_their_main": ({"distributed": {"strategy": "ddp", "nodes": 2}}, "$.distributed.nodes"),
    "offload_knobs_match_the_strategy": ({"distributed": {"strategy": "ddp", "fsdp_offload": True}},
                                         "$.distributed.fsdp_offload"),
    "quantized_base_fits_the_strategy": ({"distributed": {"strategy": "deepspeed_zero3"}}, "$.distributed.strategy"),
    "one_warmup": ({"training": {"warmup_steps": 5, "warmup_ratio": 0.1}}, "$.training.warmup_steps"),
    "per_epoch_or_steps": ({"training": {"saves_per_epoch": 2, "save_steps": 50}}, "$.training.saves_per_epoch"),
    "evaluation_needs_held_out_data": ({"training": {"eval_steps": 5}}, "$.training.eval_steps"),
    # issue 10: LoRA modules trained in full, early stopping
    "target_pattern_is_a_regular_expression": ({"lora": {"target_modules": {"pattern": "model.layers.[\\d+"}}},
                                               "$.lora.target_modules.pattern"),
    "saved_modules_are_not_adapted": ({"lora": {"target_modules": ["q_proj", "lm_head"],
                                                "modules_to_save": ["embed_tokens", "lm_head"]}},
                                      "$.lora.modules_to_save[1]"),
    "early_stopping_needs_evaluations": ({"training": {"early_stopping_patience": 3}},
                                         "$.training.early_stopping_patience"),
    # issue 10: mixtures of experts
    "adapted_parameters_are_not_quantized": ({"lora": {"target_parameters": ["mlp.experts.down_proj"], "dropout": 0},
                                              "quantization": {"moe_experts": True}}, "$.lora.target_parameters"),
    "pure_fp16_needs_an_fp32_update": ({"method": "full", "quantization": None, "lora": None,
                                        "training": {"precision": "pure_fp16"}}, "$.training.precision"),
    "deepspeed_decides_its_own_precision": ({"method": "lora", "quantization": None, "training": {
        "precision": "pure_fp16"}, "distributed": {"strategy": "deepspeed_zero2"}}, "$.training.precision"),
    "linearized_experts_are_linear_layers": ({"model": {"linearized_experts": True, "experts_implementation": "eager"}},
                                             "$.model.experts_implementation"),
    "router_coefficient_needs_the_loss": ({"training": {"router_aux_loss_coef": 0.02}},
                                          "$.training.router_aux_loss_coef"),
    # issue 10: dataset field and role names
    "dataset_fields_match_the_format": ({"data": {"datasets": [{"path": "org/d", "format": "alpaca",
                                                                "fields": {"messages": "dialog"}}]}},
                                        "$.data.datasets[0].fields.messages"),
    "jinja_template_and_its_text": ({"data": {"chat_template": "jinja"}}, "$.data.chat_template"),
    "mistral_common_encodes_conversations_itself": ({"model": {"tokenizer_backend": "mistral_common"},
                                                     "data": {"chat_template": "chatml"}}, "$.data.chat_template"),
    "min_lr_needs_cosine": ({"training": {"lr_scheduler": "linear", "min_lr_ratio": 0.1}}, "$.training.min_lr_ratio"),
    "adam_knobs_need_adam": ({"training": {"optimizer": "adafactor", "adam_beta2": 0.95}}, "$.training.adam_beta2"),
    "qat_is_full_fine_tuning": ({"training": {"qat": {"activation_dtype": "int8"}}}, "$.training.qat"),
    "torchao_optimizers_where_they_run": ({"training": {"bf16_stochastic_round": True}},
                                          "$.training.bf16_stochastic_round"),
    "hub_private_needs_a_repository": ({"output": {"hub_private": False}}, "$.output.hub_private"),
    "mxfp4_rounds_weights_and_inputs_in_blocks_of_32": ({"method": "full", "lora": None, "quantization": None,
                                                         "training": {"qat": {"weight_dtype": "mxfp4"}}},
                                                        "$.training.qat.activation_dtype"),
    "quadratic_warmup_needs_a_plain_cosine": ({"training": {"warmup_shape": "quadratic", "lr_scheduler": "linear"}},
                                              "$.training.warmup_shape"),
}


def test_every_rule_has_a_breaking_case():
    assert sorted(BREAKING) == sorted(rule.__name__ for rule in rules.RULES)


@pytest.mark.parametrize("name", sorted(BREAKING))
def test_rule_fires_on_its_delta_alone(make_recipe, name):
    delta, path = BREAKING[name]
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe(delta))
    assert [p.path for p in info.value.problems] == [path]


@pytest.mark.parametrize("training, data, path", [
    ({"evals_per_epoch": 2, "eval_steps": 5}, {"val_fraction": 0.1}, "$.training.evals_per_epoch"),
    ({"evals_per_epoch": 2}, {}, "$.training.evals_per_epoch"),  # nothing to evaluate on
    # with early stopping, a save must follow each evaluation that may be the best
    ({"saves_per_epoch": 2, "evals_per_epoch": 3, "early_stopping_patience": 2}, {"val_fraction": 0.1},
     "$.training.evals_per_epoch"),
    ({"evals_per_epoch": 4, "early_stopping_patience": 2}, {"val_fraction": 0.1}, "$.training.evals_per_epoch"),
    ({"saves_per_epoch": 2, "eval_steps": 7, "early_stopping_patience": 2}, {"val_fraction": 0.1},
     "$.training.saves_per_epoch"),
])
def test_per_epoch_counts_are_refused_where_they_cannot_work(make_recipe, training, data, path):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"training": training, "data": data}))
    assert [p.path for p in info.value.problems] == [path]


def test_token_ids_rename_no_field(make_recipe):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "tokenized",
                                                    "fields": {"text": "ids"}}]}}))
    (problem,) = info.value.problems
    assert problem.path == "$.data.datasets[0].fields.text" and "format tokenized has no field text" in problem.message
    assert "reads input_ids, labels and attention_mask by those names" in problem.hint


@pytest.mark.parametrize("delta, path", [
    ({"training": {"optimizer": "adamw_torch_4bit", "bf16_stochastic_round": True, "precision": "fp16"}},
     "$.training.bf16_stochastic_round"),  # no weight trains in bf16
    ({"training": {"optimizer": "adamw_8bit", "bf16_stochastic_round": True}}, "$.training.bf16_stochastic_round"),
    ({"training": {"optimizer": "adamw_torch_8bit"}, "distributed": {"strategy": "deepspeed_zero2"}},
     "$.training.optimizer"),
])
def test_torchao_s_optimizers_and_stochastic_rounding_only_where_they_run(make_recipe, delta, path):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe(delta))
    (problem,) = info.value.problems
    assert problem.path == path and problem.location.line > 1 and problem.hint
    for fine in ({"optimizer": "adamw_torch_4bit", "bf16_stochastic_round": True},
                 {"optimizer": "adamw_torch_8bit", "bf16_stochastic_round": True, "precision": "bf16"}):
        resolve(make_recipe({"training": fine}))


@pytest.mark.parametrize("qat, path", [
    ({"activation_dtype": "mxfp4"}, "$.training.qat.weight_dtype"),  # int4 weights, the default
    ({"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 16}, "$.training.qat.group_size"),
    ({"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "start_step": 5}, "$.training.qat.start_step"),
    ({"weight_dtype": "int4", "activation_dtype": "mxfp4"}, "$.training.qat.weight_dtype"),
])
def test_mxfp4_is_both_operands_in_blocks_of_32_from_the_first_step(make_recipe, qat, path):
    full = {"method": "full", "lora": None, "quantization": None}
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({**full, "training": {"qat": qat}}))
    (problem,) = info.value.problems
    assert problem.path == path and problem.location.line > 1 and problem.hint
    resolve(make_recipe({**full, "training": {"qat": {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4"}}}))


@pytest.mark.parametrize("data, path", [
    ({"chat_template_jinja": "{{ messages }}"}, "$.data.chat_template_jinja"),
    ({"chat_template": "chatml", "chat_template_jinja": "{{ messages }}"}, "$.data.chat_template_jinja"),
])
def test_a_jinja_text_needs_chat_template_jinja(make_recipe, data, path):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": data}))
    assert [p.path for p in info.value.problems] == [path]


@pytest.mark.parametrize("tokenizer", ["./nowhere/tokenizer", "a/b/c", "https://example.com/t"])
def test_a_tokenizer_is_a_folder_or_a_hub_id_as_the_model_is(make_recipe, tokenizer):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"model": {"tokenizer": tokenizer}}))
    assert [p.path for p in info.value.problems] == ["$.model.tokenizer"]


@pytest.mark.parametrize("data, path", [
    ({"chat_template": "jinja", "chat_template_jinja": "{{ messages }}"}, "$.data.chat_template"),
    ({"special_tokens": {"pad_token": "<pad>"}}, "$.data.special_tokens"),
    ({"datasets": [{"path": "org/chat", "format": "chat"}, {"path": "org/notes", "format": "text"}]},
     "$.data.datasets[1].format"),
])
def test_what_mistral_common_cannot_do_is_refused_at_its_field(make_recipe, data, path):
    mistral = {"model": {"tokenizer_backend": "mistral_common"}}
    assert resolve(make_recipe({"data": data}, name="transformers.yaml"))  # valid with transformers' tokenizer
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({**mistral, "data": data}))
    assert path in [p.path for p in info.value.problems]


def test_mistral_common_with_its_defaults_written_out_is_valid(make_recipe):
    assert resolve(make_recipe({"model": {"tokenizer_backend": "mistral_common"},
                                "data": {"chat_template": "tokenizer", "completion_only_loss": True}}))


def test_drop_system_needs_conversations(make_recipe):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "alpaca", "drop_system": True}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].drop_system"]


@pytest.mark.parametrize("fmt", ["alpaca", "text", "prompt_completion"])
def test_a_turn_s_reasoning_needs_turns(make_recipe, fmt):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": fmt, "fields": {"thinking": "t"}}]}}))
    (problem,) = info.value.problems
    assert problem.path == "$.data.datasets[0].fields.thinking" and f"format {fmt} has no field thinking" in str(problem)
    assert problem.location.line > 1  # at the key as written


def test_the_template_s_reasoning_key_needs_the_data_s(make_recipe):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "chat",
                                                    "template_thinking_key": "thinking"}]}}))
    (problem,) = info.value.problems
    assert problem.path == "$.data.datasets[0].template_thinking_key" and "without fields.thinking" in str(problem)
    assert "name the turns' key that holds their reasoning with fields.thinking" in problem.hint
    assert resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "chat", "fields": {
        "thinking": "thinking"}, "template_thinking_key": "thinking"}]}}))


@pytest.mark.parametrize("key", ["role", "content"])
def test_the_template_s_reasoning_key_is_not_the_turn_s_role_or_text(make_recipe, key):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "chat", "fields": {
            "thinking": "thinking"}, "template_thinking_key": key}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].template_thinking_key"]


def test_mistral_common_reads_reasoning_from_reasoning_content_only(make_recipe):
    chat = {"path": "org/d", "format": "chat", "fields": {"thinking": "thinking"}}
    mistral = {"model": {"tokenizer_backend": "mistral_common"}}
    assert resolve(make_recipe({**mistral, "data": {"datasets": [chat]}}))
    assert resolve(make_recipe({**mistral, "data": {"datasets": [{**chat, "template_thinking_key": "reasoning_content"}]}}))
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({**mistral, "data": {"datasets": [{**chat, "template_thinking_key": "thinking"}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].template_thinking_key"]


def test_the_preamble_starts_alpaca_prompts_only(make_recipe):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "chat", "preamble": True}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].preamble"]
    assert resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "alpaca", "preamble": True}]}}))


def test_data_files_belong_to_hub_datasets(make_recipe, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "d.jsonl", "format": "text", "data_files": ["a.jsonl"]}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].data_files"]


@pytest.mark.parametrize("name", ["/etc/passwd", "~/secret.jsonl", "../up.jsonl", "data/../../up.jsonl", "a\\..\\b"])
def test_data_files_stay_inside_the_dataset_s_repository(make_recipe, name):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "org/d", "format": "text", "data_files": [name]}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].data_files[0]"]


def test_defaults_written_out_do_not_fire_the_rules_of_their_knobs(make_recipe):
    # recipe show and a run folder's recipe.yaml write every default: an sgd recipe holds adam_beta1 0.9
    assert resolve(make_recipe({"training": {"optimizer": "sgd", "adam_beta1": 0.9, "adam_epsilon": 1e-08,
                                             "lr_scheduler": "constant", "min_lr_ratio": 0}}))


@pytest.mark.parametrize("training", [{"saves_per_epoch": 1, "evals_per_epoch": 4}, {"saves_per_epoch": 2}],
                         ids=["saves-follow-evaluations", "evaluations-follow-saves"])
def test_per_epoch_counts_that_keep_each_best_evaluation_saved_go_with_early_stopping(make_recipe, training):
    assert resolve(make_recipe({"training": {**training, "early_stopping_patience": 3}, "data": {"val_fraction": 0.1}}))


def test_per_epoch_counts_alone_are_valid(make_recipe):
    recipe = resolve(make_recipe({"training": {"saves_per_epoch": 2, "evals_per_epoch": 4},
                                  "data": {"val_fraction": 0.1}}))
    assert recipe is not None


def test_rules_are_quiet_on_a_good_recipe(make_recipe, tmp_path):
    (tmp_path / "d.csv").write_text("instruction,output\nhi,there\n")
    (tmp_path / "model").mkdir()
    resolve(make_recipe({"model": {"id": "./model"}, "data": {"datasets": [{"path": "d.csv", "format": "alpaca"}]},
                         "quantization": {"bits": 8}, "training": {"precision": "fp16"}}))


@pytest.mark.parametrize("model_id", [" ", "a/b/c", "https://huggingface.co/org/name", "org/name;rm -rf /",
                                      "org/../name", "org--x/name", "-org/name", "org/name.", "x" * 97])
def test_a_model_id_is_a_hub_id_or_an_existing_folder(make_recipe, model_id):
    """Defect 13: ids the hub would refuse are refused here, before any download is tried."""
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"model": {"id": model_id}}))
    (problem,) = info.value.problems
    assert problem.path == "$.model.id" and "neither a hub id nor an existing folder" in problem.message
    assert "org/name" in problem.hint


@pytest.mark.parametrize("path", ["a/b/c", "http://x/y", "x;y"])
def test_a_dataset_is_a_hub_id_or_a_data_file(make_recipe, path):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": path, "format": "alpaca"}]}}))
    assert [p.path for p in info.value.problems] == ["$.data.datasets[0].path"]


def test_a_fifo_is_no_dataset_file(make_recipe, tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [{"path": "pipe.jsonl", "format": "alpaca"}]}}))
    assert "not a regular file" in info.value.problems[0].message


@pytest.mark.parametrize("training, path, words", [
    ({"early_stopping_threshold": 0.01}, "$.training.early_stopping_threshold", "without early_stopping_patience"),
    ({"early_stopping_patience": 2, "save_steps": 5, "eval_steps": 2}, "$.training.save_steps", "use save_steps 4"),
    ({"early_stopping_patience": 2, "eval_steps": 300}, "$.training.eval_steps", "not a multiple of eval_steps 300"),
])
def test_early_stopping_needs_a_checkpoint_at_each_evaluation_it_may_keep(make_recipe, training, path, words):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"training": training, "data": {"val_fraction": 0.1}}))
    assert [p.path for p in info.value.problems] == [path]
    assert words in str(info.value)


def test_early_stopping_with_matching_steps_is_valid(make_recipe):
    resolve(make_recipe({"training": {"early_stopping_patience": 2, "save_steps": 10, "eval_steps": 5},
                         "data": {"val_fraction": 0.1}}))


HUB_CHAT = {"path": "org/d", "format": "chat"}


@pytest.mark.parametrize("dataset, path, words", [
    ({**HUB_CHAT, "format": "text", "fields": {"text": "body", "output": "x"}}, "$.data.datasets[0].fields.output",
     "format text reads text"),
    ({**HUB_CHAT, "format": "alpaca", "roles": {"user": ["human"]}}, "$.data.datasets[0].roles", "has no roles"),
    ({**HUB_CHAT, "roles": {"user": ["human", "gpt"], "assistant": ["gpt"]}}, "$.data.datasets[0].roles.assistant[0]",
     "'gpt' names both user and assistant"),
])
def test_dataset_names_must_fit_the_format_and_mean_one_role(make_recipe, dataset, path, words):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"data": {"datasets": [dataset]}}))
    assert [p.path for p in info.value.problems] == [path]
    assert words in str(info.value)


def test_dataset_names_that_fit_are_valid_and_a_pointless_template_is_a_warning(make_recipe):
    ok = resolve(make_recipe({"data": {"datasets": [
        {**HUB_CHAT, "fields": {"messages": "dialog", "role": "speaker"}, "roles": {"assistant": ["bot"]}},
        {"path": "org/e", "format": "alpaca", "fields": {"instruction": "question", "output": "answer"}}],
        "chat_template": "chatml"}}))
    assert not ok.warnings
    pointless = resolve(make_recipe({"data": {"chat_template": "llama3"}}))  # MINIMAL's data is alpaca
    (warning,) = pointless.warnings
    assert warning.path == "$.data.chat_template" and "changes nothing" in warning.message


@pytest.mark.parametrize("delta", [
    {"lora": {"target_parameters": ["mlp.experts.gate_up_proj"], "dropout": 0}},
    {"training": {"router_aux_loss": True, "router_aux_loss_coef": 0.02}},
    {"training": {"router_aux_loss": True}},
    {"quantization": {"moe_experts": True}},
])
def test_mixture_of_experts_fields_that_agree_are_valid(make_recipe, delta):
    resolve(make_recipe(delta))


@pytest.mark.parametrize("training, words", [
    ({"lr_scheduler": "constant_with_warmup"}, "leads into the cosine schedule only"),
    ({"min_lr_ratio": 0.1}, "the quadratic warm-up's cosine decays to 0"),
])
def test_a_quadratic_warm_up_leads_into_a_cosine_to_zero_only(make_recipe, training, words):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"training": {"warmup_shape": "quadratic", **training}}))
    (problem,) = info.value.problems
    assert problem.path == "$.training.warmup_shape" and words in problem.message
    resolve(make_recipe({"training": {"warmup_shape": "quadratic", "min_lr_ratio": 0}}))


def test_linearized_experts_refuse_each_setting_of_fused_ones_and_take_their_names_as_targets(make_recipe):
    fused_only = {"model": {"experts_implementation": "grouped_mm"}, "quantization": {"moe_experts": True},
                  "lora": {"target_parameters": ["feed_forward.experts.gate_up_proj"], "dropout": 0}}
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({**fused_only, "model": {"linearized_experts": True, "experts_implementation": "eager"}}))
    assert sorted(p.path for p in info.value.problems) == [
        "$.lora.target_parameters", "$.lora.target_parameters", "$.model.experts_implementation",
        "$.quantization.moe_experts"]  # target_parameters on quantized experts is refused on its own too
    resolve(make_recipe({"model": {"linearized_experts": True},
                         "lora": {"target_modules": ["q_proj", "experts.gate_projs.0"]}}))


def test_quantized_experts_take_either_width_and_8_bit_refuses_only_the_4_bit_options(make_recipe):
    assert load_recipe(make_recipe({"quantization": {"bits": 8, "moe_experts": True}})).quantization.moe_experts
    assert load_recipe(make_recipe({"quantization": {"bits": 8}})).quantization.moe_experts is False
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"quantization": {"bits": 8, "moe_experts": True, "type": "nf4"}}))
    assert [p.path for p in info.value.problems] == ["$.quantization.type"]


def test_unfrozen_parameters_are_regular_expressions(make_recipe):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"method": "full", "training": {"unfrozen_parameters": [r"lm_head\.weight", "layers.[1"]}}))
    (problem,) = info.value.problems
    assert problem.path == "$.training.unfrozen_parameters[1]" and "not a regular expression" in problem.message
    resolve(make_recipe({"method": "full", "training": {"unfrozen_parameters": [r"model\.layers\.2[0-9]\."]}}))


@pytest.mark.parametrize("pattern, words", [
    ("model.layers.[\\d+", "unterminated character set"), ("q_proj{99999999999}", "too large"),
    ("(" * 2000 + ")" * 2000, "too deeply nested"),
])
def test_a_target_pattern_python_cannot_compile_is_located_never_a_traceback(make_recipe, pattern, words):
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe({"lora": {"target_modules": {"pattern": pattern}}}))
    (problem,) = info.value.problems
    assert problem.path == "$.lora.target_modules.pattern" and words in problem.message
    assert "backslash" in problem.hint
    with pytest.raises(InvalidRecipe, match=words):  # the same check for training.unfrozen_parameters
        resolve(make_recipe({"method": "full", "training": {"unfrozen_parameters": [pattern]}}))
