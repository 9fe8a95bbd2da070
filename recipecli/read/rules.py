"""Cross-field rules: what the schema cannot say about one field alone.

A short named list, each rule a small function of the merged document. They run only on a
document that passed the schema, so every value has the type the schema promises; fields may
still be absent in an abstract base.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

from ..errors import Problem, json_path
from . import paths, schema
from .recipe import TORCHAO_OPTIMIZERS

Rule = Callable[[dict, "Context"], Iterator[Problem]]


class Context:
    """What a rule needs beside the document: where each value was written, and the folder its
    relative paths resolve against (``load.Resolved.directory_of``)."""

    def __init__(self, locate, directory_of: Callable[[tuple], Path] = Path.cwd):
        self.locate = locate
        self.directory_of = directory_of

    def problem(self, path: tuple, message: str, hint: str, key: bool = False) -> Problem:
        return Problem(self.locate(path, key), json_path(path), message, hint)


def lora_with_full(doc: dict, ctx: Context):
    if doc.get("method") == "full" and "lora" in doc:
        yield ctx.problem(("lora",), "a lora section with method full",
                          "full fine-tuning trains every weight: remove lora, or use method qlora or lora", key=True)


def unfrozen_parameters_are_full_fine_tuning(doc: dict, ctx: Context):
    patterns = doc.get("training", {}).get("unfrozen_parameters")
    if patterns is None:
        return
    if doc.get("method") != "full":
        yield ctx.problem(("training", "unfrozen_parameters"), f"unfrozen_parameters with method {doc.get('method')}: "
                          "they choose the weights full fine-tuning trains", "use method full, or, with adapters, "
                          "lora.modules_to_save for modules trained in full", key=True)
    for i, pattern in enumerate(patterns):
        wrong = _not_a_regex(pattern)
        if wrong:
            yield ctx.problem(("training", "unfrozen_parameters", i), f"not a regular expression: {wrong}",
                              "escape [ ] ( ) with a backslash where they are meant literally")


def qat_is_full_fine_tuning(doc: dict, ctx: Context):
    if "qat" in doc.get("training", {}) and doc.get("method") != "full":
        # Fake quantization rounds the weights that train; adapters beside a frozen base would learn
        # around a rounding of weights that never change, and peft would wrap the layers torchao replaced.
        yield ctx.problem(("training", "qat"), f"qat with method {doc.get('method')}: quantization-aware training "
                          "fake-quantizes the weights it trains", "use method full, or remove qat", key=True)


def mxfp4_rounds_weights_and_inputs_in_blocks_of_32(doc: dict, ctx: Context):
    if not isinstance(doc.get("training", {}).get("qat"), dict):
        return
    qat = schema.fill_defaults({"training": {"qat": doc["training"]["qat"]}})["training"]["qat"]
    weights, inputs = qat["weight_dtype"], qat["activation_dtype"]
    if (weights == "mxfp4") != (inputs == "mxfp4"):
        # torchao's MX QAT rounds both or refuses ("Weight only MX QAT not supported"); int4 weights
        # with mxfp4 inputs have no torchao config at all.
        yield ctx.problem(("training", "qat", "activation_dtype" if weights == "mxfp4" else "weight_dtype"),
                          f"weight_dtype {weights} with activation_dtype {inputs}: mxfp4 rounds the weights and the "
                          "inputs together", "set both weight_dtype and activation_dtype to mxfp4, or neither")
    elif weights == "mxfp4" and qat["group_size"] != 32:
        yield ctx.problem(("training", "qat", "group_size"), f"group_size {qat['group_size']} with mxfp4: the MX "
                          "format scales blocks of 32", "use group_size 32")
    elif weights == "mxfp4" and qat["start_step"]:
        # torchao's MX layers have no fake quantizer to switch on later: they round from the first step.
        yield ctx.problem(("training", "qat", "start_step"), "start_step with mxfp4: torchao's MX layers round "
                          "from the first step and cannot be switched on later", "remove start_step")


def _not_a_regex(pattern: str) -> str:
    """Why Python's re refuses a pattern, or "" when it compiles."""
    try:
        re.compile(pattern)
    except (re.error, OverflowError) as e:  # OverflowError: a{99999999999}
        return str(e)
    except RecursionError:  # thousands of nested groups
        return "too deeply nested"
    return ""


