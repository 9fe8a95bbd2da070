"""The mapping table, row by row: each Axolotl key reads its example into the recipe values it
stands for, refuses what has no recipe equivalent, and writes back what it read."""
from __future__ import annotations

import os

import pytest
import yaml

from recipecli.convert.axolotl import (ABSENT, CCE_PLUGIN, DATASET_ROWS, LIGER_LAYERS, LIGER_PLUGIN, LIGER_SWITCHES, NOTE,
                                       OPTIMIZERS, TOP_ROWS, UNSUPPORTED, NotConverted, row_for,
                                       unsupported)
from recipecli.read.schema import schema

QLORA = {"adapter": "qlora", "load_in_4bit": True}
LIGER = {"plugins": [LIGER_PLUGIN], **{key: True for key in LIGER_LAYERS}}

# key: (value, the rest of the config, recipe values it becomes)
READS = {
    "base_model": ("org/m", {}, {"model.id": "org/m"}),
    "revision_of_model": ("abc123", {}, {"model.revision": "abc123"}),
    "model_revision": ("abc123", {}, {"model.revision": "abc123"}),
    "tokenizer_config": ("EleutherAI/gpt-neox-20b", {}, {"model.tokenizer": "EleutherAI/gpt-neox-20b"}),
    "tokenizer_use_mistral_common": (True, {}, {"model.tokenizer_backend": "mistral_common"}),
    "trust_remote_code": (True, {}, {"model.trust_remote_code": True}),
    "adapter": ("lora", {"load_in_8bit": True}, {"method": "qlora"}),
    "load_in_4bit": (True, {"adapter": "qlora"}, {"quantization.bits": 4}),
    "load_in_8bit": (True, {"adapter": "lora"}, {"quantization.bits": 8}),
    "bnb_config_kwargs": ({"bnb_4bit_quant_type": "fp4"}, QLORA, {"quantization.type": "fp4"}),
    "lora_r": (8, QLORA, {"lora.r": 8}),
    "lora_alpha": (16, QLORA, {"lora.alpha": 16}),
    "lora_dropout": (0.1, QLORA, {"lora.dropout": 0.1}),
    "peft_use_rslora": (True, QLORA, {"lora.use_rslora": True}),
    "lora_target_linear": (True, QLORA, {"lora.target_modules": "all-linear"}),
    "lora_target_modules": (["q_proj", "v_proj"], QLORA, {"lora.target_modules": ["q_proj", "v_proj"]}),
    "datasets": ([], {}, {}),
    "sequence_len": (4096, {}, {"data.max_seq_length": 4096}),
    "sample_packing": (True, {}, {"data.packing": True}),
    "train_on_inputs": (True, {}, {"data.completion_only_loss": False}),
    "val_set_size": (0.1, {}, {"data.val_fraction": 0.1}),
    "chat_template": ("chatml", {}, {"data.chat_template": "chatml"}),
    "chat_template_jinja": ("{{ messages }}", {"chat_template": "jinja"}, {"data.chat_template_jinja": "{{ messages }}"}),
    "micro_batch_size": (4, {}, {"training.micro_batch_size": 4}),
    "gradient_accumulation_steps": (8, {}, {"training.gradient_accumulation_steps": 8}),
    "num_epochs": (3, {}, {"training.epochs": 3}),
    "max_steps": (100, {}, {"training.max_steps": 100}),
    "learning_rate": ("2e-5", {}, {"training.learning_rate": 2e-5}),
    "lr_scheduler": ("linear", {}, {"training.lr_scheduler": "linear"}),
    "warmup_ratio": (0.1, {}, {"training.warmup_ratio": 0.1}),
    "warmup_steps": (10, {}, {"training.warmup_steps": 10}),
    "special_tokens": ({"pad_token": "<|end_of_text|>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"},
                       {}, {"data.special_tokens.pad_token": "<|end_of_text|>", "data.special_tokens.eos_token": "</s>",
                            "data.special_tokens.bos_token": "<s>", "data.special_tokens.unk_token": "<unk>"}),
    "tokens": (["<|im_start|>"], {}, {"data.tokens": ["<|im_start|>"]}),
    "saves_per_epoch": (2, {}, {"training.saves_per_epoch": 2}),
    "evals_per_epoch": (4, {"val_set_size": 0.1}, {"training.evals_per_epoch": 4}),
    "weight_decay": (0.01, {}, {"training.weight_decay": 0.01}),
    "max_grad_norm": (0.3, {}, {"training.max_grad_norm": 0.3}),
    "optimizer": ("adamw_bnb_8bit", {}, {"training.optimizer": "adamw_8bit"}),
    "optim_args": ({"bf16_stochastic_round": True}, {"optimizer": "adamw_torch_4bit"},
                   {"training.bf16_stochastic_round": True}),
    "hub_model_id": ("me/adapter", {"hub_strategy": "end"}, {"output.hub_model_id": "me/adapter",
                                                             "output.hub_private": False}),
    "gradient_checkpointing": (False, {}, {"training.gradient_checkpointing": False}),
    "activation_offloading": (True, {}, {"training.activation_offloading": True}),
    "gradient_checkpointing_kwargs": ({"use_reentrant": False}, {}, {}),
    "bf16": (True, {}, {"training.precision": "bf16"}),
    "fp16": (True, {}, {"training.precision": "fp16"}),
    "flash_attention": (True, {}, {"training.attention": "flash_attention_2"}),
    "sdp_attention": (True, {}, {"training.attention": "sdpa"}),
    "eager_attention": (True, {}, {"training.attention": "eager"}),
    "xformers_attention": (True, {}, {"training.attention": "sdpa", "note": "xformers attention -> sdpa, whose "
                                      "memory-efficient kernel is xformers' own (same memory)"}),
    "attn_implementation": ("flash_attention_2", {}, {"training.attention": "flash_attention_2"}),
    "gemma4_hybrid_attn_impl": (True, {}, {"training.attention": "sdpa", "note": "FlashAttention 2 on the "
                                "sliding-window layers and sdpa on the global ones -> sdpa on every layer: the same "
                                "attention; slower, and the sliding layers' mask is a tensor (sequence x sequence per "
                                "row of the batch), which fit-check counts"}),
    "tf32": (True, {}, {"training.tf32": True}),
    "seed": (7, {}, {"training.seed": 7}),
    "logging_steps": (5, {}, {"training.logging_steps": 5}),
    "save_steps": (50, {}, {"training.save_steps": 50}),
    "save_total_limit": (3, {}, {"training.save_total_limit": 3}),
    "eval_steps": (25, {"val_set_size": 0.1}, {"training.eval_steps": 25}),
    "wandb_project": ("p", {}, {"logging.wandb.project": "p"}),
    "wandb_entity": ("team", {}, {"logging.wandb.entity": "team"}),
    "wandb_name": ("run", {}, {"logging.wandb.run_name": "run"}),
    "wandb_mode": ("offline", {}, {"logging.wandb.mode": "offline"}),
    "output_dir": ("./out", {}, {"output.dir": "./out"}),
    "deepspeed": ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}, {"optimizer": "adamw_torch"},
                  {"distributed.strategy": "deepspeed_zero3", "distributed.zero_offload": "optimizer"}),
    "fsdp_config": ({"fsdp_version": 2, "fsdp_offload_params": True, "fsdp_transformer_layer_cls_to_wrap":
                     "LlamaDecoderLayer"}, {}, {"distributed.strategy": "fsdp", "distributed.fsdp_offload": True}),
    "fsdp_version": (2, {}, {}),
    "batch_size": (8, {"micro_batch_size": 2}, {"training.gradient_accumulation_steps": 4}),
    "save_strategy": ("epoch", {}, {"training.saves_per_epoch": 1}),
    "eval_strategy": ("epoch", {}, {"training.evals_per_epoch": 1}),
    "evaluation_strategy": ("epoch", {}, {"training.evals_per_epoch": 1}),
    "attention": ("flash", {}, {"training.attention": "flash_attention_2"}),
    "adam_beta1": (0.95, {}, {"training.adam_beta1": 0.95}),
    "cosine_min_lr_ratio": (0.1, {}, {"training.min_lr_ratio": 0.1}),
    "neftune_noise_alpha": (5, {}, {"training.neftune_noise_alpha": 5}),
    "group_by_length": (True, {}, {"training.group_by_length": True}),
    "max_packed_sequence_len": (2048, {"sequence_len": 2048}, {"data.packing": True,
                                "note": "max_packed_sequence_len -> sample packing (TRL's, to the same length)"}),
    "noisy_embedding_alpha": (5, {}, {"training.neftune_noise_alpha": 5}),
    "adam_beta2": (0.95, {}, {"training.adam_beta2": 0.95}),
    "adam_epsilon": (1e-6, {}, {"training.adam_epsilon": 1e-6}),
    "lr_quadratic_warmup": (True, {}, {"training.warmup_shape": "quadratic"}),
    "use_dft": (True, {}, {"training.loss": "dft"}),
    "flex_attention": (True, {}, {"training.attention": "flex_attention"}),
    "qat": ({"weight_dtype": "int4", "activation_dtype": "int8", "group_size": 256, "fake_quant_after_n_steps": 500},
            {}, {"training.qat": {"weight_dtype": "int4", "activation_dtype": "int8", "group_size": 256,
                                  "start_step": 500},
                 NOTE: "qat: Axolotl rounds the output head's weight too where its loss calls the head (no cut "
                       "cross-entropy, no Liger fused loss); recipe leaves the head as is, as TRL's chunked loss "
                       "reads its weight directly"}),
    "cosine_constant_lr_ratio": (0, {"cosine_min_lr_ratio": 1.0}, {
        "training.lr_scheduler": "constant_with_warmup", NOTE: "cosine_min_lr_ratio 1.0: Axolotl's cosine decays to the "
        "learning rate itself, a constant rate after the warm-up: lr_scheduler constant_with_warmup"}),
    "use_dynamic_finetuning": (True, {}, {"training.loss": "dft"}),
    # issue 10: the recipe fields grown for Axolotl users
    "peft_use_dora": (True, QLORA, {"lora.use_dora": True}),
    "lora_modules_to_save": (["embed_tokens", "lm_head"], QLORA, {"lora.modules_to_save": ["embed_tokens", "lm_head"]}),
    "early_stopping_patience": (3, {}, {"training.early_stopping_patience": 3}),
    "load_best_model_at_end": (True, {"early_stopping_patience": 3}, {}),
    "metric_for_best_model": ("eval_loss", {}, {}),
    "greater_is_better": (False, {}, {}),
    "plugins": ([LIGER_PLUGIN, CCE_PLUGIN], {}, {}),
    "cut_cross_entropy": (True, {"plugins": [CCE_PLUGIN]}, {}),
    **{key: (True, LIGER, {"training.liger_kernel": True}) for key in LIGER_LAYERS},
    "liger_swiglu": (True, {**LIGER, "liger_glu_activation": None}, {"training.liger_kernel": True}),
    "liger_fused_linear_cross_entropy": (True, LIGER, {}),
    "liger_cross_entropy": (False, {}, {}),
    # Axolotl's dots are literal dots, but before '+'
    "unfrozen_parameters": (["^lm_head.weight$", "model.layers.4[4-9]+.mlp"], {},
                            {"training.unfrozen_parameters": [r"^lm_head\.weight$", r"model\.layers\.4[4-9]+\.mlp"]}),
    # issue 10: mixtures of experts
    "experts_implementation": ("grouped_mm", {}, {"model.experts_implementation": "grouped_mm"}),
    "model_config": ({"output_router_logits": True, "router_aux_loss_coef": 0.02}, {},
                     {"training.router_aux_loss": True, "training.router_aux_loss_coef": 0.02}),
    "quantize_moe_experts": (True, QLORA, {"quantization.moe_experts": True}),
    "llama4_linearized_experts": (True, QLORA, {"model.linearized_experts": True}),
    # fp16 weights trained as they are (bf16 and fp16 off)
    "float16": (True, {"bf16": False, "fp16": False}, {"training.precision": "pure_fp16"}),
    "lora_target_parameters": (["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], QLORA,
                               {"lora.target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}),
    # recipe fields grown for Axolotl's keys that were reported "not converted"
    "resize_token_embeddings_to_32x": (True, {}, {"model.pad_vocab_to_multiple_of": 32}),
    "dataloader_drop_last": (True, {}, {"training.dataloader_drop_last": True}),
    "wandb_log_model": ("checkpoint", {"wandb_project": "p"}, {"logging.wandb.log_model": "checkpoint"}),
}

# key: (value, the rest of the config, words of the reason)
REFUSALS = {
    "adapter": ("prefix_tuning", {}, "recipe trains LoRA adapters"),
    "load_in_4bit": (True, {}, "no adapter is set"),
    "bnb_config_kwargs": ({"llm_int8_threshold": 5.0}, QLORA, "llm_int8_threshold"),
    "lora_target_modules": (5, QLORA, "not a list of module names nor a regular expression"),
    "val_set_size": (200, {}, "a count of examples"),
    "optimizer": ("lion_8bit", {}, "not one recipe runs"),
    "optim_args": ({"bf16_stochastic_round": True, "block_size": 64}, {}, "optim_args block_size"),
    "hub_strategy": ("checkpoint", {"hub_model_id": "me/adapter"}, "not its checkpoints"),
    "lr_scheduler": ("one_cycle", {}, "not one recipe runs"),
    "gradient_checkpointing": ("offload_disk", {}, "not to disk"),
    "activation_offloading": ("disk", {}, "expected true, false or legacy"),
    "gradient_checkpointing_kwargs": ({"use_reentrant": True, "preserve_rng_state": False}, {}, "use_reentrant false"),
    "bf16": (True, {"fp16": True}, "no precision recipe knows"),
    "chat_template": ("jinja", {}, "jinja without chat_template_jinja"),
    "chat_template_jinja": (5, {"chat_template": "jinja"}, "not a template's text"),
    "eval_steps": (0.25, {"val_set_size": 0.1}, "a fraction of the run"),
    "wandb_mode": ("shared", {}, "not online, offline or disabled"),
    "xformers_attention": ("yes", {}, "expected true or false"),
    "attn_implementation": ("paged_attention", {}, "not one recipe runs"),
    "special_tokens": ({"sep_token": "</s>"}, {}, "sep_token: recipe sets the tokenizer's pad_token"),
    "tokens": ("<|im_start|>", {}, "expected a list of token texts"),
    "deepspeed": ({"zero_optimization": {"stage": 0}}, {}, "recipe runs stage 2 or 3"),
    "fsdp_config": ({"fsdp_sharding_strategy": "SHARD_GRAD_OP"}, {}, "shards fully with FSDP2"),
    "fsdp_version": (3, {}, "recipe shards with FSDP2"),
    "batch_size": (9, {"micro_batch_size": 2}, "not a multiple of micro_batch_size"),
    "max_packed_sequence_len": (4096, {"sequence_len": 2048}, "recipe packs to max_seq_length"),
    "use_tensorboard": ("yes", {}, "expected true or false"),
    "use_swanlab": ("cloud", {}, "expected true or false"),
    "cosine_min_lr_ratio": (0.1, {"cosine_constant_lr_ratio": 0.5}, "hold-at-the-floor schedule"),
    "cosine_constant_lr_ratio": (0.5, {"cosine_min_lr_ratio": 0.1}, "hold-at-the-floor schedule"),
    "save_strategy": ("best", {}, "not steps, epoch or no"),
    "eval_strategy": ("no", {"val_set_size": 0.1}, "recipe evaluates whenever it holds data out"),
    "attention": ("flex", {}, "not one recipe runs"),
    "save_only_model": ("yes", {}, "expected true or false"),
    "gptq": (True, {}, "GPTQ bases are not supported"),
    "dp_shard_size": (2, {}, "sharding over part of the GPUs"),
    "bfloat16": (True, {}, "without bf16"),
    "eot_tokens": ("<|im_end|>", {}, "expected a list of token texts"),
    "lora_mlp_kernel": ("yes", {}, "expected true or false"),
    "lora_modules_to_save": ("lm_head", QLORA, "not a list of module names"),
    "early_stopping_patience": (0, {}, "1 or more"),
    "load_best_model_at_end": (True, {}, "exactly when early_stopping_patience is set"),
    "metric_for_best_model": ("eval_accuracy", {}, "watches eval_loss"),
    "plugins": ([LIGER_PLUGIN, "axolotl.integrations.spectrum.SpectrumPlugin"], {}, "SpectrumPlugin' is not supported"),
    "liger_rms_norm": (1, {"plugins": [LIGER_PLUGIN]}, "expected true or false"),
    "liger_fused_linear_cross_entropy": ("yes", LIGER, "expected true or false"),
    "experts_implementation": ("triton", {}, "transformers' own experts kernels"),
    "unfrozen_parameters": (["^model.embed_tokens.weight$[:32000]"], {}, "some rows of a weight"),
    "model_config": ({"output_router_logits": True, "rope_scaling": {"type": "linear"}}, {},
                     "rope_scaling: recipe changes no other value"),
    "quantize_moe_experts": ("yes", QLORA, "expected true or false"),
    "lora_target_parameters": ("mlp.experts.down_proj", QLORA, "not a list of parameter names"),
    "resize_token_embeddings_to_32x": (64, {}, "expected true or false"),
    "wandb_log_model": (True, {"wandb_project": "p"}, "is not checkpoint, end or false"),
    # Axolotl's fp16 weights without mixed precision on a card without bf16 only: no recipe value says that
    "float16": (True, {"bf16": "auto", "fp16": False}, "without mixed precision on a card without bf16"),
    "lr_quadratic_warmup": ("yes", {}, "expected true or false"),
    "moe_group_size": (0, {}, "expected a positive whole number"),
    "use_dft": ("yes", {}, "expected true or false"),
    "qat": ({"activation_dtype": "int8"}, {}, r"weight_dtype 'int8' \(Axolotl default\): recipe fake-quantizes"),
    "tokenizer_use_mistral_common": ("yes", {}, "expected true or false"),
}

CHAT = {"type": "chat_template"}
DATASET_READS = {
    "drop_system_message": (True, {"type": "chat_template"}, {"drop_system": True}),
    "conversation": ("chatml", {"type": "sharegpt"}, {"data.chat_template": "chatml"}),
    "path": ("org/data", {}, {"path": "org/data"}),
    "type": ("chat_template", {"field_messages": "conversations",
                               "message_property_mappings": {"role": "from", "content": "value"}},
             {"format": "sharegpt"}),
    "split": ("test", {}, {"split": "test"}),
    "name": ("en", {}, {"subset": "en"}),
    "ds_type": ("json", {"path": "./d.jsonl"}, {}),
    "field_messages": ("dialog", CHAT, {"fields": {"messages": "dialog"}}),
    "message_property_mappings": ({"role": "speaker", "content": "text"}, CHAT,
                                  {"fields": {"role": "speaker", "content": "text"}}),
    "message_field_role": ("from", {**CHAT, "field_messages": "conversations", "message_field_content": "value"}, {}),
    "message_field_content": ("value", {**CHAT, "field_messages": "conversations", "message_field_role": "from"}, {}),
    "roles": ({"user": ["human"], "assistant": ["gpt"]}, CHAT, {"roles": {"user": ["human"], "assistant": ["gpt"]}}),
    "roles_to_train": (["assistant"], {}, {}),
    # a turn's reasoning: gpt-oss's examples name both keys; one left out is Axolotl's reasoning_content
    "field_thinking": ("thought", CHAT, {"fields": {"thinking": "thought"}}),
    "template_thinking_key": ("thinking", CHAT, {"fields": {"thinking": "reasoning_content"},
                                                 "template_thinking_key": "thinking"}),
    "train_on_eos": ("turn", {}, {}),
    "chat_template": ("tokenizer_default", {}, {"data.chat_template": "tokenizer"}),
    "field": ("body", {"type": "completion"}, {"fields": {"text": "body"}}),
    "trust_remote_code": (False, {}, {}),
    "data_files": ("data/train.jsonl", {}, {"data_files": ["data/train.jsonl"]}),
}

# Dataset entries and the recipe dataset each becomes (issue 10: Axolotl's type aliases and field names).
ENTRIES = {
    "alpaca_chat": ({"type": "alpaca_chat"}, {"format": "alpaca"}),
    "alpaca:chat": ({"type": "alpaca:chat"}, {"format": "alpaca"}),
    "completion": ({"type": "completion"}, {"format": "text"}),
    "legacy sharegpt": ({"type": "sharegpt"}, {"format": "sharegpt"}),
    "legacy sharegpt:chat": ({"type": "sharegpt:chat"}, {"format": "sharegpt"}),  # the older spelling
    "legacy sharegpt:chat, renamed": ({"type": "sharegpt:chat", "field_messages": "dialog"},
                                      {"format": "sharegpt", "fields": {"messages": "dialog"}}),
    "legacy sharegpt, renamed": ({"type": "sharegpt", "field_messages": "dialog"},
                                 {"format": "sharegpt", "fields": {"messages": "dialog"}}),
    "from/value elsewhere": ({**CHAT, "field_messages": "turns", "message_property_mappings": {
        "role": "from", "content": "value"}}, {"format": "sharegpt", "fields": {"messages": "turns"}}),
    "chat renamed": ({**CHAT, "field_messages": "dialog", "message_field_role": "who",
                      "roles": {"assistant": ["bot"], "user": ["user"]}},
                     {"format": "chat", "fields": {"messages": "dialog", "role": "who"}, "roles": {"assistant": ["bot"]}}),
    "user-defined alpaca": ({"type": {"field_instruction": "question", "field_output": "answer",
                                      "format": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                                                "### Response:\n",
                                      "no_input_format": "### Instruction:\n{instruction}\n\n### Response:\n"}},
                            {"format": "alpaca", "fields": {"instruction": "question", "output": "answer"}}),
    "alpaca": ({"type": "alpaca"}, {"format": "alpaca", "preamble": True}),  # Stanford Alpaca's prompt, as Axolotl's
    # no type: Axolotl's pre-tokenized dataset (input_ids, labels, attention_mask), written back without one
    "pre-tokenized": ({"type": None}, {"format": "tokenized"}),
    "pre-tokenized, type left out": ({}, {"format": "tokenized"}),
    "gpt-oss reasoning": ({**CHAT, "field_thinking": "thinking", "template_thinking_key": "thinking"},
                          {"format": "chat", "fields": {"thinking": "thinking"}, "template_thinking_key": "thinking"}),
    # beside mappings of its own Axolotl maps the reasoning only where they say so
    "reasoning mapped with from/value": (
        {**CHAT, "template_thinking_key": "thinking", "message_property_mappings": {
            "role": "from", "content": "value", "thinking": "thought"}},
        {"format": "sharegpt", "fields": {"messages": "messages", "thinking": "thought"}, "template_thinking_key": "thinking"}),
    "reasoning passed through beside from/value": (
        {**CHAT, "field_thinking": "thinking", "template_thinking_key": "thinking", "message_property_mappings": {
            "role": "from", "content": "value"}},
        {"format": "sharegpt", "fields": {"messages": "messages", "thinking": "thinking"},
         "template_thinking_key": "thinking"}),
    "reasoning renamed beside renamed turns": (
        {**CHAT, "message_property_mappings": {"role": "speaker", "content": "text", "reasoning_content": "why"}},
        {"format": "chat", "fields": {"role": "speaker", "content": "text", "thinking": "why"}}),
    "user-defined alpaca with the preamble": (
        {"type": {"field_output": "answer",
                  "format": "Below is an instruction that describes a task, paired with an input that provides further "
                            "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                            "{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                  "no_input_format": "Below is an instruction that describes a task. Write a response that appropriately "
                                     "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"}},
        {"format": "alpaca", "preamble": True, "fields": {"output": "answer"}}),
}

DATASET_REFUSALS = {
    "drop_system_message": (True, {"type": "alpaca"}, "only conversations have them"),
    "conversation": ("vicuna_v1.1", {"type": "sharegpt"}, "not a template recipe names"),
    "data_files": ({"train": "a.jsonl"}, {}, "expected a file name or a list of them"),
    "type": ({"field_instruction": "q", "format": "[INST] {instruction} [/INST]"}, {}, "custom prompt type"),
    "field_messages": ("dialog", {"type": "alpaca"}, "only conversations have them"),
    "message_property_mappings": ({"role": "role", "content": "content", "tool_calls": "calls"}, CHAT,
                                  "message property 'tool_calls'"),
    "roles": ({"tool": ["function"]}, CHAT, "role 'tool'"),
    "chat_template": ("chatml", CHAT, "a chat template per dataset"),
    "field": ("body", {"type": "alpaca"}, "for type completion only"),
    "field_thinking": ("thinking", {"type": "alpaca"}, "Axolotl reads it for type chat_template only"),
    # Axolotl adds {template_thinking_key: field_thinking} to its default mappings only: given its own, none
    "template_thinking_key": ("thinking", {**CHAT, "field_thinking": "thought", "message_property_mappings": {
        "role": "from", "content": "value"}}, "reads no reasoning from 'thought' beside message_property_mappings"),
}


def test_a_dataset_s_template_that_is_the_tokenizer_s_converts_and_one_that_clashes_is_reported(tmp_path):
    from recipecli.convert.command import NotConvertedKeys, from_axolotl_file

    def convert(top: dict, *templates):
        src = tmp_path / "a.yml"
        datasets = [{"path": f"org/d{i}", "type": "chat_template", **({"chat_template": t} if t else {})}
                    for i, t in enumerate(templates)]
        src.write_text(yaml.safe_dump({"base_model": "org/m", **top, "datasets": datasets}))
        out = tmp_path / "r.yaml"
        out.unlink(missing_ok=True)
        from_axolotl_file(str(src), str(out), lossy=False)
        return yaml.safe_load(out.read_text())

    # a model family's own template, or the tokenizer's, on one dataset: recipe's default, as Axolotl renders it
    assert convert({}, "jamba", None)["data"].get("chat_template", "tokenizer") == "tokenizer"
    assert convert({"chat_template": "tokenizer_default"}, "tokenizer_default")["data"].get(
        "chat_template", "tokenizer") == "tokenizer"
    # the dataset's own differs from the top-level one the others take: reported, never lost
    with pytest.raises(NotConvertedKeys) as clash:
        convert({"chat_template": "chatml"}, "tokenizer_default", None)
    (item,) = clash.value.items
    assert item.key == "datasets[0].chat_template" and "makes data.chat_template 'tokenizer', but line" in item.why


def test_a_conversation_axolotl_ignores_beside_another_type_converts_with_a_note():
    read = row_for("conversation", DATASET_ROWS).read("deepseek", {"type": "alpaca", "conversation": "deepseek"})
    assert read.keys() == {NOTE} and "Axolotl ignores it with type 'alpaca'" in read[NOTE]


def test_every_row_has_an_example():
    assert set(READS) | {r.key for r in TOP_ROWS if not r.recipe} >= {r.key for r in TOP_ROWS}
    assert set(DATASET_READS) == {r.key for r in DATASET_ROWS}


def test_a_key_has_one_row_and_no_unsupported_reason_too():
    keys = [r.key for r in TOP_ROWS]
    assert len(keys) == len(set(keys))
    assert not set(keys) & set(UNSUPPORTED)


@pytest.mark.parametrize("key", sorted(READS))
def test_each_row_reads_its_example(key):
    value, rest, expected = READS[key]
    assert row_for(key, TOP_ROWS).read(value, {key: value, **rest}) == expected


@pytest.mark.parametrize("key", sorted(REFUSALS))
def test_each_row_refuses_what_recipe_cannot_do(key):
    value, rest, words = REFUSALS[key]
    with pytest.raises(NotConverted, match=words):
        row_for(key, TOP_ROWS).read(value, {key: value, **rest})


@pytest.mark.parametrize("key", sorted(DATASET_READS))
def test_each_dataset_row_reads_its_example(key):
    value, rest, expected = DATASET_READS[key]
    assert row_for(key, DATASET_ROWS).read(value, {key: value, **rest}) == expected


@pytest.mark.parametrize("key", sorted(k for k, (_, _, out) in READS.items() if len(out) == 1))
def test_each_row_writes_back_what_it_read(key):
    value, rest, expected = READS[key]
    ((path, recipe_value),) = expected.items()
    doc: dict = {"method": "qlora", "quantization": {"bits": 4}}
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = recipe_value
    row = row_for(key, TOP_ROWS)
    written = row.write(doc)
    if key in ("model_revision", "liger_swiglu", "attn_implementation", "batch_size", "save_strategy",
               "noisy_embedding_alpha", "use_dynamic_finetuning", "eval_strategy", "evaluation_strategy", "attention"):  # another key writes it
        assert written is ABSENT
        return
    again = row.read(written, {**rest, key: written})
    assert again == expected, (key, written)


@pytest.mark.parametrize("config", [
    {"fsdp_version": 2, "fsdp_reshard_after_forward": True, "fsdp_offload_params": True},
    {"version": 2, "reshard_after_forward": True, "offload_params": True, "state_dict_type": "FULL_STATE_DICT"},
], ids=["prefixed", "fsdp2-spelling"])
def test_fsdp_config_reads_with_or_without_the_fsdp_prefix(config):
    read = row_for("fsdp_config", TOP_ROWS).read(config, {"fsdp_config": config})
    assert read == {"distributed.strategy": "fsdp", "distributed.fsdp_offload": True}


def test_fsdp1_becomes_fsdp2_with_a_note_and_its_checkpointing_the_trainer_s():
    config = {"fsdp_limit_all_gathers": True, "fsdp_activation_checkpointing": True, "fsdp_sharding_strategy": "FULL_SHARD"}
    read = row_for("fsdp_config", TOP_ROWS).read(config, {"fsdp_config": config})
    assert read.pop(NOTE).startswith("FSDP1 full sharding -> recipe's FSDP2")
    assert read == {"distributed.strategy": "fsdp", "distributed.fsdp_offload": False,
                    "training.gradient_checkpointing": True}
    with pytest.raises(NotConverted, match="fsdp_version True"):
        row_for("fsdp_config", TOP_ROWS).read({"fsdp_version": True}, {})


@pytest.mark.parametrize("name", ["gemma3", "gemma3_text", "gemma3n"])
def test_axolotl_s_gemma_3_templates_read_as_gemma(name):
    assert row_for("chat_template", TOP_ROWS).read(name, {}) == {"data.chat_template": "gemma"}


def test_a_jinja_template_file_is_read_as_axolotl_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chat.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    read = row_for("chat_template_jinja", TOP_ROWS).read("chat.jinja", {"chat_template": "jinja"})
    assert read.pop(NOTE) == "chat_template_jinja: the text of chat.jinja, written out"
    assert read == {"data.chat_template_jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    # no such file: the text is the template, as Axolotl takes it
    assert row_for("chat_template_jinja", TOP_ROWS).read("other.jinja", {"chat_template": "jinja"}) == {
        "data.chat_template_jinja": "other.jinja"}


def test_zero_stage_1_runs_as_stage_2_and_says_so():
    for value in ({"zero_optimization": {"stage": 1}}, "deepspeed_configs/zero1.json"):
        read = row_for("deepspeed", TOP_ROWS).read(value, {})
        assert "ZeRO stage 1 -> deepspeed_zero2" in read.pop(NOTE)
        assert read == {"distributed.strategy": "deepspeed_zero2", "distributed.zero_offload": "none"}


def test_a_deepspeed_file_is_read_where_it_is_and_axolotl_s_own_known_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    read = row_for("deepspeed", TOP_ROWS).read
    (tmp_path / "mine.json").write_text('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}')
    assert read("mine.json", {}) == {"distributed.strategy": "deepspeed_zero3", "distributed.zero_offload": "optimizer"}
    shipped = read("deepspeed_configs/zero2.json", {})  # Axolotl's zero2.json offloads the optimizer
    assert shipped.pop(NOTE).startswith("deepspeed_configs/zero2.json is not here: read as Axolotl's shipped")
    assert shipped == {"distributed.strategy": "deepspeed_zero2", "distributed.zero_offload": "optimizer"}
    params = read("deepspeed_configs/zero3_bf16_cpuoffload_params.json", {})  # the parameters alone
    assert "(ZeRO-3, offload parameters)" in params.pop(NOTE)
    assert params == {"distributed.strategy": "deepspeed_zero3", "distributed.zero_offload": "parameters"}
    (tmp_path / "deepspeed_configs").mkdir()
    (tmp_path / "deepspeed_configs" / "zero2.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert read("deepspeed_configs/zero2.json", {}) == {"distributed.strategy": "deepspeed_zero2",
                                                         "distributed.zero_offload": "none"}  # the file here wins
    os.mkfifo(tmp_path / "pipe.json")  # never opened: it would block
    (tmp_path / "bad.json").write_text("{stage: 3")
    for name, words in (("pipe.json", "is not here"), ("other/zero3.json", "is not here"), ("bad.json", "not JSON")):
        with pytest.raises(NotConverted, match=words):
            read(name, {})


@pytest.mark.parametrize("key, value, rest", [
    ("lora_qkv_kernel", True, {}), ("torch_compile", True, {}), ("use_kernels", True, {}),
    ("loss_watchdog_threshold", 5.0, {}), ("eot_tokens", ["<|im_end|>"], {}), ("save_strategy", "no", {}),
    ("eval_batch_size", 4, {}), ("gradient_checkpointing_kwargs", {"use_reentrant": True}, {}),
    ("save_only_model", True, {}), ("lora_fan_in_fan_out", True, {}), ("use_tensorboard", True, {}),
    ("use_swanlab", True, {}), ("use_otel_metrics", True, {}),
    ("chat_template", "llama4", {}), ("attention", "xformers", {}),
    ("attn_implementation", "kernels-community/vllm-flash-attn3", {}),
    ("use_scattermoe", True, {}), ("use_sonicmoe", True, {}), ("moe_kernels", True, {}),
    ("flex_attn_compile_kwargs", {"dynamic": False, "mode": "max-autotune-no-cudagraphs"}, {}),
    ("moe_persistent_kernel", True, {"moe_kernels": True}), ("moe_group_size", 128, {"moe_kernels": True}),
    ("experts_implementation", "scattermoe", {}),
])
def test_what_converts_without_changing_what_trains_is_said_in_a_note(key, value, rest):
    read = row_for(key, TOP_ROWS).read(value, {key: value, **rest})
    assert read.get(NOTE) and set(read) <= {NOTE, "training.attention"}


@pytest.mark.parametrize("key, value, rest", [
    ("lora_qkv_kernel", False, {}), ("torch_compile", False, {}), ("bfloat16", True, {"bf16": True}),
    ("bfloat16", "auto", {}), ("float16", True, {"fp16": True}), ("gptq", False, {}), ("tensor_parallel_size", 1, {}),
    ("evals_per_epoch", 0, {}), ("eval_steps", 100, {}), ("eval_strategy", "no", {}), ("chunked_cross_entropy", True, {}),
    # float16 where bf16 decides first (true, or auto with fp16 unset: bf16 or fp16 mixed precision by card)
    ("float16", True, {"bf16": True}), ("float16", True, {}), ("float16", True, {"bf16": "auto"}),
    ("wandb_log_model", "false", {"wandb_project": "p"}), ("wandb_log_model", "end", {"wandb_mode": "disabled"}),
    ("lr_quadratic_warmup", True, {"lr_scheduler": "linear"}),  # Axolotl's cosine schedule alone reads it
    ("resize_token_embeddings_to_32x", False, {}), ("model_config_type", "deepseek_v3", {}),
    ("batch_size", 8, {"micro_batch_size": 2, "gradient_accumulation_steps": 4}),
])
def test_what_axolotl_and_recipe_do_alike_converts_to_nothing(key, value, rest):
    assert row_for(key, TOP_ROWS).read(value, {key: value, **rest}) == {}


def test_the_older_tokens_mapping_reads_as_special_tokens():
    assert row_for("tokens", TOP_ROWS).read({"pad_token": "<|padding|>"}, {}) == {
        "data.special_tokens.pad_token": "<|padding|>"}


@pytest.mark.parametrize("value, fsdp_config", [(["auto_wrap", "full_shard"], None), (["auto_wrap"], {"fsdp_version": 2})])
def test_the_fsdp_list_reads_in_any_order(value, fsdp_config):
    assert row_for("fsdp", TOP_ROWS).read(value, {"fsdp": value, "fsdp_config": fsdp_config}) == {}


def test_offloaded_checkpointing_is_checkpointing_with_trl_s_activation_offloading():
    read = row_for("gradient_checkpointing", TOP_ROWS).read("offload", {})
    assert read.pop(NOTE).startswith("gradient_checkpointing offload -> checkpointing with TRL's activation offloading")
    assert read == {"training.gradient_checkpointing": True, "training.activation_offloading": True}
    legacy = row_for("activation_offloading", TOP_ROWS).read("legacy", {})
    assert legacy.pop(NOTE) and legacy == {"training.activation_offloading": True}


def test_fsdp_s_own_checkpointing_outranks_gradient_checkpointing_false():
    cfg = {"gradient_checkpointing": False, "fsdp_config": {"fsdp_activation_checkpointing": True}}
    assert row_for("gradient_checkpointing", TOP_ROWS).read(False, cfg) == {}


@pytest.mark.parametrize("key, value", [("fp8", False), ("peft", {})])
def test_a_key_recipe_cannot_do_switched_off_is_what_recipe_does(key, value):
    assert unsupported(key, value) is None and unsupported(key, True) == UNSUPPORTED[key]


def test_torchao_s_optimizers_convert_by_name_and_auto_resume_with_a_note():
    for name in ("adamw_torch_8bit", "adamw_torch_4bit"):
        assert row_for("optimizer", TOP_ROWS).read(name, {}) == {"training.optimizer": name}
    assert "--resume" in row_for("auto_resume_from_checkpoints", TOP_ROWS).read(True, {})[NOTE]
    assert row_for("auto_resume_from_checkpoints", TOP_ROWS).read(False, {}) == {}


@pytest.mark.parametrize("value, read", [
    ("bf16_stochastic_round=True", {"training.bf16_stochastic_round": True}),
    ("bf16_stochastic_round=False", {}), ({"bf16_stochastic_round": False}, {}), ({}, {}),
])
def test_optim_args_read_as_a_mapping_or_transformers_string(value, read):
    assert row_for("optim_args", TOP_ROWS).read(value, {"optim_args": value}) == read


@pytest.mark.parametrize("value, words", [
    ("bf16_stochastic_round", "bf16_stochastic_round None"), ({"bf16_stochastic_round": "maybe"}, "'maybe'"),
    ("lr=1,bf16_stochastic_round=True", "optim_args lr"), (5, "expected a mapping"),
])
def test_optim_args_recipe_cannot_pass_are_reported(value, words):
    with pytest.raises(NotConverted, match=words):
        row_for("optim_args", TOP_ROWS).read(value, {"optim_args": value})


def test_every_optimizer_alias_names_a_recipe_optimizer():
    allowed = set(schema()["properties"]["training"]["properties"]["optimizer"]["enum"])
    assert set(OPTIMIZERS.values()) <= allowed
    assert OPTIMIZERS["adamw_bnb_8bit"] == "adamw_8bit" and OPTIMIZERS["adamw_torch_fused"] == "adamw_torch"


def test_lora_keys_without_an_adapter_change_nothing():
    # Axolotl ignores them then; a recipe refuses a lora section with method full.
    assert row_for("lora_r", TOP_ROWS).read(16, {"lora_r": 16}) == {}


def test_the_table_names_only_recipe_fields_that_exist():
    props = schema()["properties"]
    for row in TOP_ROWS:
        for dotted in row.recipe:
            node = {"properties": props}
            for part in dotted.split("."):
                node = node["properties"][part] if "properties" in node else node["items"]["properties"][part]
    dataset = props["data"]["properties"]["datasets"]["items"]["properties"]
    # a dotted name is a field of the document, read from a dataset entry (the legacy `conversation`)
    assert {p for row in DATASET_ROWS for p in row.recipe if "." not in p} <= set(dataset)
    assert {p for row in DATASET_ROWS for p in row.recipe if "." in p} <= {"data.chat_template"}


def test_liger_keys_without_the_plugin_change_nothing():
    # Axolotl reads them through its LigerPlugin only; without it they switch nothing on.
    assert row_for("liger_rope", TOP_ROWS).read(True, {"liger_rope": True}) == {}


@pytest.mark.parametrize("kernels", [True, ["rms_norm", "glu", "layer_norm"], ["rope"]], ids=str)
def test_liger_is_written_as_the_plugin_and_every_switch_that_reads_back(kernels):
    doc = {"method": "lora", "training": {"liger_kernel": kernels}}
    written = {row.key: row.write(doc) for row in TOP_ROWS if row.key in ("plugins", *LIGER_LAYERS,
                                                                          "liger_fused_linear_cross_entropy")}
    assert written == {"plugins": [LIGER_PLUGIN], "liger_fused_linear_cross_entropy": True,
                       **{k: kernels is True or kernel in kernels for k, kernel in LIGER_SWITCHES.items()}}
    read: dict = {}
    for key, value in written.items():
        read.update(row_for(key, TOP_ROWS).read(value, written))
    assert read == {"training.liger_kernel": kernels}
    assert all(row.write({"method": "lora", "training": {"liger_kernel": False}}) is ABSENT
               for row in TOP_ROWS if row.key == "plugins" or row.key.startswith("liger_"))


def test_liger_switches_left_out_are_off_and_all_off_is_no_liger():
    some = {"plugins": [LIGER_PLUGIN], "liger_rms_norm": True, "liger_swiglu": True, "liger_rope": False}
    assert row_for("liger_rope", TOP_ROWS).read(False, some) == {"training.liger_kernel": ["rms_norm", "glu"]}
    assert row_for("liger_rope", TOP_ROWS).read(False, {"plugins": [LIGER_PLUGIN], "liger_rope": False}) == {}


def _read_entry(entry: dict) -> dict:
    """What translate does with one entry: every key's row, the fields of several merged."""
    out: dict = {}
    for key, value in ({"type": None} | entry).items():  # a type left out is read as none, as translate does
        for name, new in row_for(key, DATASET_ROWS).read(value, entry).items():
            out[name] = {**out.get(name, {}), **new} if isinstance(new, dict) and name in out else new
    return out


@pytest.mark.parametrize("name", list(ENTRIES))
def test_dataset_types_and_names_read_and_write_back(name):
    entry, expected = ENTRIES[name]
    assert _read_entry(entry) == expected
    written = {}
    for row in DATASET_ROWS:
        try:
            value = row.write({"path": "org/d", "split": "train", **expected})
        except NotConverted:
            continue
        if value is not ABSENT and value is not None:
            written[row.key] = value
    assert _read_entry({k: v for k, v in written.items() if k != "path"}) == expected, written


@pytest.mark.parametrize("key", sorted(DATASET_REFUSALS))
def test_each_dataset_row_refuses_what_recipe_cannot_do(key):
    value, rest, words = DATASET_REFUSALS[key]
    with pytest.raises(NotConverted, match=words):
        row_for(key, DATASET_ROWS).read(value, {key: value, **rest})


def test_every_named_template_has_an_axolotl_name():
    from recipecli.convert.axolotl import CHAT_TEMPLATES

    assert sorted(CHAT_TEMPLATES.values()) == sorted(
        schema()["properties"]["data"]["properties"]["chat_template"]["enum"])
    written = row_for("chat_template", TOP_ROWS).write({"data": {"chat_template": "phi"}})
    assert written == "phi_3" and row_for("chat_template", TOP_ROWS).write({"data": {"chat_template": "tokenizer"}}) \
        is ABSENT


_PROMPTS = {"format": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
            "no_input_format": "### Instruction:\n{instruction}\n\n### Response:\n"}


@pytest.mark.parametrize("key, value, rest", [
    ("roles", {"user": "human"}, CHAT), ("roles", ["user"], CHAT), ("roles", {"user": []}, CHAT),
    ("field_messages", 5, CHAT), ("message_property_mappings", {"role": ["x"]}, CHAT),
    ("field_thinking", 5, CHAT), ("template_thinking_key", "", CHAT), ("field_thinking", "t", {"type": "sharegpt"}),
    ("message_property_mappings", {"role": "role", "content": "content", "reasoning_content": ["x"]}, CHAT),
    ("type", {"field_instruction": 5, **_PROMPTS}, {}), ("type", {"field_output": "", **_PROMPTS}, {}),
    ("type", 7, {}), ("field", "", {"type": "completion"}), ("field", {"a": 1}, {"type": "completion"}),
], ids=str)
def test_hostile_dataset_values_are_reported_not_crashed_on(key, value, rest):
    with pytest.raises(NotConverted):
        row_for(key, DATASET_ROWS).read(value, {key: value, **rest})


def test_only_a_multiple_of_32_goes_back_to_axolotl():
    row = row_for("resize_token_embeddings_to_32x", TOP_ROWS)
    assert row.write({"model": {"id": "org/m"}}) is ABSENT
    with pytest.raises(NotConverted, match="pad_vocab_to_multiple_of 64: Axolotl pads the vocabulary to a multiple "
                                           "of 32 only"):
        row.write({"model": {"id": "org/m", "pad_vocab_to_multiple_of": 64}})


def test_adam_eps_converts_as_axolotl_ran_it_and_says_the_key_it_meant():
    read = row_for("adam_eps", TOP_ROWS).read(1e-9, {"adam_eps": 1e-9})
    assert read.keys() == {NOTE} and "Axolotl never reads it (its key is adam_epsilon)" in read[NOTE]
    assert "1e-09" in read[NOTE] and "training.adam_epsilon" in read[NOTE]


def test_a_cosine_to_the_learning_rate_itself_is_a_constant_rate_whichever_keys_say_it(tmp_path):
    from recipecli.convert.command import from_axolotl_file

    for extra in ({}, {"cosine_constant_lr_ratio": 0}, {"lr_scheduler": "cosine", "cosine_constant_lr_ratio": 0.3}):
        src, out = tmp_path / "a.yml", tmp_path / "r.yaml"
        out.unlink(missing_ok=True)
        src.write_text(yaml.safe_dump({"base_model": "org/m", "datasets": [{"path": "org/d", "type": "alpaca"}],
                                       "cosine_min_lr_ratio": 1.0, "warmup_steps": 10, **extra}))
        from_axolotl_file(str(src), str(out), lossy=False)
        training = yaml.safe_load(out.read_text())["training"]
        assert training["lr_scheduler"] == "constant_with_warmup" and "min_lr_ratio" not in training, extra


@pytest.mark.parametrize("qat, words", [
    ({"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 16}, "weight_dtype 'nvfp4'"),
    ({"weight_dtype": "int4", "activation_dtype": "float8"}, "activation_dtype 'float8'"),
    ({"weight_dtype": "int4", "group_size": 48}, "group_size 48"),
    ({"weight_dtype": "int4", "quantize_embedding": True}, "quantize_embedding"),
    ({"weight_dtype": "int4", "fake_quant_after_n_steps": -1}, "fake_quant_after_n_steps -1"),
    ({"weight_dtype": "int4", "quantize_saved_model": True}, "qat.quantize_saved_model is not an Axolotl QAT key"),
    ("int4", "expected a mapping"),
    ({"weight_dtype": "mxfp4", "activation_dtype": "int8"}, "activation_dtype 'int8' with mxfp4 weights"),
    ({"weight_dtype": "mxfp4", "group_size": 16}, "group_size 16 with mxfp4"),
    ({"weight_dtype": "mxfp4", "fake_quant_after_n_steps": 100}, "round from the first step"),
    ({"weight_dtype": "mxfp4", "quantize_embedding": True}, "quantize_embedding"),
])
def test_qat_recipe_cannot_train_as_axolotl_would_is_reported(qat, words):
    with pytest.raises(NotConverted, match=words):
        row_for("qat", TOP_ROWS).read(qat, {"qat": qat})


@pytest.mark.parametrize("qat", [{"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 32},
                                 {"weight_dtype": "mxfp4"}], ids=["written out", "as Axolotl defaults it"])
def test_mxfp4_qat_is_weights_and_inputs_in_blocks_of_32_both_ways(qat):
    row = row_for("qat", TOP_ROWS)
    read = row.read(qat, {"qat": qat})
    assert read.pop(NOTE).startswith("qat: Axolotl rounds the output head's weight too")
    assert read == {"training.qat": {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 32,
                                     "start_step": 0}}
    written = row.write({"training": {"qat": read["training.qat"]}})
    assert written == {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 32}


def test_an_mxfp4_base_converts_only_dequantized_as_recipe_run_loads_it():
    config, kwargs = row_for("model_quantization_config", TOP_ROWS), row_for("model_quantization_config_kwargs", TOP_ROWS)
    cfg = {"model_quantization_config": "Mxfp4Config", "model_quantization_config_kwargs": {"dequantize": True}}
    assert "dequantized to 16 bits" in config.read("Mxfp4Config", cfg)[NOTE]
    assert kwargs.read({"dequantize": True}, cfg) == {}  # said once, at the config
    for other, words in (({**cfg, "model_quantization_config_kwargs": {}}, "MXFP4 weights do not train"),
                         ({"model_quantization_config": "Mxfp4Config"}, "MXFP4 weights do not train"),
                         ({"model_quantization_config": "FineGrainedFP8Config"}, "FineGrainedFP8Config")):
        with pytest.raises(NotConverted, match=words):
            config.read(other["model_quantization_config"], other)


def test_rex_converts_with_its_floor():
    cfg = {"lr_scheduler": "rex", "cosine_min_lr_ratio": 0.1}
    assert row_for("lr_scheduler", TOP_ROWS).read("rex", cfg) == {"training.lr_scheduler": "rex"}
    assert row_for("cosine_min_lr_ratio", TOP_ROWS).read(0.1, cfg) == {"training.min_lr_ratio": 0.1}


def test_a_quadratic_warm_up_leaves_out_the_floor_axolotl_ignores_beside_it():
    cfg = {"lr_quadratic_warmup": True, "cosine_min_lr_ratio": 0.1}
    assert row_for("lr_quadratic_warmup", TOP_ROWS).read(True, cfg) == {"training.warmup_shape": "quadratic"}
    floor = row_for("cosine_min_lr_ratio", TOP_ROWS).read(0.1, cfg)
    assert floor.keys() == {NOTE} and "Axolotl ignores it beside lr_quadratic_warmup" in floor[NOTE]


def test_unfrozen_parameters_keep_axolotl_meaning_both_ways():
    row = row_for("unfrozen_parameters", TOP_ROWS)
    assert row.read([], {}) == {}
    with pytest.raises(NotConverted, match="with an adapter: Axolotl applies it after peft has wrapped the model"):
        row.read(["lm_head.weight"], {"adapter": "lora"})
    escaped = row.read([r"model\.language_model\..*"], {})  # Axolotl escaped this again: it matched nothing
    assert escaped["training.unfrozen_parameters"] == [r"model\.language_model\.\.*"] and NOTE in escaped
    with pytest.raises(NotConverted, match="every dot as a literal dot"):
        row.write({"training": {"unfrozen_parameters": [r"model\.layers\..*\.mlp"]}})


def test_mistral_common_off_is_transformers_tokenizer_both_ways():
    row = row_for("tokenizer_use_mistral_common", TOP_ROWS)
    assert row.read(False, {}) == {} and row.write({"model": {"id": "org/m"}}) is ABSENT


AXOLOTL_PATTERNS = [  # lora_target_modules as Axolotl's examples write a regular expression (peft's string form)
    r"model.layers.[\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj",
    r"model.language_model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj",
    r".*\.self_attn\.(q|v)_proj",
]


@pytest.mark.parametrize("pattern", AXOLOTL_PATTERNS)
def test_a_regular_expression_of_target_modules_reads_as_a_pattern_and_writes_back(pattern):
    row = row_for("lora_target_modules", TOP_ROWS)
    read = row.read(pattern, {"lora_target_modules": pattern, **QLORA})
    assert read == {"lora.target_modules": {"pattern": pattern}}
    written = row.write({"method": "qlora", "lora": {"target_modules": {"pattern": pattern}}})
    assert written == pattern
    assert row.read("q_proj", {"lora_target_modules": "q_proj", **QLORA}) == {"lora.target_modules": ["q_proj"]}


@pytest.mark.parametrize("value", ["", 5, True, {"pattern": "x"}, ["q_proj", 5]])
def test_target_modules_neither_names_nor_a_pattern_are_refused(value):
    with pytest.raises(NotConverted, match="not a list of module names nor a regular expression"):
        row_for("lora_target_modules", TOP_ROWS).read(value, {"lora_target_modules": value, **QLORA})


def test_a_pattern_that_is_a_plain_name_is_not_written_as_one():
    with pytest.raises(NotConverted, match="plain name"):
        row_for("lora_target_modules", TOP_ROWS).write({"lora": {"target_modules": {"pattern": "lm_head"}}})


@pytest.mark.parametrize("model, names", [
    ("mistralai/Mixtral-8x7B-v0.1", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("Qwen/Qwen3-30B-A3B", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("meta-llama/Llama-3.1-8B", None), ("Qwen/Qwen1.5-MoE-A2.7B", None), ("some/unknown-model", None),
])
def test_target_linear_is_axolotl_s_nn_linear_layers_where_peft_s_all_linear_adapts_more(model, names):
    # Axolotl's lora_target_linear lists the model's nn.Linear layers; peft's all-linear wraps a
    # Mixtral's, Qwen3-MoE's or OLMoE's fused experts too (and then takes no dropout): Axolotl's
    # Mixtral examples, converted to all-linear, were refused at their dropout
    read = row_for("lora_target_linear", TOP_ROWS).read(True, {**QLORA, "base_model": model, "lora_target_linear": True})
    if names is None:
        assert read == {"lora.target_modules": "all-linear"}
    else:
        assert read["lora.target_modules"] == names and "fused experts are no nn.Linear layers" in read[NOTE]


@pytest.mark.parametrize("model", ["google/gemma-3-1b-it", "google/gemma-3-270m"])
def test_the_text_config_class_of_a_text_only_gemma_3_changes_nothing_and_says_so(model):
    read = row_for("cls_model_config", TOP_ROWS).read("Gemma3TextConfig", {"base_model": model})
    assert read == {NOTE: f"Gemma3TextConfig is {model}'s own config class (gemma3_text): nothing changes"}


@pytest.mark.parametrize("value, model", [
    ("Gemma3TextConfig", "google/gemma-3-4b-it"),  # multimodal: Axolotl would load its language model alone
    ("Gemma3TextConfig", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),  # another model type
    ("Gemma3TextConfig", "./my-local-gemma"),  # the catalog does not know it: read the same on every machine
    ("LlamaConfig", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"), (["Gemma3TextConfig"], "google/gemma-3-1b-it"),
])
def test_a_config_class_that_would_load_another_model_is_reported(value, model):
    with pytest.raises(NotConverted, match="recipe loads the base as its config.json says"):
        row_for("cls_model_config", TOP_ROWS).read(value, {"base_model": model})


@pytest.mark.parametrize("attention", [{"attn_implementation": "flash_attention_2"}, {"flash_attention": True}, {}],
                         ids=["attn_implementation", "flash_attention", "pinned"])
def test_gemma_4_hybrid_attention_is_sdpa_on_every_layer_said_once(attention, tmp_path):
    from recipecli.convert.translate import from_axolotl
    from recipecli.read.yamlload import load_file

    source = tmp_path / "g.yml"
    source.write_text(yaml.safe_dump({"base_model": "google/gemma-4-31B", "gemma4_hybrid_attn_impl": True, **attention}))
    conv = from_axolotl(load_file(str(source)), {}, None)
    assert conv.document["training"]["attention"] == "sdpa" and not conv.unconverted
    assert [n for n in conv.notes if "gemma4_hybrid_attn_impl" in n and "sdpa on every layer" in n]
    for key, value in attention.items():  # the FlashAttention key itself converts to nothing more
        assert row_for(key, TOP_ROWS).read(value, {key: value, "gemma4_hybrid_attn_impl": True}) == {}
    assert row_for("gemma4_hybrid_attn_impl", TOP_ROWS).read(False, {}) == {}
    with pytest.raises(NotConverted, match="expected true or false"):
        row_for("gemma4_hybrid_attn_impl", TOP_ROWS).read("yes", {})


def test_fsdp_s_whole_final_model_is_what_recipe_saves():
    config = {"fsdp_version": 2, "final_state_dict_type": "FULL_STATE_DICT"}
    assert row_for("fsdp_config", TOP_ROWS).read(config, {"fsdp_config": config}) == {
        "distributed.strategy": "fsdp", "distributed.fsdp_offload": False}
    with pytest.raises(NotConverted, match="final_state_dict_type 'SHARDED_STATE_DICT'"):
        row_for("fsdp_config", TOP_ROWS).read({"final_state_dict_type": "SHARDED_STATE_DICT"}, {})


def test_a_hub_repository_converts_public_as_axolotl_creates_it_and_pushes_at_the_end():
    read = row_for("hub_model_id", TOP_ROWS).read("me/adapter", {"hub_model_id": "me/adapter"})
    assert read.pop(NOTE).startswith("hub_strategy every_save: recipe pushes the result once")  # transformers' default
    assert read == {"output.hub_model_id": "me/adapter", "output.hub_private": False}
    assert row_for("hub_strategy", TOP_ROWS).read("every_save", {"hub_model_id": "me/adapter"}) == {}
    assert row_for("hub_strategy", TOP_ROWS).read("all_checkpoints", {}) == {}  # nothing is pushed without a repository
    doc = {"output": {"hub_model_id": "me/adapter", "hub_private": False}}
    assert (row_for("hub_model_id", TOP_ROWS).write(doc), row_for("hub_strategy", TOP_ROWS).write(doc)) == (
        "me/adapter", "end")
    with pytest.raises(NotConverted, match="no key for a private one"):
        row_for("hub_model_id", TOP_ROWS).write({"output": {"hub_model_id": "me/adapter", "hub_private": True}})
    assert row_for("hub_strategy", TOP_ROWS).write({"output": {}}) is ABSENT


ZERO2_OFFLOAD = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}


@pytest.mark.parametrize("deepspeed, optimizer, read, replaced", [
    # Axolotl's shipped zero2.json offloads the optimizer: accelerate swaps in DeepSpeed's CPU Adam
    ("deepspeed_configs/zero2.json", "adamw_bnb_8bit", "adamw_torch", True),
    (ZERO2_OFFLOAD, "paged_adamw_8bit", "adamw_torch", True),
    (ZERO2_OFFLOAD, "adamw_torch_fused", "adamw_torch", True),
    # ... unless the config keeps the optimizer (zero3_bf16_cpuoffload_all.json sets the flag)
    ("deepspeed_configs/zero3_bf16_cpuoffload_all.json", "adamw_bnb_8bit", "adamw_8bit", False),
    ({**ZERO2_OFFLOAD, "zero_force_ds_cpu_optimizer": False}, "adamw_bnb_8bit", "adamw_8bit", False),
    # an optimizer section replaces it, offloaded or not
    ({"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": dict.fromkeys(
        ("lr", "betas", "eps", "weight_decay"), "auto")}}, "adamw_bnb_8bit", "adamw_torch", True),
    ({"zero_optimization": {"stage": 2}}, "adamw_bnb_8bit", "adamw_8bit", False),  # nothing replaces it
    ("deepspeed_configs/zero3.json", "adamw_bnb_8bit", "adamw_8bit", False),
])
def test_the_optimizer_deepspeed_runs_in_place_of_axolotl_s_is_the_one_converted(deepspeed, optimizer, read, replaced):
    cfg = {"deepspeed": deepspeed, "optimizer": optimizer}
    out = row_for("optimizer", TOP_ROWS).read(optimizer, cfg)
    assert out["training.optimizer"] == read
    assert (NOTE in out) == replaced  # said where DeepSpeed's optimizer runs in its place


@pytest.mark.parametrize("deepspeed, rest, words", [
    (ZERO2_OFFLOAD, {"weight_decay": 0.1}, "weight decay 0.1 as an L2 term"),
    (ZERO2_OFFLOAD, {"adam_beta2": 0.95}, "adam_beta2 never reached the run"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Lamb", "params": {}}}, {}, "optimizer section \\('Lamb'"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}}, {}, "not all auto"),
])
def test_an_update_deepspeed_changes_is_reported(deepspeed, rest, words):
    with pytest.raises(NotConverted, match=words):
        row_for("optimizer", TOP_ROWS).read("adamw_bnb_8bit", {"deepspeed": deepspeed, **rest})
    # torch's AdamW keeps its decoupled decay under DeepSpeed's CPU Adam
    if "weight_decay" in rest:
        assert row_for("optimizer", TOP_ROWS).read("adamw_torch", {"deepspeed": deepspeed, **rest})[
            "training.optimizer"] == "adamw_torch"


def test_an_offloaded_optimizer_goes_to_axolotl_with_deepspeed_s_adamw_section():
    # without the section accelerate would run its CPU Adam with the learning rate and weight decay alone
    written = row_for("deepspeed", TOP_ROWS).write({"distributed": {"strategy": "deepspeed_zero2",
                                                                    "zero_offload": "optimizer"}})
    assert written["optimizer"] == {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                               "weight_decay": "auto"}}
    assert row_for("optimizer", TOP_ROWS).read("adamw_torch", {"deepspeed": written})["training.optimizer"] == \
        "adamw_torch"


@pytest.mark.parametrize("deepspeed, rest, words", [
    # no optimizer key: Axolotl's default AdamW, checked all the same
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Lamb", "params": {"lr": 0.1}}}, {},
     "optimizer section \\('Lamb'"),
    ("deepspeed_configs/zero2.json", {"adam_beta2": 0.95}, "adam_beta2 never reached the run"),
    # a section's value left out is DeepSpeed's default, not the Trainer's
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, {}, "all auto"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}, {}, "all auto"),
])
def test_the_optimizer_deepspeed_replaces_is_checked_without_an_optimizer_key(deepspeed, rest, words):
    with pytest.raises(NotConverted, match=words):
        row_for("deepspeed", TOP_ROWS).read(deepspeed, {"deepspeed": deepspeed, **rest})


def test_without_an_optimizer_key_the_cpu_adam_of_an_offload_is_said_beside_the_strategy():
    read = row_for("deepspeed", TOP_ROWS).read("deepspeed_configs/zero2.json", {"deepspeed": "deepspeed_configs/zero2.json"})
    assert "under ZeRO optimizer offload: accelerate runs DeepSpeed's CPU Adam" in read.pop(NOTE)
    assert read == {"distributed.strategy": "deepspeed_zero2", "distributed.zero_offload": "optimizer",
                    "training.optimizer": "adamw_torch"}


@pytest.mark.parametrize("optimizer", ["adagrad", "lion_32bit", "nonsense_opt", 5, None])
def test_an_optimizer_accelerate_would_swap_for_another_or_recipe_does_not_know_is_reported(optimizer):
    # accelerate runs DeepSpeed's CPU Adagrad or Lion for those; a name recipe does not know is not relabelled
    with pytest.raises(NotConverted, match="under ZeRO optimizer offload"):
        row_for("optimizer", TOP_ROWS).read(optimizer, {"deepspeed": ZERO2_OFFLOAD, "optimizer": optimizer})