def quantization_without_qlora(doc: dict, ctx: Context):
    if "quantization" in doc and doc.get("method") in ("lora", "full"):
        yield ctx.problem(("quantization",), f"a quantization section with method {doc['method']}",
                          "quantized base weights need adapters: use method qlora, or remove quantization", key=True)


def four_bit_options_with_8bit(doc: dict, ctx: Context):
    quant = doc.get("quantization", {})
    if quant.get("bits") == 8:
        for field in ("type", "double_quant"):
            if field in quant:
                yield ctx.problem(("quantization", field), f"quantization.{field} only applies to 4-bit",
                                  "remove it, or set bits: 4", key=True)


def compute_dtype_against_precision(doc: dict, ctx: Context):
    dtype = doc.get("quantization", {}).get("compute_dtype")
    precision = doc.get("training", {}).get("precision")
    clash = {("bfloat16", "fp16"), ("bfloat16", "pure_fp16"), ("float16", "bf16")}
    if (dtype, precision) in clash:
        yield ctx.problem(("quantization", "compute_dtype"), f"compute_dtype {dtype} with precision {precision}",
                          "use compute_dtype: auto to follow training.precision")


def flash_attention_needs_half(doc: dict, ctx: Context):
    training = doc.get("training", {})
    if training.get("attention") == "flash_attention_2" and training.get("precision") == "fp32":
        yield ctx.problem(("training", "attention"), "flash_attention_2 with precision fp32",
                          "FlashAttention 2 runs in fp16/bf16 only: use attention sdpa, or precision auto")


def model_is_a_folder_or_a_hub_id(doc: dict, ctx: Context):
    """model.id, and model.tokenizer where it is set, each a hub id or an existing folder."""
    for field, what in (("id", "model"), ("tokenizer", "tokenizer")):
        reference = doc.get("model", {}).get(field)
        if reference is None:
            continue
        folder = paths.model_folder(reference, ctx.directory_of(("model", field)))
        if folder is not None and not folder.is_dir():
            yield ctx.problem(("model", field), f"local {what} folder not found: {folder}",
                              "paths are relative to the recipe file; a hub id looks like org/name")
        elif folder is None and not paths.is_hub_id(reference):
            yield ctx.problem(("model", field), f"{reference!r} is neither a hub id nor an existing folder",
                              "a hub id is org/name (letters, digits, - _ .); a local folder is a path such as "
                              f"./models/my-{what}, relative to the recipe file")


def datasets_are_files_or_hub_ids(doc: dict, ctx: Context):
    for i, dataset in enumerate(doc.get("data", {}).get("datasets", [])):
        path = dataset.get("path")
        where = ("data", "datasets", i, "path")
        if path is None:
            continue
        if paths.is_data_file(path):
            if "data_files" in dataset:
                yield ctx.problem(("data", "datasets", i, "data_files"), "data_files with a local file",
                                  "data_files picks files of a hub dataset; a local dataset is its file: remove it",
                                  key=True)
            file = paths.absolute(path, ctx.directory_of(where))
            if not file.is_file():
                yield ctx.problem(where, f"dataset file not found: {file}" if not file.exists() else
                                  f"not a regular file: {file}",
                                  "paths are relative to the recipe file; a hub dataset id looks like org/name")
        elif not paths.is_hub_id(path):
            yield ctx.problem(where, f"{path!r} is neither a hub dataset id nor a data file",
                              "a hub id is org/name; a local file ends in .jsonl, .json, .csv or .parquet")


# The fields each format reads (schema: data.datasets[].fields); data.py reads them.
FIELDS_OF_FORMAT = {
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages", "role", "content", "thinking"),
    "sharegpt": ("messages", "role", "content", "thinking"),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "tokenized": (),  # input_ids, labels, attention_mask: the names every tokenized dataset uses
}
CONVERSATIONAL = ("chat", "sharegpt")


def dataset_fields_match_the_format(doc: dict, ctx: Context):
    for i, dataset in enumerate(doc.get("data", {}).get("datasets", [])):
        fmt, where = dataset.get("format"), ("data", "datasets", i)
        if fmt not in FIELDS_OF_FORMAT:
            continue
        for name in dataset.get("fields", {}):
            if name not in FIELDS_OF_FORMAT[fmt]:
                reads = ", ".join(FIELDS_OF_FORMAT[fmt]) or "input_ids, labels and attention_mask by those names"
                yield ctx.problem((*where, "fields", name), f"format {fmt} has no field {name}",
                                  f"format {fmt} reads {reads}: remove {name}, or change the format", key=True)
        if dataset.get("preamble") is True and fmt != "alpaca":
            yield ctx.problem((*where, "preamble"), f"preamble with format {fmt}: it starts alpaca prompts only",
                              "remove it, or use format alpaca", key=True)
        if dataset.get("drop_system") is True and fmt not in CONVERSATIONAL:
            yield ctx.problem((*where, "drop_system"), f"drop_system with format {fmt}, which has no turns",
                              "remove it, or use format chat or sharegpt", key=True)
        if "template_thinking_key" in dataset and "thinking" not in dataset.get("fields", {}):
            # The key the template reads is filled from the data's key: without one, nothing is.
            yield ctx.problem((*where, "template_thinking_key"), "template_thinking_key without fields.thinking",
                              "name the turns' key that holds their reasoning with fields.thinking (e.g. "
                              "thinking), or remove template_thinking_key", key=True)
        if dataset.get("template_thinking_key") in ("role", "content"):
            yield ctx.problem((*where, "template_thinking_key"), f"template_thinking_key "
                              f"{dataset['template_thinking_key']}: the turn's {dataset['template_thinking_key']} "
                              "is there already", "name the key the chat template reads a turn's reasoning from: "
                              "reasoning_content (Qwen3, DeepSeek-R1) or thinking (gpt-oss)")
        roles = dataset.get("roles", {})
        if roles and fmt not in CONVERSATIONAL:
            yield ctx.problem((*where, "roles"), f"roles with format {fmt}, which has no roles",
                              "roles name the turns of chat and sharegpt data: remove it, or change the format",
                              key=True)
            continue
        seen: dict = {}
        for role, names in roles.items():
            for k, name in enumerate(names):
                if seen.setdefault(name, role) != role:
                    # One name cannot mean two roles: which turns train would depend on the order.
                    yield ctx.problem((*where, "roles", role, k), f"{name!r} names both {seen[name]} and {role}",
                                      "give each name of the data one role")


def jinja_template_and_its_text(doc: dict, ctx: Context):
    data = doc.get("data", {})
    jinja = data.get("chat_template") == "jinja"
    if jinja and "chat_template_jinja" not in data:
        yield ctx.problem(("data", "chat_template"), "chat_template jinja without chat_template_jinja",
                          "add data.chat_template_jinja with the template's Jinja text, or name a template")
    if "chat_template_jinja" in data and not jinja:
        yield ctx.problem(("data", "chat_template_jinja"), "chat_template_jinja without chat_template: jinja",
                          "set data.chat_template: jinja to train with it, or remove it", key=True)


def mistral_common_encodes_conversations_itself(doc: dict, ctx: Context):
    """What model.tokenizer_backend mistral_common cannot do. transformers' MistralCommonBackend
    (5.x) encodes conversations in Mistral's instruct format in code: it ignores a chat template
    without a word, cannot set special tokens (NotImplementedError), and ends plain text with </s>."""
    if doc.get("model", {}).get("tokenizer_backend") != "mistral_common":
        return
    data = doc.get("data", {})
    own = schema.defaults_of("data")["chat_template"]  # a written-out recipe holds it: not a choice
    if data.get("chat_template", own) != own:
        yield ctx.problem(("data", "chat_template"), f"chat_template {data['chat_template']} with "
                          "model.tokenizer_backend mistral_common, which encodes conversations in Mistral's "
                          "instruct format itself and ignores any template",
                          "remove data.chat_template: mistral-common's format is the model's own", key=True)
    if "special_tokens" in data:
        yield ctx.problem(("data", "special_tokens"), "special_tokens with model.tokenizer_backend mistral_common: "
                          "its tokens are tekken.json's, and transformers cannot set them on it",
                          "remove data.special_tokens", key=True)
    for i, dataset in enumerate(data.get("datasets", [])):
        if dataset.get("format") == "text":
            yield ctx.problem(("data", "datasets", i, "format"), "format text with model.tokenizer_backend "
                              "mistral_common, which encodes conversations only",
                              "use format chat, or alpaca or prompt_completion (each record a user turn and its "
                              "answer)")
        # mistral-common reads a turn's reasoning from reasoning_content (a ThinkChunk) and drops other keys.
        if dataset.get("template_thinking_key", "reasoning_content") != "reasoning_content":
            yield ctx.problem(("data", "datasets", i, "template_thinking_key"), "template_thinking_key "
                              f"{dataset['template_thinking_key']} with model.tokenizer_backend mistral_common, "
                              "which reads a turn's reasoning from reasoning_content only",
                              "remove template_thinking_key (reasoning_content is its default)")


def one_process_without_a_strategy(doc: dict, ctx: Context):
    dist = doc.get("distributed", {})
    if dist.get("strategy") != "none":
        return
    for field in ("processes_per_node", "nodes"):
        if dist.get(field) is not None and dist[field] > 1:
            yield ctx.problem(("distributed", field), f"{field} {dist[field]} with strategy none (one process)",
                              "set distributed.strategy: ddp (or fsdp, deepspeed_zero2, deepspeed_zero3) to train "
                              "with several processes")


def several_nodes_need_their_main(doc: dict, ctx: Context):
    dist = doc.get("distributed", {})
    nodes = dist.get("nodes", schema.schema()["properties"]["distributed"]["properties"]["nodes"]["default"])
    if nodes > 1 and "main_address" not in dist:
        yield ctx.problem(("distributed", "nodes"), f"{nodes} nodes need the address of the main node",
                          "add distributed.main_address: the host name or IP of the machine with node_rank 0, "
                          "reachable from every node")
    if "node_rank" in dist and dist["node_rank"] >= nodes:
        yield ctx.problem(("distributed", "node_rank"), f"node_rank {dist['node_rank']} with {nodes} node(s)",
                          f"node ranks run from 0 to {nodes - 1}")


def offload_knobs_match_the_strategy(doc: dict, ctx: Context):
    dist = doc.get("distributed", {})
    strategy = dist.get("strategy")
    if "fsdp_offload" in dist and strategy != "fsdp":
        yield ctx.problem(("distributed", "fsdp_offload"), f"fsdp_offload with strategy {strategy}",
                          "remove it, or set strategy: fsdp", key=True)
    offload = dist.get("zero_offload")
    if offload is not None and strategy not in ("deepspeed_zero2", "deepspeed_zero3"):
        yield ctx.problem(("distributed", "zero_offload"), f"zero_offload with strategy {strategy}",
                          "remove it, or set strategy: deepspeed_zero2 or deepspeed_zero3", key=True)
    elif offload in ("parameters", "optimizer_and_parameters") and strategy == "deepspeed_zero2":
        yield ctx.problem(("distributed", "zero_offload"), "ZeRO-2 does not shard parameters, so it cannot offload them",
                          "use zero_offload: optimizer, or strategy: deepspeed_zero3")
    optimizer = doc.get("training", {}).get("optimizer", schema.defaults_of("training")["optimizer"])
    if offload in ("optimizer", "optimizer_and_parameters") and optimizer != "adamw_torch":
        yield ctx.problem(("training", "optimizer"), f"zero_offload {offload} runs DeepSpeed's CPU Adam, not {optimizer}",
                          "set training.optimizer: adamw_torch, or distributed.zero_offload: none")


def quantized_base_fits_the_strategy(doc: dict, ctx: Context):
    """bitsandbytes bases under sharding, as the libraries document them at the installed versions
    (bitsandbytes 0.50 docs/fsdp_qlora.md, peft 0.21 docs accelerate/deepspeed.md)."""
    strategy = doc.get("distributed", {}).get("strategy")
    if doc.get("method") != "qlora" or strategy not in ("fsdp", "deepspeed_zero3"):
        return
    bits = doc.get("quantization", {}).get("bits", schema.defaults_of("quantization")["bits"])
    where = ("distributed", "strategy")
    if strategy == "deepspeed_zero3":
        # peft's ZeRO-3 + QLoRA recipe builds the model inside deepspeed.zero.Init (TrainingArguments
        # before from_pretrained) with a float quant storage; recipe run loads the model first, so
        # ZeRO-3 would partition weights it cannot gather back. 8-bit is not supported there at all.
        yield ctx.problem(where, f"a bitsandbytes {bits}-bit base cannot be sharded by DeepSpeed ZeRO-3 as recipe run "
                          "loads it", "use strategy: fsdp (FSDP2 shards the 4-bit weights, stored as the compute dtype)"
                          " or deepspeed_zero2 (shards optimizer state and gradients, the base stays whole)")
    elif bits == 8:
        # FSDP shards float tensors only; bitsandbytes' quant_storage makes 4-bit weights one, LLM.int8 has none.
        yield ctx.problem(where, "FSDP cannot shard an 8-bit (LLM.int8) base: it shards float tensors only",
                          "use quantization.bits: 4 (FSDP-QLoRA stores 4-bit weights as a float dtype FSDP can "
                          "shard), or strategy: ddp or deepspeed_zero2")


def adam_knobs_need_adam(doc: dict, ctx: Context):
    training, defaults = doc.get("training", {}), schema.defaults_of("training")
    optimizer = training.get("optimizer", defaults["optimizer"])
    if "adamw" in optimizer:
        return
    for knob in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        # A written-out document (recipe show, a run folder's recipe.yaml) holds the defaults: not a choice.
        if training.get(knob, defaults[knob]) != defaults[knob]:
            yield ctx.problem(("training", knob), f"{knob} with optimizer {optimizer}, which is not AdamW",
                              "remove it, or use an adamw optimizer", key=True)


def torchao_optimizers_where_they_run(doc: dict, ctx: Context):
    training, defaults = doc.get("training", {}), schema.defaults_of("training")
    optimizer = training.get("optimizer", defaults["optimizer"])
    if training.get("bf16_stochastic_round") and optimizer not in TORCHAO_OPTIMIZERS:
        yield ctx.problem(("training", "bf16_stochastic_round"), f"bf16_stochastic_round with optimizer {optimizer}: "
                          "only torchao's AdamW rounds stochastically", "use optimizer adamw_torch_8bit or "
                          "adamw_torch_4bit, or remove bf16_stochastic_round", key=True)
    elif training.get("bf16_stochastic_round") and training.get("precision") in ("fp16", "fp32", "pure_fp16"):
        yield ctx.problem(("training", "bf16_stochastic_round"), f"bf16_stochastic_round with precision "
                          f"{training['precision']}: no weight trains in bf16", "use precision bf16 or auto, or remove "
                          "bf16_stochastic_round", key=True)
    strategy = doc.get("distributed", {}).get("strategy", "")
    if optimizer in TORCHAO_OPTIMIZERS and strategy.startswith("deepspeed"):
        # DeepSpeed flattens the parameters into its own buffers and steps its own or a plain torch
        # optimizer over them; torchao's states are tensor subclasses per parameter, untried there.
        yield ctx.problem(("training", "optimizer"), f"{optimizer} with {strategy}: torchao's low-bit AdamW is not "
                          "run under DeepSpeed", "use strategy ddp or fsdp, or optimizer adamw_8bit")


def hub_private_needs_a_repository(doc: dict, ctx: Context):
    output = doc.get("output", {})
    if "hub_private" in output and "hub_model_id" not in output:
        yield ctx.problem(("output", "hub_private"), "hub_private without hub_model_id: nothing is pushed",
                          "add output.hub_model_id (e.g. my-org/my-adapter), or remove hub_private", key=True)


def pure_fp16_needs_an_fp32_update(doc: dict, ctx: Context):
    training, defaults = doc.get("training", {}), schema.defaults_of("training")
    optimizer = training.get("optimizer", defaults["optimizer"])
    if doc.get("method") == "full" and training.get("precision") == "pure_fp16" and optimizer == "adamw_torch":
        # Measured: the tiny model's loss is NaN at step 2 (tests/train/test_runner.py).
        yield ctx.problem(("training", "precision"), "pure_fp16 with optimizer adamw_torch: torch's AdamW keeps its "
                          "moments in the weights' fp16, where its epsilon (1e-8) rounds to 0, so a weight whose "
                          "second moment underflows is divided by zero and turns NaN",
                          "set training.optimizer: adamw_8bit (bitsandbytes updates in fp32, 2 bytes of state per "
                          "weight), or precision fp16")


def deepspeed_decides_its_own_precision(doc: dict, ctx: Context):
    strategy = doc.get("distributed", {}).get("strategy", "")
    if doc.get("training", {}).get("precision") == "pure_fp16" and strategy.startswith("deepspeed"):
        # DeepSpeed's precision is its config's fp16/bf16 section (mixed, over fp32 master weights, or
        # none: fp32); recipe run fills it from the Trainer, which pure fp16 sets to neither.
        yield ctx.problem(("training", "precision"), f"pure_fp16 with strategy {strategy}: DeepSpeed trains fp16 "
                          "weights only as mixed precision over an fp32 copy, or fp32",
                          "use precision fp16 (DeepSpeed's fp16), or strategy fsdp or ddp for pure fp16")


def min_lr_needs_cosine(doc: dict, ctx: Context):
    training = doc.get("training", {})
    scheduler = training.get("lr_scheduler", schema.defaults_of("training")["lr_scheduler"])
    if training.get("min_lr_ratio", 0) and scheduler not in ("cosine", "rex"):  # 0, the default, is no floor
        yield ctx.problem(("training", "min_lr_ratio"), f"min_lr_ratio with lr_scheduler {scheduler}: only the cosine "
                          "and rex schedules decay to a floor", "remove it, or use lr_scheduler: cosine", key=True)


def quadratic_warmup_needs_a_plain_cosine(doc: dict, ctx: Context):
    training = doc.get("training", {})
    scheduler = training.get("lr_scheduler", schema.defaults_of("training")["lr_scheduler"])
    if training.get("warmup_shape") != "quadratic":
        return
    if scheduler != "cosine":
        yield ctx.problem(("training", "warmup_shape"), f"warmup_shape quadratic with lr_scheduler {scheduler}: the "
                          "quadratic warm-up leads into the cosine schedule only", "remove it, or use lr_scheduler: cosine",
                          key=True)
    elif training.get("min_lr_ratio", 0):  # 0, the default, is no floor
        yield ctx.problem(("training", "warmup_shape"), "warmup_shape quadratic with min_lr_ratio: the quadratic "
                          "warm-up's cosine decays to 0", "remove min_lr_ratio, or warmup_shape", key=True)


def one_warmup(doc: dict, ctx: Context):
    training = doc.get("training", {})
    if "warmup_steps" in training and "warmup_ratio" in training:
        yield ctx.problem(("training", "warmup_steps"), "warmup_steps and warmup_ratio both set",
                          "keep one: warmup_steps counts optimizer steps, warmup_ratio a fraction of them", key=True)


def evaluation_needs_held_out_data(doc: dict, ctx: Context):
    if "eval_steps" in doc.get("training", {}) and "val_fraction" not in doc.get("data", {}):
        yield ctx.problem(("training", "eval_steps"), "eval_steps without data.val_fraction: nothing to evaluate on",
                          "add data.val_fraction (e.g. 0.02), or remove eval_steps", key=True)


def per_epoch_or_steps(doc: dict, ctx: Context):
    training, data = doc.get("training", {}), doc.get("data", {})
    for per_epoch, steps in (("saves_per_epoch", "save_steps"), ("evals_per_epoch", "eval_steps")):
        if per_epoch in training and steps in training:
            yield ctx.problem(("training", per_epoch), f"{per_epoch} and {steps} both set",
                              f"keep one: {steps} counts optimizer steps, {per_epoch} divides an epoch", key=True)
    if "early_stopping_patience" in training and ("saves_per_epoch" in training or "evals_per_epoch" in training):
        # The best evaluation must have its checkpoint (save_steps a multiple of eval_steps), and an
        # epoch's steps are known only when the run starts: per-epoch counts keep that relation only
        # when saves follow evaluations (recipe run saves every E/S-th evaluation), or evaluations
        # follow saves (eval_steps left out: one at each save).
        saves, evals = training.get("saves_per_epoch"), training.get("evals_per_epoch")
        follows = (evals is None and "eval_steps" not in training) if saves else False
        if saves and evals:
            follows = evals % saves == 0
        if not follows:
            where = "evals_per_epoch" if evals else "saves_per_epoch"
            yield ctx.problem(("training", where), "per-epoch counts with early stopping: a save must follow each "
                              "evaluation that may be the best",
                              "with early_stopping_patience, give evals_per_epoch a multiple of saves_per_epoch (e.g. "
                              "saves 1, evals 4), saves_per_epoch alone, or save_steps a multiple of eval_steps",
                              key=True)
    if "evals_per_epoch" in training and "val_fraction" not in data:
        yield ctx.problem(("training", "evals_per_epoch"), "evals_per_epoch without data.val_fraction: nothing to "
                          "evaluate on", "add data.val_fraction (e.g. 0.02), or remove evals_per_epoch", key=True)


def target_pattern_is_a_regular_expression(doc: dict, ctx: Context):
    targets = doc.get("lora", {}).get("target_modules")
    if not isinstance(targets, dict):
        return
    wrong = _not_a_regex(targets["pattern"])
    if wrong:  # peft would raise it from re.fullmatch after the model has loaded
        yield ctx.problem(("lora", "target_modules", "pattern"), f"not a regular expression: {wrong}",
                          r"escape [ ] ( ) with a backslash where they are meant literally, e.g. "
                          r"model.layers.[\d]+.self_attn.(q|v)_proj")


def saved_modules_are_not_adapted(doc: dict, ctx: Context):
    lora = doc.get("lora", {})
    targets = lora.get("target_modules")
    for i, name in enumerate(lora.get("modules_to_save", [])):
        if isinstance(targets, list) and name in targets:
            # peft would wrap one module both ways; the copy trained in full already covers the adapter.
            yield ctx.problem(("lora", "modules_to_save", i), f"{name} is in both modules_to_save and target_modules",
                              "a module is trained in full (modules_to_save) or gets an adapter (target_modules): "
                              "remove it from one list")


def adapted_parameters_are_not_quantized(doc: dict, ctx: Context):
    if doc.get("lora", {}).get("target_parameters") and doc.get("quantization", {}).get("moe_experts"):
        # peft (0.21) looks the names up among plain parameters; a parametrized (quantized) one is not
        # found, and it goes on with a warning and no adapter there.
        yield ctx.problem(("lora", "target_parameters"), "adapters on quantized experts (quantization.moe_experts): "
                          "peft finds no parameter behind bitsandbytes' parametrization and would train none",
                          "keep the experts in 16 bits (remove moe_experts) to adapt them, or remove target_parameters",
                          key=True)


def linearized_experts_are_linear_layers(doc: dict, ctx: Context):
    if not doc.get("model", {}).get("linearized_experts"):
        return
    # Each of these acts on transformers' fused 3-D expert parameters, which a linearized model lacks.
    fused_only = {
        ("quantization", "moe_experts"): ("no fused experts to quantize: method qlora quantizes linearized experts "
                                          "as every other linear layer", "remove quantization.moe_experts"),
        ("model", "experts_implementation"): ("transformers' experts kernels run fused experts; linearized ones run "
                                              "one linear layer each", "remove model.experts_implementation"),
        ("lora", "target_parameters"): ("linearized experts have no 3-D expert parameters to adapt",
                                        "name their linear layers in lora.target_modules (experts.gate_projs.0...)"),
    }
    for path, (why, hint) in fused_only.items():
        section, field = path
        if doc.get(section, {}).get(field):
            yield ctx.problem(path, f"{field} with model.linearized_experts: {why}", hint, key=True)


def router_coefficient_needs_the_loss(doc: dict, ctx: Context):
    training = doc.get("training", {})
    if "router_aux_loss_coef" in training and not training.get("router_aux_loss"):
        yield ctx.problem(("training", "router_aux_loss_coef"), "router_aux_loss_coef without router_aux_loss: the "
                          "load-balancing loss is off", "add router_aux_loss: true, or remove the coefficient", key=True)


def early_stopping_needs_evaluations(doc: dict, ctx: Context):
    training, data = doc.get("training", {}), doc.get("data", {})
    if "early_stopping_threshold" in training and "early_stopping_patience" not in training:
        yield ctx.problem(("training", "early_stopping_threshold"), "early_stopping_threshold without "
                          "early_stopping_patience", "add early_stopping_patience (e.g. 3), or remove the threshold",
                          key=True)
    if "early_stopping_patience" not in training:
        return
    per_epoch = "saves_per_epoch" in training or "evals_per_epoch" in training  # per_epoch_or_steps checks those
    if "val_fraction" not in data:
        yield ctx.problem(("training", "early_stopping_patience"), "early stopping without data.val_fraction: no "
                          "eval_loss to watch", "add data.val_fraction (e.g. 0.02), or remove early_stopping_patience",
                          key=True)
    save = training.get("save_steps", schema.defaults_of("training")["save_steps"])
    evaluate = training.get("eval_steps", save)
    if not per_epoch and save % evaluate:
        # The best evaluation must have its checkpoint to be the result (load_best_model_at_end).
        yield ctx.problem(("training", "save_steps") if "save_steps" in training else ("training", "eval_steps"),
                          f"save_steps {save} is not a multiple of eval_steps {evaluate}, as early stopping needs",
                          "the result is the best evaluation's checkpoint: use save_steps "
                          f"{evaluate * max(1, save // evaluate)} or eval_steps that divides {save}")


RULES: tuple[Rule, ...] = (
    lora_with_full,
    unfrozen_parameters_are_full_fine_tuning,
    qat_is_full_fine_tuning,
    mxfp4_rounds_weights_and_inputs_in_blocks_of_32,
    per_epoch_or_steps,
    quantization_without_qlora,
    four_bit_options_with_8bit,
    compute_dtype_against_precision,
    flash_attention_needs_half,
    model_is_a_folder_or_a_hub_id,
    datasets_are_files_or_hub_ids,
    dataset_fields_match_the_format,
    jinja_template_and_its_text,
    mistral_common_encodes_conversations_itself,
    one_process_without_a_strategy,
    several_nodes_need_their_main,
    offload_knobs_match_the_strategy,
    quantized_base_fits_the_strategy,
    one_warmup,
    quadratic_warmup_needs_a_plain_cosine,
    min_lr_needs_cosine,
    adam_knobs_need_adam,
    torchao_optimizers_where_they_run,
    hub_private_needs_a_repository,
    pure_fp16_needs_an_fp32_update,
    deepspeed_decides_its_own_precision,
    evaluation_needs_held_out_data,
    target_pattern_is_a_regular_expression,
    saved_modules_are_not_adapted,
    adapted_parameters_are_not_quantized,
    linearized_experts_are_linear_layers,
    router_coefficient_needs_the_loss,
    early_stopping_needs_evaluations,
)


def check(doc: dict, locate, directory_of: Callable[[tuple], Path]) -> list[Problem]:
    """Problems from every rule, in rule order."""
    ctx = Context(locate, directory_of)
    return [problem for rule in RULES for problem in rule(doc, ctx)]


def warnings(doc: dict, locate) -> list[Problem]:
    """Valid but worth a look: things a teammate should see before running someone's recipe."""
    ctx = Context(locate)
    found = []
    if doc.get("model", {}).get("trust_remote_code") is True:
        found.append(ctx.problem(("model", "trust_remote_code"),
                                 "warning: this recipe runs Python code downloaded with the model",
                                 "only for models whose code you have read or trust"))
    data = doc.get("data", {})
    formats = [d.get("format") for d in data.get("datasets", [])]
    own = schema.schema()["properties"]["data"]["properties"]["chat_template"]["default"]
    if data.get("chat_template", own) != own and not set(formats) & set(CONVERSATIONAL):
        found.append(ctx.problem(("data", "chat_template"), f"warning: chat_template {data['chat_template']} "
                                 "changes nothing: no dataset is conversational (chat or sharegpt)",
                                 "remove it, or use format chat"))
    training = doc.get("training", {})
    if "max_steps" in training and "epochs" in training:
        found.append(ctx.problem(("training", "epochs"), "warning: epochs is ignored because max_steps is set",
                                 "remove one of them"))
    return found
