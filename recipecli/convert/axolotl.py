"""The one table of Axolotl keys and the recipe fields they become, both ways.

Each ``Row`` is one Axolotl key: the recipe field(s) it maps to, ``read`` (Axolotl value -> recipe
values), ``write`` (resolved recipe document -> Axolotl value, or ABSENT) and a note. ``read``
raises ``NotConverted`` with the reason when a value has no recipe equivalent; a key without a row
is reported through ``UNSUPPORTED`` (why recipe lacks it) or as unknown. translate.py walks the
table; nothing else knows a key name.

Written from Axolotl's public configuration reference (docs/config-reference.qmd) and its dataset
schema (utils/schemas/datasets.py). Where Axolotl's default differs from the recipe's, ``DEFAULTS``
writes Axolotl's explicitly, so an absent key means the same on both sides.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, get_args

from ..fit.architectures import ALL_LINEAR_ADAPTS_EXPERTS, catalog_shape
from ..read import paths
from ..read.recipe import LrScheduler, QatGroup
from ..read.recipe import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT
from ..read.schema import defaults_of

ABSENT = object()  # write(): this recipe leaves the Axolotl key out
# read(): a note printed with the conversion, for a value that becomes what recipe has closest
# (the same memory and loss, another kernel); never for a value that changes what is trained.
NOTE = "note"

Read = Callable[[Any, dict], dict]  # (value, whole config or dataset entry) -> {recipe path: value}
Write = Callable[[dict], Any]  # (resolved recipe document or dataset entry) -> value or ABSENT


class NotConverted(Exception):
    """A value that has no recipe equivalent (or, writing, a recipe value Axolotl cannot hold)."""

    def __init__(self, why: str, hint: str = ""):
        super().__init__(why)
        self.why, self.hint = why, hint


@dataclass(frozen=True)
class Row:
    key: str  # the Axolotl key (in a dataset entry, for DATASET_ROWS)
    recipe: tuple[str, ...]  # recipe fields it reads and writes, dotted; () for a key with no effect
    read: Read
    write: Write
    notes: str = ""


def get(doc: dict, dotted: str, default: Any = ABSENT) -> Any:
    """The value at a dotted path of a document, or ``default``."""
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _same(path: str) -> tuple[Read, Write]:
    return (lambda v, cfg: {path: v}), (lambda doc: get(doc, path))


def _row(key: str, path: str, notes: str = "") -> Row:
    read, write = _same(path)
    return Row(key, (path,), read, write, notes)


def _row_unless_default(key: str, path: str, notes: str = "") -> Row:
    """A key whose Axolotl default is recipe's: written back only where the recipe says otherwise."""
    section, field = path.split(".")
    return Row(key, (path,), lambda v, cfg: {path: v},
               lambda doc: ABSENT if get(doc, path) == defaults_of(section)[field] else get(doc, path), notes)


def _no_effect_when(*values, why: str, hint: str = "") -> Callable[[str], Row]:
    """A key recipe has no field for, harmless at ``values`` (what recipe does anyway)."""
    return lambda key: Row(key, (), _only(*values, why=why, hint=hint), lambda doc: ABSENT,
                           f"only {' or '.join(map(repr, values))}: otherwise {why}")


def _only(*values, why: str, hint: str = "") -> Read:
    """A reader for a key whose only convertible values are what recipe does anyway."""
    def read(v, cfg):
        if v is None or any(v == ok and type(v) is type(ok) for ok in values):
            return {}
        raise NotConverted(f"{_shown(v)}: {why}", hint)
    return read


SPECIAL_TOKENS = ("pad_token", "eos_token", "bos_token", "unk_token")


def _special_tokens(v, cfg):
    if v is None or v == {}:
        return {}
    if not isinstance(v, dict):
        raise NotConverted(f"{_shown(v)}: not a mapping of token names", "")
    others = sorted(str(k) for k in v if k not in SPECIAL_TOKENS)
    if others:
        raise NotConverted(f"{', '.join(others)}: recipe sets the tokenizer's " + ", ".join(SPECIAL_TOKENS),
                           "remove it")
    bad = next((k for k in SPECIAL_TOKENS if k in v and not (isinstance(v[k], str) and v[k])), None)
    if bad:
        raise NotConverted(f"{bad} {_shown(v[bad])}: not a token's text", "")
    return {f"data.special_tokens.{k}": v[k] for k in SPECIAL_TOKENS if k in v}


def _tokens(v, cfg):
    if isinstance(v, dict):  # the older spelling of special_tokens
        return _special_tokens(v, cfg)
    if v == []:
        return {}
    if isinstance(v, list) and all(isinstance(s, str) and s for s in v):
        # Axolotl adds the missing ones; recipe checks each is a token already (the common case: a
        # chat template's markers), and refuses with the token's name when one is not.
        return {"data.tokens": v}
    raise NotConverted(f"tokens {_shown(v)}: expected a list of token texts")


def _said_when_true(note: str) -> Read:
    """A switch that changes nothing recipe trains: true converts with ``note``, false to nothing."""
    def read(v, cfg):
        if not isinstance(v, bool):
            raise NotConverted(f"expected true or false, got {_shown(v)}")
        return {NOTE: note} if v else {}
    return read


def _sets_when_true(path: str, value) -> Read:
    """A switch for one recipe value: true sets ``path`` to ``value``, false converts to nothing."""
    def read(v, cfg):
        if not isinstance(v, bool):
            raise NotConverted(f"expected true or false, got {_shown(v)}")
        return {path: value} if v else {}
    return read


def _max_packed(v, cfg):
    length = cfg.get("sequence_len", DEFAULTS["data.max_seq_length"])
    if v != length:
        raise NotConverted(f"max_packed_sequence_len {_shown(v)} with sequence_len {length}: recipe packs to "
                           "max_seq_length", "use sample_packing: true with sequence_len")
    return {"data.packing": True, NOTE: "max_packed_sequence_len -> sample packing (TRL's, to the same length)"}


def _said_when_on(key: str, note: str) -> Row:
    """A switch for speed alone (a fused kernel, compilation): true converts with the note that
    recipe runs without it (fit-check counts the unfused layers: never less memory than Axolotl)."""
    return Row(key, (), _said_when_true(note), lambda doc: ABSENT, f"speed only; true is said: {note}")


def _one(key: str, why: str) -> Row:
    """A size of one is no parallelism of that kind (what recipe runs); more is ``why`` not."""
    return Row(key, (), _only(1, why=why), lambda doc: ABSENT, f"1 only: otherwise {why}")


def _ignored(key: str, notes: str) -> Row:
    """A key that changes nothing recipe trains (a cache folder, a loader hint, speed only)."""
    return Row(key, (), lambda v, cfg: {}, lambda doc: ABSENT, notes)


# --- model and method --------------------------------------------------------------------------

def _write_vocab_32x(doc):
    multiple = get(doc, "model.pad_vocab_to_multiple_of")
    if multiple is ABSENT:
        return ABSENT
    if multiple != 32:
        raise NotConverted(f"pad_vocab_to_multiple_of {multiple}: Axolotl pads the vocabulary to a multiple of 32 "
                           "only (resize_token_embeddings_to_32x)", "use 32, or leave it out")
    return True


def _adapter(v, cfg):
    kbit = cfg.get("load_in_4bit") is True or cfg.get("load_in_8bit") is True
    if v == "qlora" or (v == "lora" and kbit):
        return {"method": "qlora"}
    if v == "lora":
        return {"method": "lora"}
    raise NotConverted(f"adapter {_shown(v)}: recipe trains LoRA adapters (lora, qlora) or every weight",
                       "use adapter: lora or qlora, or leave adapter out for full fine-tuning")


def _write_adapter(doc):
    method, bits = doc["method"], get(doc, "quantization.bits")
    return {"qlora": "qlora" if bits == 4 else "lora", "lora": "lora"}.get(method, ABSENT)


def _load_in(bits: int) -> Read:
    def read(v, cfg):
        if v is False:
            return {}
        if v is not True:
            raise NotConverted(f"expected true or false, got {_shown(v)}")
        if cfg.get("adapter") not in ("lora", "qlora"):
            raise NotConverted(f"a {bits}-bit base trains only with adapters, and no adapter is set",
                               "add adapter: lora (Axolotl refuses this too)")
        return {"quantization.bits": bits}
    return read


_BNB = {"bnb_4bit_quant_type": "quantization.type", "bnb_4bit_use_double_quant": "quantization.double_quant",
        "bnb_4bit_compute_dtype": "quantization.compute_dtype"}


def _bnb_kwargs(v, cfg):
    if not isinstance(v, dict):
        raise NotConverted(f"expected a mapping, got {_shown(v)}")
    unknown = [k for k in v if k not in _BNB]
    if unknown:
        raise NotConverted(f"bitsandbytes option {unknown[0]!r} has no recipe field",
                           "recipe sets " + ", ".join(_BNB))
    return {_BNB[k]: value for k, value in v.items()}


def _write_bnb(doc):
    quant = doc.get("quantization")
    if not quant:
        return ABSENT
    out = {k: get(doc, p) for k, p in _BNB.items() if get(doc, p) is not ABSENT}
    if out.get("bnb_4bit_compute_dtype") == "auto":
        del out["bnb_4bit_compute_dtype"]  # Axolotl's own default: the training dtype, as auto
    return out or ABSENT


def _targets_linear(v, cfg):
    if cfg.get("adapter") not in ("lora", "qlora") and isinstance(v, bool):
        return {}  # as every lora_* key: Axolotl ignores it without an adapter
    if v is True:
        names = _axolotl_linear_names(cfg.get("base_model"))
        if names is None:
            return {"lora.target_modules": "all-linear"}
        return {"lora.target_modules": names,
                NOTE: f"lora_target_linear: Axolotl adapts the nn.Linear layers, here {', '.join(names)}: a mixture of "
                      "experts' fused experts are no nn.Linear layers (recipe's all-linear, peft's, would adapt them "
                      "too)"}
    if v is False:
        return {}
    raise NotConverted(f"expected true or false, got {_shown(v)}")


def _axolotl_linear_names(model_id) -> Optional[list[str]]:
    """What Axolotl's lora_target_linear adapts where recipe's all-linear adapts more: the leaf names of
    the nn.Linear layers (its find_all_linear_names) of a mixture of experts whose fused experts peft's
    all-linear wraps too. Read from the catalog alone, so a conversion is the same on every machine;
    None for any other model, where the two agree (or which the catalog does not know)."""
    shape = catalog_shape(model_id) if isinstance(model_id, str) else None
    if shape is None or shape.model_type not in ALL_LINEAR_ADAPTS_EXPERTS:
        return None
    return [path.rsplit(".", 1)[-1] for path in shape.linear_modules()]


# cls_model_config names the config class Axolotl reads config.json with, by the model type it reads:
# Gemma3TextConfig reads a multimodal Gemma 3's language model alone.
_CONFIG_CLASSES = {"Gemma3TextConfig": "gemma3_text"}


def _cls_model_config(v, cfg):
    """No change where the base's own config is of that class, as the catalog knows it (so a conversion
    is the same on every machine); anything else would load another model than recipe's."""
    model_id = cfg.get("base_model")
    shape = catalog_shape(model_id) if isinstance(model_id, str) else None
    if shape is not None and isinstance(v, str) and shape.model_type == _CONFIG_CLASSES.get(v):
        return {NOTE: f"{v} is {model_id}'s own config class ({shape.model_type}): nothing changes"}
    raise NotConverted(f"{_shown(v)}: loading part of a model (a multimodal model's language model) or a base "
                       "recipe does not know to be of that class is not supported: recipe loads the base as its "
                       "config.json says", "remove it for a base whose config.json is of that class")


def _target_modules(v, cfg):
    if cfg.get("adapter") not in ("lora", "qlora"):
        return {}  # as every lora_* key: Axolotl ignores it without an adapter
    if cfg.get("lora_target_linear") is True:
        return {}  # every linear layer is adapted already; the names add none
    if isinstance(v, str) and v.isidentifier():
        return {"lora.target_modules": [v]}
    if isinstance(v, str) and v:
        # peft's string form: a regular expression matched in full against each module's full name
        return {"lora.target_modules": {"pattern": v}}
    if isinstance(v, list) and v and all(isinstance(m, str) for m in v):
        return {"lora.target_modules": v}
    raise NotConverted(f"{_shown(v)} is not a list of module names nor a regular expression of full names",
                       "list the names, e.g. [q_proj, v_proj], write a pattern, e.g. "
                       "'model.layers.[\\d]+.self_attn.(q|v)_proj', or use lora_target_linear: true")


def _target_parameters(v, cfg):
    if cfg.get("adapter") not in ("lora", "qlora"):
        return {}  # as every lora_* key: Axolotl ignores it without an adapter
    if isinstance(v, list) and all(isinstance(m, str) and m.replace(".", "_").isidentifier() for m in v):
        return {"lora.target_parameters": v} if v else {}
    raise NotConverted(f"{_shown(v)} is not a list of parameter names",
                       "e.g. [mlp.experts.gate_up_proj, mlp.experts.down_proj]")


def _write_targets(doc):
    targets = get(doc, "lora.target_modules")
    if targets == "attention":
        raise NotConverted("the 'attention' shorthand depends on the model; Axolotl needs module names",
                           "write the names in the recipe, e.g. [q_proj, k_proj, v_proj, o_proj]")
    if isinstance(targets, dict):
        if targets["pattern"].isidentifier():  # it would read back as a module name (a list of one)
            raise NotConverted(f"the pattern {targets['pattern']} is a plain name: as lora_target_modules it reads "
                               "back as a module name, not a pattern", "write it as a list of names, e.g. "
                               f"[{targets['pattern']}], or as a pattern of full names, e.g. model.{targets['pattern']}")
        return targets["pattern"]
    return targets if isinstance(targets, list) else ABSENT


def _lora_only(path: str) -> Read:
    # Axolotl ignores lora_* keys without an adapter; a recipe refuses a lora section with full.
    return lambda v, cfg: {path: v} if cfg.get("adapter") in ("lora", "qlora") else {}


def _modules_to_save(v, cfg):
    if cfg.get("adapter") not in ("lora", "qlora"):
        return {}  # as every lora_* key: Axolotl ignores it without an adapter
    if isinstance(v, list) and all(isinstance(m, str) for m in v):
        return {"lora.modules_to_save": v} if v else {}
    raise NotConverted(f"{_shown(v)} is not a list of module names", "e.g. [embed_tokens, lm_head]")


# The model_config overrides recipe has fields for: a mixture of experts' load-balancing loss.
_ROUTER = {"output_router_logits": "training.router_aux_loss", "router_aux_loss_coef": "training.router_aux_loss_coef"}


def _model_config(v, cfg):
    if not isinstance(v, dict):
        raise NotConverted(f"expected a mapping of config values, got {_shown(v)}")
    others = sorted(str(k) for k in v if k not in _ROUTER)
    if others:
        raise NotConverted(f"{', '.join(others)}: recipe changes no other value of the model's config",
                           "recipe sets " + ", ".join(_ROUTER))
    return {_ROUTER[k]: value for k, value in v.items()}


def _write_model_config(doc):
    out = {k: get(doc, path) for k, path in _ROUTER.items() if get(doc, path) not in (ABSENT, False)}
    return out or ABSENT


# Axolotl's fused mixture-of-experts kernels (speed): recipe runs transformers' experts kernel instead.
_MOE_KERNEL_NOTE = ("a fused mixture-of-experts kernel; recipe runs transformers' experts kernel (grouped_mm where "
                    "the device allows it): the same result")


def _moe_group_size(v, cfg):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise NotConverted(f"expected a positive whole number, got {_shown(v)}")
    return {NOTE: f"moe_group_size: tunes {_MOE_KERNEL_NOTE}"}


def _experts_implementation(v, cfg):
    if v in ("eager", "grouped_mm", "batched_mm"):
        return {"model.experts_implementation": v}
    if v in ("scattermoe", "sonicmoe"):
        return {NOTE: f"{v}: {_MOE_KERNEL_NOTE}"}
    raise NotConverted(f"{_shown(v)}: recipe runs transformers' own experts kernels (eager, grouped_mm, batched_mm)",
                       "use experts_implementation: grouped_mm")


# Axolotl's unfrozen_parameters (utils/freeze.py): a regular expression matched from the name's start
# in which every dot is a literal dot except before '+', optionally ending in a row range.
_ROWS = re.compile(r"^.+\[[0-9]*(:[0-9]*)?\]$")
_WILDCARD_DOT = re.compile(r"(?<!\\)\.(?!\+)")


# Axolotl's qat keys and its defaults where a key is left out (its QATConfig schema).
_QAT_DEFAULTS = {"weight_dtype": "int8", "activation_dtype": None, "group_size": 32, "quantize_embedding": False,
                 "fake_quant_after_n_steps": None}
_QAT_GROUPS = get_args(QatGroup)
_QAT_HEAD_NOTE = ("qat: Axolotl rounds the output head's weight too where its loss calls the head (no cut "
                  "cross-entropy, no Liger fused loss); recipe leaves the head as is, as TRL's chunked loss reads "
                  "its weight directly")


def _qat(v, cfg):
    if not isinstance(v, dict):
        raise NotConverted(f"expected a mapping, got {_shown(v)}")
    unknown = sorted(set(v) - set(_QAT_DEFAULTS))
    if unknown:
        raise NotConverted(f"qat.{unknown[0]} is not an Axolotl QAT key recipe knows",
                           "keys: " + ", ".join(_QAT_DEFAULTS))
    q = {**_QAT_DEFAULTS, **{k: val for k, val in v.items() if val is not None}}
    if q["quantize_embedding"] is not False:
        raise NotConverted("qat quantize_embedding: recipe rounds the decoder layers' linear layers only",
                           "remove it")
    if q["weight_dtype"] == "mxfp4":
        return _qat_mxfp4(q)
    if q["weight_dtype"] != "int4":
        raise NotConverted(f"qat weight_dtype {_shown(q['weight_dtype'])}"
                           f"{' (Axolotl default)' if 'weight_dtype' not in v else ''}: recipe fake-quantizes "
                           "weights to int4 or mxfp4", "use weight_dtype: int4 or mxfp4")
    if q["activation_dtype"] not in (None, "int8"):
        raise NotConverted(f"qat activation_dtype {_shown(q['activation_dtype'])}: recipe rounds inputs to int8 or "
                           "not at all", "use activation_dtype: int8, or leave it out")
    if q["group_size"] not in _QAT_GROUPS or isinstance(q["group_size"], bool):
        raise NotConverted(f"qat group_size {_shown(q['group_size'])}: recipe takes "
                           + ", ".join(map(str, _QAT_GROUPS)))
    start = q["fake_quant_after_n_steps"] or 0
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise NotConverted(f"qat fake_quant_after_n_steps {_shown(start)}: expected a step count")
    return {"training.qat": {"weight_dtype": "int4", "activation_dtype": q["activation_dtype"] or "none",
                             "group_size": q["group_size"], "start_step": start},
            NOTE: _QAT_HEAD_NOTE}


def _qat_mxfp4(q: dict) -> dict:
    """Axolotl's mxfp4 QAT rounds weights and inputs to MXFP4 whatever activation_dtype says, in blocks
    of 32 (it refuses another), from the first step: torchao's MX layers have no fake quantizer for its
    fake_quant_after_n_steps switch to turn on."""
    if q["activation_dtype"] not in (None, "mxfp4"):
        raise NotConverted(f"qat activation_dtype {_shown(q['activation_dtype'])} with mxfp4 weights: Axolotl rounds "
                           "the inputs to mxfp4 whatever it says", "use activation_dtype: mxfp4")
    if q["group_size"] != 32:
        raise NotConverted(f"qat group_size {_shown(q['group_size'])} with mxfp4: the MX format scales blocks of 32",
                           "use group_size: 32")
    if q["fake_quant_after_n_steps"]:
        raise NotConverted(f"qat fake_quant_after_n_steps {_shown(q['fake_quant_after_n_steps'])} with mxfp4: torchao's "
                           "MX layers round from the first step (Axolotl's switch finds nothing to turn on)",
                           "remove it")
    return {"training.qat": {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": 32, "start_step": 0},
            NOTE: _QAT_HEAD_NOTE}


def _write_qat(doc):
    qat = get(doc, "training.qat")
    if qat is ABSENT:
        return ABSENT
    out = {"weight_dtype": qat["weight_dtype"], "group_size": qat["group_size"]}
    if qat.get("activation_dtype", "none") != "none":
        out["activation_dtype"] = qat["activation_dtype"]
    if qat.get("start_step"):
        out["fake_quant_after_n_steps"] = qat["start_step"]
    return out


def _mxfp4_dequantized(v, cfg):
    """model_quantization_config (and its kwargs): transformers' Mxfp4Config with dequantize true,
    Axolotl's way of training gpt-oss, is what recipe run always does with a base stored in MXFP4."""
    config, kwargs = cfg.get("model_quantization_config"), cfg.get("model_quantization_config_kwargs") or {}
    if config != "Mxfp4Config":
        raise NotConverted(f"model_quantization_config {_shown(config)}: quantized bases other than bitsandbytes "
                           "4/8-bit, and MXFP4 dequantized, are not supported")
    if kwargs != {"dequantize": True}:
        raise NotConverted(f"Mxfp4Config with {_shown(kwargs)}: MXFP4 weights do not train (transformers refuses "
                           "them); recipe run loads an MXFP4 base dequantized", "set "
                           "model_quantization_config_kwargs: {dequantize: true}")
    return {NOTE: "Mxfp4Config, dequantize: true: recipe run loads a base stored in MXFP4 (gpt-oss) dequantized to "
                  "16 bits, always"} if v == config else {}


def _unfrozen(v, cfg):
    if v == []:
        return {}  # nothing frozen: what recipe does
    if cfg.get("adapter") in ("lora", "qlora"):
        # Axolotl freezes by these patterns after peft has wrapped the model (its setup_model_and_tokenizer),
        # so they meet peft's names (base_model.model.…): the adapters they miss are frozen too.
        raise NotConverted("with an adapter: Axolotl applies it after peft has wrapped the model, freezing every "
                           "parameter its patterns miss, the adapters too (their names start base_model.model.); "
                           "recipe's training.unfrozen_parameters choose what full fine-tuning trains",
                           "use lora_modules_to_save for whole modules trained beside the adapters, or "
                           "lora.target_modules to keep adapters off a vision tower")
    if not (isinstance(v, list) and v and all(isinstance(p, str) and p for p in v)):
        raise NotConverted(f"{_shown(v)} is not a list of parameter name patterns", "e.g. [lm_head.weight]")
    ranged = [p for p in v if _ROWS.match(p)]
    if ranged:
        raise NotConverted(f"{', '.join(ranged)}: training some rows of a weight is not supported",
                           "train the whole weight (drop the [start:end] range)")
    out = {"training.unfrozen_parameters": [_WILDCARD_DOT.sub(r"\\.", p) for p in v]}
    if any("\\." in p for p in v):
        out[NOTE] = ("a dot written \\. is read as the literal dot it says (Axolotl's parser escapes every dot "
                     "again, so that pattern matched nothing there)")
    return out


def _write_unfrozen(doc):
    patterns = get(doc, "training.unfrozen_parameters")
    if patterns is ABSENT or patterns is None:
        return ABSENT
    wild = [p for p in patterns if _WILDCARD_DOT.search(p)]
    if wild:
        raise NotConverted(f"{', '.join(wild)}: Axolotl reads every dot as a literal dot (but in '.+')",
                           "write \\. for a dot and [^.]* or .+ where any characters go")
    return [p.replace("\\.", ".") for p in patterns]


# --- training ------------------------------------------------------------------------------------

# Axolotl's optimizer names (transformers' OptimizerNames) that are one of recipe's optimizers.
OPTIMIZERS = {
    "adamw_torch": "adamw_torch", "adamw_torch_fused": "adamw_torch", "adamw_hf": "adamw_torch",
    "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit", "adafactor": "adafactor", "sgd": "sgd",
    "adamw_torch_8bit": "adamw_torch_8bit", "adamw_torch_4bit": "adamw_torch_4bit",
}
SCHEDULERS = get_args(LrScheduler)


def _optimizer(v, cfg):
    replaced = _optimizer_under_deepspeed(cfg) if cfg.get("deepspeed") else None
    if replaced is not None:
        return _replaced_optimizer(v, cfg, replaced)
    if isinstance(v, str) and v in OPTIMIZERS:
        return {"training.optimizer": OPTIMIZERS[v]}
    raise NotConverted(f"optimizer {_shown(v)} is not one recipe runs",
                       "recipe runs " + ", ".join(sorted(set(OPTIMIZERS.values()))))


# Optimizers DeepSpeed's CPU Adam stands in for with decoupled weight decay (adamw_mode): torch's AdamW
# and bitsandbytes' 32-bit AdamW; for any other, accelerate asks it for Adam's L2 decay.
_DECOUPLED = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "paged_adamw_32bit")
_ADAM_KNOBS = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}  # DeepSpeed's CPU Adam's own
_SECTION_VALUES = ("lr", "betas", "eps", "weight_decay")


def _replaced_optimizer(v, cfg, replaced: tuple[str, object]) -> dict:
    """Axolotl's optimizer where the DeepSpeed config replaces it (:func:`_optimizer_under_deepspeed`):
    recipe's adamw_torch, which recipe's DeepSpeed strategies run as DeepSpeed's AdamW, when the update
    is the same."""
    how, section = replaced
    if how == "section":
        kind = section.get("type") if isinstance(section, dict) else None
        params = section.get("params") if isinstance(section, dict) else None
        # transformers fills the values written "auto" from the Trainer; one left out is DeepSpeed's default.
        if kind not in ("Adam", "AdamW") or not isinstance(params, dict) or \
                {k: params.get(k) for k in _SECTION_VALUES} != dict.fromkeys(_SECTION_VALUES, "auto"):
            given = params if isinstance(params, dict) else {}
            odd = ", ".join(f"{k} {_shown(given[k]) if k in given else 'left out'}" for k in _SECTION_VALUES
                            if given.get(k) != "auto")
            raise NotConverted(f"the DeepSpeed config's optimizer section ({_shown(kind)}) runs in place of optimizer "
                               f"{_shown(v)}" + (f", its values not all auto ({odd})" if odd else "")
                               + "; recipe runs AdamW with the recipe's values",
                               "make it AdamW with lr, betas, eps and weight_decay all auto, or remove it")
        return {"training.optimizer": "adamw_torch",
                NOTE: f"optimizer {_shown(v)}: the DeepSpeed config's optimizer section runs DeepSpeed's AdamW in its "
                      "place (the Trainer's values): adamw_torch"}
    if not (isinstance(v, str) and v in OPTIMIZERS):
        # accelerate picks DeepSpeed's CPU Adagrad or Lion for those, and recipe knows no other name
        raise NotConverted(f"optimizer {_shown(v)} under ZeRO optimizer offload: recipe runs DeepSpeed's CPU Adam "
                           "there, in place of the optimizers it knows", "use adamw_torch")
    name = v
    if name not in _DECOUPLED and cfg.get("weight_decay", 0.0) != 0:
        raise NotConverted(f"optimizer {name} under ZeRO optimizer offload: accelerate runs DeepSpeed's CPU Adam in "
                           f"its place, with weight decay {cfg['weight_decay']} as an L2 term (not AdamW's)",
                           "set weight_decay: 0.0, or use adamw_torch")
    ignored = [k for k, default in _ADAM_KNOBS.items() if cfg.get(k, default) != default]
    if ignored:
        raise NotConverted(f"optimizer {name} under ZeRO optimizer offload: accelerate hands DeepSpeed's CPU Adam the "
                           f"learning rate and weight decay only, so {', '.join(ignored)} never reached the run",
                           "remove them (the run used 0.9, 0.999 and 1e-8)")
    return {"training.optimizer": "adamw_torch",
            NOTE: f"optimizer {name} under ZeRO optimizer offload: accelerate runs DeepSpeed's CPU Adam in its place "
                  "(fp32 moments in CPU RAM), as recipe's zero_offload does with adamw_torch"}


def _optim_args(v, cfg):
    """transformers' optim_args, the one key recipe has a field for: torchao's bf16_stochastic_round.
    Axolotl passes a mapping on as ``key=value`` pairs, and a string as it is."""
    if isinstance(v, str):
        pairs = [p.split("=", 1) for p in v.replace(" ", "").split(",") if p]
        v = {p[0]: p[1] if len(p) == 2 else None for p in pairs}
    if not isinstance(v, dict):
        raise NotConverted(f"expected a mapping of optimizer arguments, got {_shown(v)}")
    if not v:
        return {}  # no arguments: the optimizer's defaults, as recipe's
    others = sorted(set(v) - {"bf16_stochastic_round"})
    if others:
        raise NotConverted(f"optim_args {others[0]}: recipe passes the optimizer bf16_stochastic_round only",
                           "remove it")
    value = v.get("bf16_stochastic_round")
    on = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}.get(value) \
        if isinstance(value, (bool, str)) else None
    if on is None:
        raise NotConverted(f"bf16_stochastic_round {_shown(value)}: expected true or false")
    return {"training.bf16_stochastic_round": True} if on else {}


def _write_optim_args(doc):
    return {"bf16_stochastic_round": True} if get(doc, "training.bf16_stochastic_round", False) else ABSENT


def _hub_model_id(v, cfg):
    out = {"output.hub_model_id": v, "output.hub_private": False}  # transformers creates it public
    if cfg.get("hub_strategy", "every_save") == "every_save":  # transformers' default
        out[NOTE] = ("hub_strategy every_save: recipe pushes the result once, when the run ends; Axolotl also pushes "
                     "the model at each save on the way (the repository ends the same)")
    return out


def _write_hub_model_id(doc):
    if get(doc, "output.hub_private", False):
        raise NotConverted("hub_private: Axolotl creates a missing repository public, and has no key for a private "
                           "one", "create the repository private on the hub first (it keeps its visibility), then "
                           "set output.hub_private: false")
    return get(doc, "output.hub_model_id")


def _hub_strategy(v, cfg):
    if v in ("end", "every_save") or cfg.get("hub_model_id") is None:
        return {}  # said beside hub_model_id; without one, Axolotl pushes nothing
    raise NotConverted(f"hub_strategy {_shown(v)}: recipe pushes the trained result when the run ends, not its "
                       "checkpoints", "use hub_strategy: end; resume from the run folder's checkpoints")


def _neftune(v, cfg):
    if v == 0:
        return {}  # no noise, as absent
    return {"training.neftune_noise_alpha": v}


def _never_decays(cfg) -> bool:
    """Axolotl's cosine with cosine_min_lr_ratio 1: it decays to the learning rate itself, so after
    the warm-up the rate is constant, held or not (cosine_constant_lr_ratio)."""
    return cfg.get("lr_scheduler", "cosine") == "cosine" and cfg.get("cosine_min_lr_ratio") == 1


_CONSTANT = {"training.lr_scheduler": "constant_with_warmup",
             NOTE: "cosine_min_lr_ratio 1.0: Axolotl's cosine decays to the learning rate itself, a constant rate "
                   "after the warm-up: lr_scheduler constant_with_warmup"}


def _constant_lr_ratio(v, cfg):
    if _never_decays(cfg):
        return _CONSTANT  # held at the floor, which is the peak: the same constant rate
    raise NotConverted("Axolotl's hold-at-the-floor schedule is not supported",
                       "remove cosine_constant_lr_ratio: the cosine then decays to cosine_min_lr_ratio at the end")


def _min_lr_ratio(v, cfg):
    if _never_decays(cfg):
        return _CONSTANT
    if cfg.get("cosine_constant_lr_ratio") is not None:
        raise NotConverted("cosine_min_lr_ratio with cosine_constant_lr_ratio: Axolotl's hold-at-the-floor schedule "
                           "is not supported", "remove cosine_constant_lr_ratio: the cosine then decays to the floor")
    if cfg.get("lr_scheduler", "cosine") not in ("cosine", "rex"):
        return {}  # Axolotl reads it for its cosine and rex schedules only
    if v and cfg.get("lr_quadratic_warmup") is True:
        return {NOTE: "not converted, as Axolotl ignores it beside lr_quadratic_warmup (with a warning): its "
                      "cosine after the quadratic warm-up decays to 0"}
    return {"training.min_lr_ratio": v} if v else {}


def _quadratic_warmup(v, cfg):
    if not isinstance(v, bool):
        raise NotConverted(f"expected true or false, got {_shown(v)}")
    if v and cfg.get("lr_scheduler", "cosine") == "cosine":
        return {"training.warmup_shape": "quadratic"}
    return {}  # Axolotl warms up quadratically under its cosine schedule only


def _scheduler(v, cfg):
    if _never_decays(cfg):
        return _CONSTANT
    if v in SCHEDULERS:
        return {"training.lr_scheduler": v}
    raise NotConverted(f"lr_scheduler {_shown(v)} is not one recipe runs", "use one of " + ", ".join(SCHEDULERS))


def _learning_rate(v, cfg):
    if isinstance(v, str):  # Axolotl takes "2e-4" as text too (YAML 1.1 reads it so)
        try:
            v = float(v)
        except ValueError:
            raise NotConverted(f"{_shown(v)} is not a number") from None
    return {"training.learning_rate": v}


def _epochs(v, cfg):
    # max_steps decides the length when both are set, in Axolotl (and transformers) as in recipe.
    return {} if cfg.get("max_steps") is not None else {"training.epochs": v}


def _write_epochs(doc):
    return get(doc, "training.epochs")


def _precision(v, cfg):
    bf16, fp16 = cfg.get("bf16", "auto"), cfg.get("fp16")
    if bf16 == "auto" and fp16 in (None, False):
        return {"training.precision": "auto"}
    if bf16 is True and fp16 in (None, False):
        return {"training.precision": "bf16"}
    if fp16 is True and bf16 in (None, False, "auto"):
        return {"training.precision": "fp16"}
    if bf16 in (None, False) and fp16 in (None, False):
        return {"training.precision": "pure_fp16" if cfg.get("float16") is True else "fp32"}
    raise NotConverted(f"bf16 {_shown(bf16)} with fp16 {_shown(fp16)} is no precision recipe knows",
                       "set bf16: true, fp16: true, bf16: auto, or both false for fp32")


def _write_bf16(doc):
    return {"auto": "auto", "bf16": True, "fp16": False, "fp32": False, "pure_fp16": False}[
        get(doc, "training.precision")]


def _write_fp16(doc):
    return {"auto": ABSENT, "bf16": ABSENT, "fp16": True, "fp32": False, "pure_fp16": False}[
        get(doc, "training.precision")]


# Axolotl's attention switches and attn_implementation values -> training.attention.
_ATTENTION_KEYS = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager",
                   "flex_attention": "flex_attention"}
# xformers' memory-efficient kernel is what PyTorch's sdpa runs as its memory-efficient backend (it
# was upstreamed): the same memory on every card; recipe does not install xformers.
_XFORMERS_NOTE = "xformers attention -> sdpa, whose memory-efficient kernel is xformers' own (same memory)"


def _attention(key: str) -> Row:
    kernel = _ATTENTION_KEYS.get(key, "sdpa")

    def read(v, cfg):
        if v is False:
            return {}
        if v is not True:
            raise NotConverted(f"expected true or false, got {_shown(v)}")
        if kernel == "flash_attention_2" and _gemma4_hybrid_on(cfg):
            return {}  # gemma4_hybrid_attn_impl says the attention
        return {"training.attention": kernel, **({NOTE: _XFORMERS_NOTE} if key == "xformers_attention" else {})}

    write = (lambda doc: ABSENT) if key == "xformers_attention" else (
        lambda doc: True if get(doc, "training.attention") == kernel else ABSENT)
    return Row(key, ("training.attention",), read, write,
               "attention auto (sdpa) is Axolotl's default, when none of them is set")


def _attention_name(v, cfg):
    names = {"flash": "flash_attention_2", "sdpa": "sdpa", "sdp": "sdpa", "eager": "eager", "xformers": "xformers"}
    if not isinstance(v, str) or v not in names:
        raise NotConverted(f"attention {_shown(v)} is not one recipe runs", "use flash, sdpa, eager or xformers")
    return _attn_implementation(names[v], cfg)


def _attn_implementation(v, cfg):
    if v == "flash_attention_2" and _gemma4_hybrid_on(cfg):
        return {}  # gemma4_hybrid_attn_impl says the attention
    if v in ("flash_attention_2", "sdpa", "eager", "flex_attention"):
        return {"training.attention": v}
    if v in ("flash_attention_3", "kernels-community/vllm-flash-attn3", "kernels-community/flash-attn3"):
        return {"training.attention": "flash_attention_2", NOTE: f"{v} -> flash_attention_2: FlashAttention 3 "
                "(Hopper only) and 2 keep the same memory; recipe runs 2, on every card from compute capability 8.0"}
    if v == "xformers":
        return {"training.attention": "sdpa", NOTE: _XFORMERS_NOTE}
    raise NotConverted(f"attn_implementation {_shown(v)} is not one recipe runs",
                       "use flash_attention_2, flex_attention, sdpa or eager")


# Axolotl's gemma4_hybrid_attn_impl runs FlashAttention 2 on Gemma 4's sliding-window layers and sdpa on
# its global layers, whose 512-wide heads FlashAttention 2 does not take (it pins attn_implementation
# to flash_attention_2). recipe runs sdpa on every layer: the same exact attention, another kernel.
def _gemma4_hybrid_on(cfg) -> bool:
    return cfg.get("gemma4_hybrid_attn_impl") is True


def _gemma4_hybrid(v, cfg):
    if not isinstance(v, bool):
        raise NotConverted(f"expected true or false, got {_shown(v)}")
    if not v:
        return {}
    return {"training.attention": "sdpa",
            NOTE: "FlashAttention 2 on the sliding-window layers and sdpa on the global ones -> sdpa on every "
                  "layer: the same attention; slower, and the sliding layers' mask is a tensor (sequence x "
                  "sequence per row of the batch), which fit-check counts"}


def _flex_compile(v, cfg):
    if not isinstance(v, dict):
        raise NotConverted(f"expected a mapping of torch.compile options, got {_shown(v)}")
    return {NOTE: f"flex_attn_compile_kwargs {_shown(v)}: how torch.compile builds FlexAttention's kernel "
                  "(speed only); recipe runs transformers' own compilation of it"} if v else {}


def _batch_size(v, cfg):
    """Axolotl's older batch_size: micro_batch_size x gradient_accumulation_steps on one GPU."""
    micro = cfg.get("micro_batch_size", 1)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1 and isinstance(micro, int) and micro >= 1):
        raise NotConverted(f"batch_size {_shown(v)}: expected a whole number of examples, 1 or more")
    if "gradient_accumulation_steps" in cfg:
        if v != micro * cfg["gradient_accumulation_steps"]:
            raise NotConverted(f"batch_size {v} is not micro_batch_size x gradient_accumulation_steps",
                               "remove batch_size: the other two say the batch")
        return {}
    if v % micro:
        raise NotConverted(f"batch_size {v} is not a multiple of micro_batch_size {micro}",
                           "write gradient_accumulation_steps instead")
    return {"training.gradient_accumulation_steps": v // micro}


def _save_strategy(v, cfg):
    if v == "steps":
        return {}
    if v == "epoch":
        return {"training.saves_per_epoch": 1}
    if v == "no":
        return {NOTE: "save_strategy no: recipe still saves checkpoints (every save_steps), so that --resume can "
                      "continue a run"}
    raise NotConverted(f"save_strategy {_shown(v)} is not steps, epoch or no")


def _eval_strategy(v, cfg):
    if v == "steps":
        return {}
    if v == "epoch":
        return {"training.evals_per_epoch": 1}
    if v == "no" and not cfg.get("val_set_size"):
        return {}
    raise NotConverted(f"eval_strategy {_shown(v)}: recipe evaluates whenever it holds data out (val_set_size)",
                       "remove it, or val_set_size")


def _evals_per_epoch(v, cfg):
    if not cfg.get("val_set_size") and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return {}  # no held-out data: Axolotl evaluates nothing, whatever the count
    return {"training.evals_per_epoch": v}


def _eot_tokens(v, cfg):
    # Which turns' ends train is the template's business in recipe: each named template, and TRL's
    # marked version of a tokenizer's, keeps the end-of-turn marker inside {% generation %}.
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise NotConverted(f"eot_tokens {_shown(v)}: expected a list of token texts")
    return {NOTE: f"eot_tokens {v}: recipe trains the end-of-turn marker its chat template closes each assistant "
                  "turn with (check it with recipe data --show)"}


def _half_weights(flag: str, precision: str) -> Read:
    """bfloat16: load the weights in that dtype, which recipe does at that precision."""
    def read(v, cfg):
        if v in (False, "auto") or v is True and cfg.get(flag) in (True, "auto"):
            return {}
        raise NotConverted(f"{_shown(v)} without {flag}: true: recipe loads the weights in {precision} at that "
                           "precision only", f"set {flag}: true, or remove it")
    return read


def _float16(v, cfg):
    """float16: Axolotl loads the weights in fp16 unless bf16 decides first (true, or auto on a
    card with bf16); with fp16 it is fp16 mixed precision, and with bf16 auto and fp16 unset it
    trains bf16 where the card has it and fp16 mixed precision elsewhere (its resolve_dtype):
    recipe's fp16, bf16 and auto. With neither, the fp16 weights train without mixed precision:
    recipe's pure_fp16 (which the bf16/fp16 rows say too, _precision)."""
    bf16, fp16 = cfg.get("bf16", "auto"), cfg.get("fp16")
    if v is True and bf16 in (None, False) and fp16 in (None, False):
        return {"training.precision": "pure_fp16"}
    if v in (False, None) or v is True and (fp16 is True or bf16 is True or bf16 == "auto" and fp16 is None):
        return {}
    elsewhere = " on a card without bf16" if bf16 == "auto" else ""
    fp16_said = "no fp16" if fp16 is None else f"fp16 {_shown(fp16)}"
    raise NotConverted(f"{_shown(v)} with bf16 {_shown(bf16)} and {fp16_said}: Axolotl then trains fp16 "
                       f"weights without mixed precision{elsewhere} (no autocast, no loss scaling); recipe's fp16 is "
                       "mixed precision with loss scaling",
                       "set fp16: true (recipe's fp16), or bf16: false (recipe's pure_fp16 on every card)")


def _val_set_size(v, cfg):
    if v == 0:
        return {}
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1:
        raise NotConverted(f"val_set_size {v} is a count of examples; recipe holds out a fraction",
                           "write the fraction it is of your data, e.g. 0.02")
    return {"data.val_fraction": v}


def _eval_steps(v, cfg):
    if not cfg.get("val_set_size") and isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return {}  # no held-out data (test_datasets is reported on its own): Axolotl evaluates nothing
    if isinstance(v, float) and v < 1:
        raise NotConverted(f"eval_steps {v} is a fraction of the run; recipe counts optimizer steps",
                           "write the number of steps")
    return {"training.eval_steps": v}


def _train_on_inputs(v, cfg):
    if isinstance(v, bool):
        return {"data.completion_only_loss": not v}
    raise NotConverted(f"expected true or false, got {_shown(v)}")


def _wandb(field: str) -> Read:
    def read(v, cfg):
        return {} if cfg.get("wandb_mode") == "disabled" else {f"logging.wandb.{field}": v}
    return read


def _wandb_log_model(v, cfg):
    if v is False or v == "false":  # transformers' own value for nothing uploaded, as absent
        return {}
    if v in ("end", "checkpoint"):
        return _wandb("log_model")(v, cfg)
    raise NotConverted(f"wandb_log_model {_shown(v)} is not checkpoint, end or false",
                       "end uploads the result, checkpoint every checkpoint as well; false uploads nothing")


def _wandb_mode(v, cfg):
    if v == "disabled":
        return {}  # no wandb section: recipe starts no W&B run
    if v in ("online", "offline"):
        return {"logging.wandb.mode": v}
    raise NotConverted(f"wandb_mode {_shown(v)} is not online, offline or disabled")


def _fsdp_checkpoints(cfg) -> bool:
    fsdp = cfg.get("fsdp_config") if isinstance(cfg.get("fsdp_config"), dict) else {}
    return any(fsdp.get(k) is True for k in ("fsdp_activation_checkpointing", "activation_checkpointing"))


def _gradient_checkpointing(v, cfg):
    if v is False and _fsdp_checkpoints(cfg):
        return {}  # FSDP checkpoints the layers itself: fsdp_config says gradient_checkpointing true
    if isinstance(v, bool):
        return {"training.gradient_checkpointing": v}
    if v == "offload":
        # Axolotl's own offloaded checkpointing keeps each layer's input in host memory; TRL's
        # activation offloading does that to what checkpointing saves (those inputs) as well.
        return {"training.gradient_checkpointing": True, "training.activation_offloading": True,
                NOTE: "gradient_checkpointing offload -> checkpointing with TRL's activation offloading (each "
                      "layer's saved input in host memory, as Axolotl's)"}
    raise NotConverted(f"gradient_checkpointing {_shown(v)}: recipe offloads to host memory, not to disk",
                       "use true, false or offload")


def _activation_offloading(v, cfg):
    if isinstance(v, bool):
        return {"training.activation_offloading": True} if v else {}
    if v == "legacy":  # Axolotl's earlier implementation of the same offloading
        return {"training.activation_offloading": True,
                NOTE: "activation_offloading legacy -> TRL's activation offloading (the same activations in host "
                      "memory)"}
    raise NotConverted(f"activation_offloading {_shown(v)}: expected true, false or legacy")


def _use_reentrant(v, cfg):
    if isinstance(v, dict) and set(v) <= {"use_reentrant"} and v.get("use_reentrant", False) is False:
        return {}  # what TRL and transformers use
    if v == {"use_reentrant": True}:
        return {NOTE: "use_reentrant true: recipe checkpoints non-reentrant, transformers' way (the same memory "
                      "and result)"}
    raise NotConverted(f"{_shown(v)}: recipe checkpoints with use_reentrant false and no other option",
                       "remove it, or write {use_reentrant: false}")


_SWANLAB_SETTINGS = ("swanlab_project", "swanlab_experiment_name", "swanlab_description", "swanlab_mode",
                     "swanlab_workspace", "swanlab_api_host", "swanlab_web_host", "swanlab_log_model",
                     "swanlab_log_completions")
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
# Cut cross-entropy never materializes the logits; neither does recipe's loss (TRL's chunked LM
# head), so the plugin and its switch change no memory and no loss: read as nothing.
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
# The hub's kernels (use_kernels) for the model's layers: speed only, said as a note.
KERNELS_PLUGIN = "axolotl.integrations.kernels.KernelsPlugin"
# SwanLab's experiment tracking: logging only; use_swanlab says it, the plugin alone changes nothing.
SWANLAB_PLUGIN = "axolotl.integrations.swanlab.SwanLabPlugin"
# Axolotl's switch for each of Liger's layer kernels, by recipe's kernel name (training.liger_kernel:
# true is all four); liger_swiglu is the older name of the GLU one.
LIGER_SWITCHES = {"liger_rope": "rope", "liger_rms_norm": "rms_norm", "liger_glu_activation": "glu",
                  "liger_layer_norm": "layer_norm"}
LIGER_LAYERS = tuple(LIGER_SWITCHES)


def _liger_plugin(cfg) -> bool:
    return isinstance(cfg.get("plugins"), list) and LIGER_PLUGIN in cfg["plugins"]


def _liger_kernels(cfg) -> Any:
    """training.liger_kernel for the whole config: true for every kernel, the list of those on, or
    ABSENT for none; Axolotl reads the switches through its plugin only, absent ones as off."""
    if not _liger_plugin(cfg):
        return ABSENT
    glu = cfg.get("liger_glu_activation")
    switches = dict(cfg, liger_glu_activation=cfg.get("liger_swiglu") if glu is None else glu)
    on = [kernel for key, kernel in LIGER_SWITCHES.items() if switches.get(key) is True]
    return True if len(on) == len(LIGER_SWITCHES) else on or ABSENT


def _plugins(v, cfg):
    if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
        raise NotConverted(f"expected a list of plugin names, got {_shown(v)}")
    others = [p for p in v if p not in (LIGER_PLUGIN, CCE_PLUGIN, KERNELS_PLUGIN, SWANLAB_PLUGIN)]
    if others:
        raise NotConverted(f"plugin {others[0]!r} is not supported: recipe runs Liger's kernels and a loss that "
                           "never materializes the logits (as cut cross-entropy) only",
                           f"remove it; keep {LIGER_PLUGIN} with its liger_* switches")
    if KERNELS_PLUGIN in v:
        return {NOTE: "KernelsPlugin: the hub's kernels for the model's layers; recipe runs its own layers "
                      "(the same result)"}
    return {}  # a plugin alone changes nothing: its liger_* keys say which kernels


def _liger_layer(v, cfg):
    if not isinstance(v, bool):
        raise NotConverted(f"expected true or false, got {_shown(v)}")
    kernels = _liger_kernels(cfg)  # every switch reads the same value, from all of them
    return {} if kernels is ABSENT else {"training.liger_kernel": kernels}


def _write_liger_switch(kernel: str) -> Write:
    def write(doc):
        on = get(doc, "training.liger_kernel", False)
        return ABSENT if on is False else (on is True or kernel in on)
    return write


def _liger_loss(v, cfg):
    if isinstance(v, bool):
        return {}  # recipe's loss is TRL's chunked head, which never materializes the logits either way
    raise NotConverted(f"expected true or false, got {_shown(v)}")


def _write_liger_on(doc):
    return True if get(doc, "training.liger_kernel", False) is not False else ABSENT


def _early_stopping(v, cfg):
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return {"training.early_stopping_patience": v}
    raise NotConverted(f"early_stopping_patience {_shown(v)}: expected a whole number of evaluations, 1 or more")


def _load_best(v, cfg):
    # recipe keeps the best checkpoint exactly when it stops early (as Axolotl does then by default).
    if v is (cfg.get("early_stopping_patience") is not None):
        return {}
    raise NotConverted(f"load_best_model_at_end {_shown(v)}: recipe keeps the best checkpoint's weights exactly when "
                       "early_stopping_patience is set", "remove it")


# Axolotl's template names (its ChatTemplate enum) for the templates recipe names in data.chat_template;
# jinja is the template written in chat_template_jinja on both sides.
CHAT_TEMPLATES = {"tokenizer_default": "tokenizer", "chatml": "chatml", "llama3": "llama3", "mistral_v1": "mistral",
                  "gemma": "gemma", "phi_3": "phi", "jinja": "jinja"}
# Axolotl's other names for a format recipe writes the same way (read only; recipe writes the name above).
TEMPLATE_ALIASES = {"gemma3": "gemma", "gemma3_text": "gemma", "gemma3n": "gemma"}
# Axolotl's copies of one model family's own template: that model's tokenizer renders the same.
MODEL_TEMPLATES = ("mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "cohere", "command_a",
                   "llama3_2_vision", "llama4", "phi_35", "phi_4", "deepseek_v2", "deepseek_v3", "jamba", "qwen_25",
                   "qwen3", "qwen3_5", "falcon_h1", "exaone", "gemma4", "gemma4_unified")


def _chat_template(v, cfg):
    if v == "jinja" and not cfg.get("chat_template_jinja"):
        raise NotConverted("chat_template jinja without chat_template_jinja", "add the template's text")
    if isinstance(v, str) and v in TEMPLATE_ALIASES:
        return {"data.chat_template": TEMPLATE_ALIASES[v]}
    if isinstance(v, str) and v in MODEL_TEMPLATES:
        return {NOTE: f"chat template {v} is that model family's own: recipe renders with the tokenizer's template "
                      "(tokenizer, the default), which for that model is the same"}
    if isinstance(v, str) and v in CHAT_TEMPLATES:
        # tokenizer_default is recipe's default too: a converted recipe leaves it out.
        return {} if CHAT_TEMPLATES[v] == "tokenizer" else {"data.chat_template": CHAT_TEMPLATES[v]}
    raise NotConverted(f"chat template {_shown(v)} is not one recipe names",
                       "recipe names " + ", ".join(CHAT_TEMPLATES) + " (written as tokenizer, chatml, llama3, mistral, "
                       "gemma, phi, jinja)")


def _write_chat_template(doc):
    named = get(doc, "data.chat_template")
    return ABSENT if named in (ABSENT, "tokenizer") else {v: k for k, v in CHAT_TEMPLATES.items()}[named]


def _chat_template_jinja(v, cfg):
    if cfg.get("chat_template") != "jinja":
        raise NotConverted(f"chat_template_jinja with chat_template {_shown(cfg.get('chat_template'))}: Axolotl "
                           "reads it with chat_template: jinja only", "remove it, or set chat_template: jinja")
    if not isinstance(v, str) or not v.strip():
        raise NotConverted(f"chat_template_jinja {_shown(v)}: not a template's text")
    # As Axolotl reads it: the text of the file it names when there is one, else the template itself.
    text = _small_file(v, "chat template file") if "\n" not in v else None
    if text is not None:
        return {"data.chat_template_jinja": text, NOTE: f"chat_template_jinja: the text of {v}, written out"}
    return {"data.chat_template_jinja": v}


def _dataset_chat_template(v, entry):
    # Axolotl lets a dataset override the template; recipe has one for all conversations. One that is
    # the tokenizer's own sets recipe's (the default) explicitly, so that a top-level template or
    # another dataset's that says otherwise is reported as a clash (translate._apply), not lost.
    if v == "tokenizer_default":
        return {"data.chat_template": "tokenizer"}
    if isinstance(v, str) and v in MODEL_TEMPLATES:
        return {"data.chat_template": "tokenizer", NOTE: f"chat template {v} is that model family's own: recipe "
                                                         "renders with the tokenizer's template, which for that "
                                                         "model is the same"}
    raise NotConverted(f"a chat template per dataset ({_shown(v)}): recipe renders every conversation with "
                       "data.chat_template", "move it to the top-level chat_template")


# Axolotl's shipped deepspeed_configs/, by file name: (ZeRO stage, recipe's zero_offload). Read from
# the public files; *_torch_compile (torch.compile) have no recipe equivalent.
AXOLOTL_DEEPSPEED = {"zero1.json": (1, "none"), "zero2.json": (2, "optimizer"), "zero3.json": (3, "none"), "zero3_bf16.json": (3, "none"),
                     "zero3_cpuoffload.json": (3, "optimizer_and_parameters"),
                     "zero3_bf16_cpuoffload_all.json": (3, "optimizer_and_parameters"),
                     "zero3_bf16_cpuoffload_params.json": (3, "parameters")}
# Of those, the ones that set zero_force_ds_cpu_optimizer false: their offloaded step keeps Axolotl's
# optimizer (see _optimizer_under_deepspeed).
AXOLOTL_DEEPSPEED_KEEPS_OPTIMIZER = ("zero3_bf16_cpuoffload_all.json",)
_FILE_LIMIT = 1 << 20  # a DeepSpeed config or a chat template is a few KiB


def _deepspeed(v, cfg):
    if isinstance(v, str):
        return _deepspeed_file(v)
    zero = v.get("zero_optimization") if isinstance(v, dict) else None
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage not in (1, 2, 3) or isinstance(stage, bool):
        raise NotConverted(f"DeepSpeed ZeRO stage {_shown(stage)}: recipe runs stage 2 or 3",
                           "set zero_optimization.stage to 2 or 3")
    devices = {k: (zero.get(k) or {}).get("device", "none") if isinstance(zero.get(k) or {}, dict) else "?"
               for k in ("offload_optimizer", "offload_param")}
    offload = {("none", "none"): "none", ("cpu", "none"): "optimizer", ("none", "cpu"): "parameters",
               ("cpu", "cpu"): "optimizer_and_parameters"}.get((devices["offload_optimizer"], devices["offload_param"]))
    if offload is None:
        raise NotConverted(f"DeepSpeed offload {devices}: recipe offloads the optimizer, the parameters or both "
                           "to the CPU", "use device cpu, or none")
    return _zero(stage, offload)


def _deepspeed_row(v, cfg):
    """The strategy, and where no optimizer key says which optimizer DeepSpeed replaces, Axolotl's
    default AdamW checked as the optimizer row checks a named one."""
    out = _deepspeed(v, cfg)
    replaced = _optimizer_under_deepspeed(cfg) if "optimizer" not in cfg else None
    if replaced is None:
        return out
    optimizer = _replaced_optimizer("adamw_torch", cfg, replaced)
    notes = "; ".join(n for n in (out.pop(NOTE, None), optimizer.pop(NOTE)) if n)
    return {**out, **optimizer, NOTE: notes}


def _zero(stage: int, offload: str) -> dict:
    """recipe's DeepSpeed strategy for a ZeRO stage; stage 1 runs as 2, said."""
    out = {"distributed.strategy": f"deepspeed_zero{max(stage, 2)}", "distributed.zero_offload": offload}
    if stage == 1:
        # ZeRO-2 shards the gradients as well as ZeRO-1's optimizer state: the same training, less memory.
        out[NOTE] = "ZeRO stage 1 -> deepspeed_zero2, recipe's first stage (it shards the gradients too: the same " \
                    "training, less memory per GPU)"
    return out


def _small_file(name: str, what: str) -> Optional[str]:
    """The text of a file a key names, relative to where Axolotl (and recipe convert) runs; None when
    no regular file of at most _FILE_LIMIT bytes is there (a FIFO or a device is never opened)."""
    path = paths.expanded(name)
    try:
        found = path.is_file() and path.stat().st_size <= _FILE_LIMIT
        return path.read_text(encoding="utf-8") if found else None
    except (OSError, UnicodeDecodeError) as e:
        raise NotConverted(f"{what} {name!r} cannot be read: {e}") from e
    except ValueError:  # a NUL in the name
        return None


def _deepspeed_config(v) -> Optional[dict]:
    """The DeepSpeed config deepspeed: holds (inline, or the file it names when that is here); None
    when it cannot be read here (one of Axolotl's shipped configs by its name, or none)."""
    if isinstance(v, dict):
        return v
    try:
        text = _small_file(v, "DeepSpeed config file") if isinstance(v, str) else None
        config = json.loads(text) if text is not None else None
    except (NotConverted, ValueError):
        return None  # the deepspeed key reports it
    return config if isinstance(config, dict) else None


def _shipped_deepspeed(name) -> Optional[str]:
    """The file name of one of Axolotl's shipped deepspeed_configs/ that ``name`` names by its path,
    or None."""
    path = paths.expanded(name) if isinstance(name, str) and name else None
    return path.name if path is not None and path.parent.name == "deepspeed_configs" and \
        path.name in AXOLOTL_DEEPSPEED else None


def _optimizer_under_deepspeed(cfg) -> Optional[tuple[str, object]]:
    """What steps the weights where a DeepSpeed config replaces Axolotl's optimizer, or None where
    it does not: ("section", the config's own optimizer section, which the Trainer hands DeepSpeed in
    its place), or ("cpu_adam", None): ZeRO-Offload of the optimizer, where accelerate swaps any
    optimizer for DeepSpeed's CPU Adam with its learning rate and weight decay alone
    (accelerate/utils/deepspeed.py map_pytorch_optim_to_deepspeed) unless the config sets
    zero_force_ds_cpu_optimizer false."""
    v = cfg.get("deepspeed")
    config = _deepspeed_config(v)
    if config is None:
        shipped = _shipped_deepspeed(v)
        offloads = shipped is not None and AXOLOTL_DEEPSPEED[shipped][1] in ("optimizer", "optimizer_and_parameters")
        return ("cpu_adam", None) if offloads and shipped not in AXOLOTL_DEEPSPEED_KEEPS_OPTIMIZER else None
    if "optimizer" in config:
        return "section", config["optimizer"]
    zero = config.get("zero_optimization")
    offload = zero.get("offload_optimizer") if isinstance(zero, dict) else None
    offloads = isinstance(offload, dict) and offload.get("device", "none") != "none"
    return ("cpu_adam", None) if offloads and config.get("zero_force_ds_cpu_optimizer", True) is not False else None


def _deepspeed_file(name: str) -> dict:
    """A DeepSpeed config named by its path, relative to where Axolotl (and recipe convert) runs: read
    when it is here; one of Axolotl's shipped configs by its name when it is not."""
    path = paths.expanded(name)
    text = _small_file(name, "DeepSpeed config file")
    if text is not None:
        try:
            return _deepspeed(json.loads(text), {})
        except ValueError as e:
            raise NotConverted(f"DeepSpeed config file {name!r} is not JSON: {e}") from e
    if _shipped_deepspeed(name) is not None:
        stage, offload = AXOLOTL_DEEPSPEED[path.name]
        out = _zero(stage, offload)
        staged = f"; {out[NOTE]}" if NOTE in out else ""
        return {**out, NOTE: f"{name} is not here: read as Axolotl's shipped deepspeed_configs/{path.name} "
                             f"(ZeRO-{stage}, offload {offload}){staged}"}
    raise NotConverted(f"DeepSpeed config file {name!r} is not here, and is not one of Axolotl's shipped "
                       "deepspeed_configs/", "run recipe convert where the file is, or paste its zero_optimization "
                       "block under deepspeed: (Axolotl takes a mapping too)")


def _write_deepspeed(doc):
    strategy = get(doc, "distributed.strategy", "none")
    if not strategy.startswith("deepspeed_zero"):
        return ABSENT
    offload = get(doc, "distributed.zero_offload", "none")
    zero: dict = {"stage": int(strategy[-1])}
    if offload in ("optimizer", "optimizer_and_parameters"):
        zero["offload_optimizer"] = {"device": "cpu"}
    if offload in ("parameters", "optimizer_and_parameters"):
        zero["offload_param"] = {"device": "cpu"}
    if offload in ("optimizer", "optimizer_and_parameters"):
        # As recipe's own config (train/launch.py): DeepSpeed's AdamW with the Trainer's values. Without
        # the section accelerate would swap in its CPU Adam with the learning rate and weight decay alone.
        return {"zero_optimization": zero, "optimizer": {"type": "AdamW", "params": {
            "lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}}
    return {"zero_optimization": zero}


# fsdp_config values that are what recipe's FSDP2 full sharding does. Axolotl reads each key with
# or without its fsdp_ prefix (the FSDP2 documentation writes them without). limit_all_gathers is
# FSDP1's rate limit on prefetching, on by default there; FSDP2 bounds it by design. The final
# model is saved whole (final_state_dict_type FULL_STATE_DICT), as recipe saves it.
_FSDP_AS_RECIPE = {"version": (1, 2), "sharding_strategy": ("FULL_SHARD",), "reshard_after_forward": (True,),
                   "auto_wrap_policy": ("TRANSFORMER_BASED_WRAP",), "state_dict_type": (
                       "FULL_STATE_DICT", "SHARDED_STATE_DICT"), "use_orig_params": (True, False),
                   "sync_module_states": (True,), "cpu_ram_efficient_loading": (True, False),
                   "limit_all_gathers": (True,), "activation_checkpointing": (True, False),
                   "backward_prefetch": ("BACKWARD_PRE",), "forward_prefetch": (False,),
                   "final_state_dict_type": ("FULL_STATE_DICT",)}


def _fsdp_config(v, cfg):
    if not isinstance(v, dict):
        raise NotConverted(f"expected a mapping, got {_shown(v)}")
    found = {str(key).removeprefix("fsdp_"): (key, value) for key, value in v.items()}
    for name, (key, value) in found.items():
        if name == "offload_params" and isinstance(value, bool) or name == "transformer_layer_cls_to_wrap":
            continue
        if not any(value == ok and type(value) is type(ok) for ok in _FSDP_AS_RECIPE.get(name, ())):  # True is not 1
            raise NotConverted(f"fsdp_config.{key} {_shown(value)}: recipe shards fully with FSDP2",
                               "remove it, or use a value of " + ", ".join(f"fsdp_{k}" for k in _FSDP_AS_RECIPE))
    out = {"distributed.strategy": "fsdp", "distributed.fsdp_offload": found.get("offload_params", (0, False))[1]}
    if found.get("activation_checkpointing", (0, False))[1]:  # FSDP's wrapper for what the trainer does itself
        out["training.gradient_checkpointing"] = True
    version = found.get("version", (0, cfg.get("fsdp_version", 1)))[1]
    if version == 1:
        out[NOTE] = "FSDP1 full sharding -> recipe's FSDP2 full sharding (the same share of weights, gradients " \
                    "and optimizer state per GPU)"
    return out


def _fsdp_list(v, cfg):
    # full_shard and auto_wrap, in any order; auto_wrap alone leaves the sharding to fsdp_config
    if isinstance(v, list) and v and set(v) <= {"full_shard", "auto_wrap"} and (
            "full_shard" in v or isinstance(cfg.get("fsdp_config"), dict)):
        return {}
    raise NotConverted(f"fsdp {_shown(v)}: recipe shards fully with FSDP2", "use [full_shard, auto_wrap]")


def _write_fsdp(doc):
    if get(doc, "distributed.strategy", "none") != "fsdp":
        return ABSENT
    return {"fsdp_version": 2, "fsdp_offload_params": get(doc, "distributed.fsdp_offload", False)}


def _shown(v) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return repr(v)[:60]


TOP_ROWS: tuple[Row, ...] = (
    _row("base_model", "model.id", "a local folder is relative to where Axolotl runs; written relative to the recipe"),
    _row("revision_of_model", "model.revision"),
    Row("model_revision", ("model.revision",), lambda v, cfg: {"model.revision": v}, lambda doc: ABSENT,
        "older name of revision_of_model"),
    _row("tokenizer_config", "model.tokenizer", "a tokenizer from another repository (hub id or local folder, "
         "relative to where Axolotl runs; written relative to the recipe); Axolotl's default, base_model, is "
         "recipe's absent"),
    Row("tokenizer_use_mistral_common", ("model.tokenizer_backend",),
        _sets_when_true("model.tokenizer_backend", "mistral_common"),
        lambda doc: True if get(doc, "model.tokenizer_backend") == "mistral_common" else ABSENT,
        "true -> model.tokenizer_backend mistral_common: Mistral's own tokenizer (tekken.json, mistral-common)"),
    Row("trust_remote_code", ("model.trust_remote_code",), lambda v, cfg: {"model.trust_remote_code": v},
        lambda doc: True if get(doc, "model.trust_remote_code") else ABSENT),
    Row("experts_implementation", ("model.experts_implementation",), _experts_implementation,
        lambda doc: get(doc, "model.experts_implementation"), "transformers' experts kernels; Axolotl's scattermoe and "
        "sonicmoe are not among them"),
    Row("llama4_linearized_experts", ("model.linearized_experts",),
        _sets_when_true("model.linearized_experts", True),
        lambda doc: True if get(doc, "model.linearized_experts") else ABSENT,
        "true -> model.linearized_experts: Llama 4's experts as one linear layer each, as Axolotl's linearized "
        "checkpoints store them"),
    Row("model_config", tuple(_ROUTER.values()), _model_config, _write_model_config,
        "output_router_logits and router_aux_loss_coef only: a mixture of experts' load-balancing loss"),
    Row("resize_token_embeddings_to_32x", ("model.pad_vocab_to_multiple_of",),
        _sets_when_true("model.pad_vocab_to_multiple_of", 32), _write_vocab_32x,
        "true -> model.pad_vocab_to_multiple_of 32: the embedding grows to the tokens rounded up to 32 rows where "
        "it has fewer, as Axolotl resizes"),
    Row("adapter", ("method",), _adapter, _write_adapter, "lora + load_in_4bit/8bit and qlora become method qlora"),
    Row("load_in_4bit", ("quantization.bits",), _load_in(4),
        lambda doc: True if get(doc, "quantization.bits") == 4 else ABSENT),
    Row("load_in_8bit", ("quantization.bits",), _load_in(8),
        lambda doc: True if get(doc, "quantization.bits") == 8 else ABSENT),
    Row("bnb_config_kwargs", tuple(_BNB.values()), _bnb_kwargs, _write_bnb,
        "Axolotl's 4-bit defaults (nf4, double quant) are recipe's"),
    Row("quantize_moe_experts", ("quantization.moe_experts",),
        lambda v, cfg: {"quantization.moe_experts": True} if v is True else _only(False, why="expected true or false")(v, cfg),
        lambda doc: True if get(doc, "quantization.moe_experts") is True else ABSENT,
        "a mixture of experts' fused expert weights quantized after loading, in 4 bits"),
    Row("lora_r", ("lora.r",), _lora_only("lora.r"), lambda doc: get(doc, "lora.r")),
    Row("lora_alpha", ("lora.alpha",), _lora_only("lora.alpha"), lambda doc: get(doc, "lora.alpha")),
    Row("lora_dropout", ("lora.dropout",), _lora_only("lora.dropout"), lambda doc: get(doc, "lora.dropout"),
        "Axolotl's default is 0.0, recipe's 0.05: written explicitly"),
    Row("peft_use_rslora", ("lora.use_rslora",), _lora_only("lora.use_rslora"), lambda doc: get(doc, "lora.use_rslora")),
    Row("peft_use_dora", ("lora.use_dora",), _lora_only("lora.use_dora"), lambda doc: get(doc, "lora.use_dora"),
        "fit-check does not estimate DoRA's memory yet, and says so"),
    Row("lora_modules_to_save", ("lora.modules_to_save",), _modules_to_save,
        lambda doc: get(doc, "lora.modules_to_save", []) or ABSENT, "trained in full beside the adapters"),
    Row("lora_target_linear", ("lora.target_modules",), _targets_linear,
        lambda doc: True if get(doc, "lora.target_modules") == "all-linear" else ABSENT),
    Row("lora_target_modules", ("lora.target_modules",), _target_modules, _write_targets,
        "a string that is not a name is peft's regular expression of full names: lora.target_modules.pattern; "
        "the 'attention' shorthand has no Axolotl spelling"),
    Row("lora_target_parameters", ("lora.target_parameters",), _target_parameters,
        lambda doc: get(doc, "lora.target_parameters", []) or ABSENT, "adapters on parameters: a mixture of experts' "
        "fused experts, which take no dropout (the linear adapters take lora_dropout, as in Axolotl)"),
    # The entries are read and written with DATASET_ROWS; the list takes its place in the file here.
    Row("datasets", ("data.datasets",), lambda v, cfg: {}, lambda doc: [], "each entry: DATASET_ROWS"),
    _row("sequence_len", "data.max_seq_length", "Axolotl's default is 512, recipe's 2048: written explicitly"),
    _row("sample_packing", "data.packing"),
    Row("train_on_inputs", ("data.completion_only_loss",), _train_on_inputs,
        lambda doc: not get(doc, "data.completion_only_loss")),
    Row("val_set_size", ("data.val_fraction",), _val_set_size, lambda doc: get(doc, "data.val_fraction")),
    Row("chat_template", ("data.chat_template",), _chat_template, _write_chat_template,
        "tokenizer_default -> tokenizer, mistral_v1 -> mistral, phi_3 -> phi, gemma3 (and gemma3_text, gemma3n) -> "
        "gemma; recipe writes each template from the public format: llama3 does not trim turns, gemma folds a "
        "system turn into the next user turn (Gemma 3's way)"),
    Row("chat_template_jinja", ("data.chat_template_jinja",), _chat_template_jinja,
        lambda doc: get(doc, "data.chat_template_jinja"), "the template's text (a path to a template file is refused)"),
    _row("micro_batch_size", "training.micro_batch_size"),
    _row("gradient_accumulation_steps", "training.gradient_accumulation_steps"),
    Row("num_epochs", ("training.epochs",), _epochs, _write_epochs, "ignored when max_steps is set, as in Axolotl"),
    _row("max_steps", "training.max_steps"),
    Row("learning_rate", ("training.learning_rate",), _learning_rate, lambda doc: get(doc, "training.learning_rate")),
    Row("lr_scheduler", ("training.lr_scheduler",), _scheduler, lambda doc: get(doc, "training.lr_scheduler")),
    Row("lr_quadratic_warmup", ("training.warmup_shape",), _quadratic_warmup,
        lambda doc: True if get(doc, "training.warmup_shape") == "quadratic" else ABSENT,
        "Axolotl reads it with lr_scheduler cosine (its default) only, and then ignores cosine_min_lr_ratio"),
    _row("warmup_ratio", "training.warmup_ratio", "Axolotl warms up for 0 steps by default: written explicitly"),
    _row("warmup_steps", "training.warmup_steps"),
    _row("saves_per_epoch", "training.saves_per_epoch"),
    Row("evals_per_epoch", ("training.evals_per_epoch",), _evals_per_epoch,
        lambda doc: get(doc, "training.evals_per_epoch"), "0 without held-out data: nothing to evaluate, left out"),
    _row("weight_decay", "training.weight_decay"),
    _row("max_grad_norm", "training.max_grad_norm"),
    Row("optimizer", ("training.optimizer",), _optimizer, lambda doc: get(doc, "training.optimizer"),
        "adamw_torch_fused, adamw_hf -> adamw_torch (same update, same memory); adamw_bnb_8bit -> adamw_8bit"),
    Row("optim_args", ("training.bf16_stochastic_round",), _optim_args, _write_optim_args,
        "bf16_stochastic_round only (torchao's AdamW), a mapping or transformers' key=value string"),
    Row("qat", ("training.qat",), _qat, _write_qat, "int4 weights, int8 or no input rounding; the output head is "
        "left as is (TRL's chunked loss reads its weight directly), said"),
    Row("unfrozen_parameters", ("training.unfrozen_parameters",), _unfrozen, _write_unfrozen,
        "full fine-tuning of the parameters they name; Axolotl's dots are literal (but in '.+'), written \\. here"),
    Row("gradient_checkpointing", ("training.gradient_checkpointing",), _gradient_checkpointing,
        lambda doc: get(doc, "training.gradient_checkpointing"), "Axolotl's default is false: written explicitly"),
    Row("activation_offloading", ("training.activation_offloading",), _activation_offloading,
        lambda doc: get(doc, "training.activation_offloading") or ABSENT, "TRL's activation offloading"),
    Row("gradient_checkpointing_kwargs", (), _use_reentrant, lambda doc: ABSENT, "use_reentrant: false only"),
    Row("bf16", ("training.precision",), _precision, _write_bf16, "with fp16: auto/bf16/fp16/fp32"),
    Row("fp16", ("training.precision",), lambda v, cfg: _precision(v, cfg) if "bf16" not in cfg else {},
        _write_fp16, "read with bf16"),
    *(_attention(key) for key in (*_ATTENTION_KEYS, "xformers_attention")),
    _row("tf32", "training.tf32", "TF32 where the card has it (compute capability 8.0+); recipe run says it changes "
         "nothing elsewhere"),
    Row("flex_attn_compile_kwargs", (), _flex_compile, lambda doc: ABSENT,
        "torch.compile's options for FlexAttention: speed only, said"),
    Row("attn_implementation", ("training.attention",), _attn_implementation, lambda doc: ABSENT,
        "transformers' name for the kernel, the newer spelling of the switches; xformers -> sdpa, as its switch"),
    Row("gemma4_hybrid_attn_impl", ("training.attention",), _gemma4_hybrid, lambda doc: ABSENT,
        "FlashAttention 2 beside sdpa on Gemma 4 -> sdpa on every layer, said"),
    _row("seed", "training.seed"),
    _row("logging_steps", "training.logging_steps"),
    _row("save_steps", "training.save_steps"),
    _row("save_total_limit", "training.save_total_limit"),
    Row("eval_steps", ("training.eval_steps",), _eval_steps, lambda doc: get(doc, "training.eval_steps")),
    Row("early_stopping_patience", ("training.early_stopping_patience",), _early_stopping,
        lambda doc: get(doc, "training.early_stopping_patience"), "on eval_loss; the best checkpoint is the result"),
    Row("load_best_model_at_end", (), _load_best,
        lambda doc: True if get(doc, "training.early_stopping_patience") is not ABSENT else ABSENT,
        "true exactly with early_stopping_patience"),
    _no_effect_when("eval_loss", "loss", why="recipe's early stopping watches eval_loss")("metric_for_best_model"),
    _no_effect_when(False, why="a lower eval_loss is better")("greater_is_better"),
    Row("plugins", (), _plugins, lambda doc: [LIGER_PLUGIN] if _write_liger_on(doc) is True else ABSENT,
        f"{LIGER_PLUGIN} and cut cross-entropy's; the liger_* switches say which kernels"),
    *(Row(key, ("training.liger_kernel",), _liger_layer, _write_liger_switch(kernel),
          f"-> {kernel} in training.liger_kernel (true: all four)") for key, kernel in LIGER_SWITCHES.items()),
    Row("liger_swiglu", ("training.liger_kernel",), _liger_layer, lambda doc: ABSENT,
        "older name of liger_glu_activation"),
    Row("liger_fused_linear_cross_entropy", (), _liger_loss, _write_liger_on,
        "recipe's loss (TRL's chunked head) never materializes the logits, with or without it"),
    Row("liger_cross_entropy", (), _liger_loss, lambda doc: ABSENT, "recipe's loss is TRL's chunked head either way"),
    Row("cut_cross_entropy", (), _liger_loss, lambda doc: ABSENT,
        "recipe's loss is TRL's chunked head, which never materializes the logits either way"),
    Row("wandb_project", ("logging.wandb.project",), _wandb("project"), lambda doc: get(doc, "logging.wandb.project")),
    Row("wandb_entity", ("logging.wandb.entity",), _wandb("entity"), lambda doc: get(doc, "logging.wandb.entity")),
    Row("wandb_name", ("logging.wandb.run_name",), _wandb("run_name"), lambda doc: get(doc, "logging.wandb.run_name")),
    Row("wandb_mode", ("logging.wandb.mode",), _wandb_mode, lambda doc: get(doc, "logging.wandb.mode")),
    Row("wandb_log_model", ("logging.wandb.log_model",), _wandb_log_model,
        lambda doc: get(doc, "logging.wandb.log_model"), "false is nothing uploaded, as absent"),
    _row("output_dir", "output.dir", "relative to where Axolotl runs, as recipe's output.dir"),
    Row("hub_model_id", ("output.hub_model_id", "output.hub_private"), _hub_model_id, _write_hub_model_id,
        "the repository the result is pushed to, created public as Axolotl creates it (hub_private: false)"),
    Row("hub_strategy", (), _hub_strategy, lambda doc: "end" if get(doc, "output.hub_model_id") is not ABSENT else ABSENT,
        "end, or every_save (said: recipe pushes at the end only); written end, which is what recipe does"),
    Row("deepspeed", ("distributed.strategy", "distributed.zero_offload", "training.optimizer"), _deepspeed_row,
        _write_deepspeed,
        "an inline config with zero_optimization stage 2 or 3; the launch (processes, nodes) is not Axolotl's "
        "config: it travels in the header comment"),
    Row("fsdp_config", ("distributed.strategy", "distributed.fsdp_offload"), _fsdp_config, _write_fsdp,
        "FSDP2 full sharding"),
    Row("fsdp_version", (), _only(1, 2, why="recipe shards with FSDP2"), lambda doc: ABSENT,
        "the top-level spelling of fsdp_config.fsdp_version; FSDP1 is converted to FSDP2 with a note"),
    Row("fsdp", (), _fsdp_list, lambda doc: ABSENT, "the older list form; fsdp_config says the rest"),
    # Keys that change nothing recipe trains.
    _ignored("base_model_config", "the model's config.json is read from the model"),
    _ignored("model_type", "AutoModelForCausalLM picks the class from config.json"),
    Row("cls_model_config", (), _cls_model_config, lambda doc: ABSENT,
        "the config class: only the base's own (Gemma3TextConfig on a text-only Gemma 3), which changes nothing"),
    _ignored("model_config_type", "Axolotl sets it from the model's config.json over what the file says (its "
             "normalize_config); recipe reads config.json too"),
    _ignored("tokenizer_type", "AutoTokenizer picks the model's tokenizer class"),
    _ignored("is_llama_derived_model", "internal hint; the model type comes from config.json"),
    _ignored("is_mistral_derived_model", "internal hint; the model type comes from config.json"),
    _ignored("is_qwen_derived_model", "internal hint; the model type comes from config.json"),
    _ignored("is_falcon_derived_model", "internal hint; the model type comes from config.json"),
    _ignored("strict", "how Axolotl's command line overrides the file; recipe --set is always checked"),
    _ignored("dataset_prepared_path", "a cache folder; recipe prepares data in memory"),
    _ignored("dataset_processes", "preprocessing speed only"),
    _ignored("dataloader_num_workers", "loading speed only"),
    _ignored("dataloader_pin_memory", "loading speed only"),
    _ignored("dataloader_prefetch_factor", "loading speed only"),
    _ignored("pad_to_sequence_len", "padding changes no loss; fit-check counts every sequence at full length"),
    _ignored("eval_sample_packing", "evaluation speed only"),
    _ignored("include_tokens_per_second", "a metric only"),
    _ignored("hf_use_auth_token", "the hub token comes from the environment (HF_TOKEN), as in recipe"),
    _ignored("use_wandb", "recipe logs to W&B exactly when wandb_project is set"),
    _ignored("save_safetensors", "recipe saves safetensors"),
    _ignored("local_rank", "set by the launcher"),
    _no_effect_when(True, why="recipe loads the fast tokenizer")("tokenizer_use_fast"),
    _no_effect_when(True, why="recipe shuffles the mixed datasets with the seed")("shuffle_merged_datasets"),
    _row_unless_default("group_by_length", "training.group_by_length"),
    _row_unless_default("dataloader_drop_last", "training.dataloader_drop_last"),
    _no_effect_when(False, "false", why="recipe does not send gradients or weights to W&B")("wandb_watch"),
    _said_when_on("torch_compile", "recipe does not compile the model (torch.compile: speed; fit-check counts the "
                                   "uncompiled step)"),
    Row("lora_fan_in_fan_out", (), _said_when_true(
        # peft's LoRA layers set it from the layer they wrap (true for GPT-2's Conv1D, false for Linear),
        # correcting a value that does not match with a warning: the key never changes what trains.
        "lora_fan_in_fan_out: peft sets it from each adapted layer's type (Conv1D or Linear)"), lambda doc: ABSENT,
        "peft decides it per layer type whatever the config says: nothing to convert"),
    _no_effect_when(False, why="recipe trains; merging is `recipe merge RUN_DIR`")("merge_lora"),
    _no_effect_when(False, why="adapters load on the GPU")("lora_on_cpu"),
    Row("auto_resume_from_checkpoints", (), _said_when_true(
        "recipe resumes a run when asked: recipe run RUN_DIR/recipe.yaml --resume"), lambda doc: ABSENT,
        "how Axolotl's command starts, not what it trains: recipe resumes with --resume, said as a note"),
    # Axolotl's speed switches: a fused kernel or a compile; recipe runs the plain layers (said when on).
    *(_said_when_on(key, f"{key}: Axolotl's fused LoRA kernel; recipe runs peft's LoRA layers (the same result; "
                         "fit-check counts their activations, which the kernel saves)")
      for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")),
    *(_said_when_on(key, f"{key}: a fused flash-attn kernel; recipe runs the model's own layers (the same result)")
      for key in ("flash_attn_cross_entropy", "flash_attn_rms_norm", "flash_attn_fuse_mlp", "flash_attn_fuse_qkv",
                  "fused_attn_kernel")),
    _said_when_on("use_kernels", "use_kernels: the hub's kernels for the model's layers; recipe runs its own layers"),
    *(_said_when_on(key, f"{key}: {_MOE_KERNEL_NOTE}") for key in ("use_scattermoe", "use_sonicmoe", "moe_kernels")),
    # moe_kernels' tuning (its grouped GEMM's tile of tokens, a persistent launch): speed alone.
    _said_when_on("moe_persistent_kernel", f"moe_persistent_kernel: tunes {_MOE_KERNEL_NOTE}"),
    Row("moe_group_size", (), _moe_group_size, lambda doc: ABSENT, "speed only; said: it tunes moe_kernels' kernel"),
    _said_when_on("liger_rms_norm_gated", "liger_rms_norm_gated: Liger's gated RMSNorm; recipe runs the model's own"),
    Row("chunked_cross_entropy", (), _liger_loss, lambda doc: ABSENT,
        "recipe's loss is TRL's chunked head, which never materializes the logits either way"),
    Row("loss_watchdog_threshold", (), lambda v, cfg: {NOTE: "recipe does not stop on a loss spike (Axolotl's loss "
                                                            "watchdog); it stops on a loss that is not a number"},
        lambda doc: ABSENT, "a guard that stops a diverging run, said as a note"),
    _ignored("loss_watchdog_patience", "read with loss_watchdog_threshold"),
    Row("batch_size", ("training.gradient_accumulation_steps",), _batch_size, lambda doc: ABSENT,
        "the older way to say micro_batch_size x gradient_accumulation_steps"),
    Row("save_strategy", ("training.saves_per_epoch",), _save_strategy, lambda doc: ABSENT,
        "steps (recipe's way), epoch -> saves_per_epoch 1; no: recipe saves anyway, said"),
    Row("eval_strategy", ("training.evals_per_epoch",), _eval_strategy, lambda doc: ABSENT,
        "steps (recipe's way), epoch -> evals_per_epoch 1"),
    Row("evaluation_strategy", ("training.evals_per_epoch",), _eval_strategy, lambda doc: ABSENT,
        "older name of eval_strategy"),
    Row("eot_tokens", (), _eot_tokens, lambda doc: ABSENT, "the template's end-of-turn marker trains: said"),
    Row("bfloat16", (), _half_weights("bf16", "bf16"), lambda doc: ABSENT, "recipe's bf16 loads the weights in bf16"),
    Row("float16", ("training.precision",), _float16,
        lambda doc: True if get(doc, "training.precision") == "pure_fp16" else ABSENT,
        "Axolotl's fp16 weights: what recipe's fp16, bf16 or auto load where those decide the dtype; without "
        "them, trained as they are: recipe's pure_fp16"),
    Row("cosine_constant_lr_ratio", ("training.lr_scheduler",), _constant_lr_ratio, lambda doc: ABSENT,
        "Axolotl's hold at the floor: converts where the floor is the learning rate itself (ratio 1.0)"),
    Row("cosine_min_lr_ratio", ("training.min_lr_ratio",), _min_lr_ratio,
        lambda doc: get(doc, "training.min_lr_ratio") or ABSENT, "the cosine schedule's floor"),
    Row("neftune_noise_alpha", ("training.neftune_noise_alpha",), _neftune,
        lambda doc: get(doc, "training.neftune_noise_alpha", None) or ABSENT, "0 is no noise, as absent"),
    Row("noisy_embedding_alpha", ("training.neftune_noise_alpha",), _neftune, lambda doc: ABSENT,
        "older name of neftune_noise_alpha"),
    Row("use_dft", ("training.loss",), _sets_when_true("training.loss", "dft"),
        lambda doc: True if get(doc, "training.loss") == "dft" else ABSENT,
        "Dynamic Fine-Tuning: the loss weighted by each token's probability"),
    Row("use_dynamic_finetuning", ("training.loss",), _sets_when_true("training.loss", "dft"), lambda doc: ABSENT, "the same, as Axolotl's DFT pull "
        "request spelled it"),
    _row_unless_default("adam_beta1", "training.adam_beta1"),
    _row_unless_default("adam_beta2", "training.adam_beta2"),
    _row_unless_default("adam_epsilon", "training.adam_epsilon"),
    # Said, not silent: the config's author may have meant adam_epsilon.
    Row("adam_eps", (), lambda v, cfg: {NOTE: f"not converted, as Axolotl never reads it (its key is adam_epsilon): "
                                              f"the run trained with transformers' default epsilon, 1e-8, not {_shown(v)}; "
                                              "write training.adam_epsilon for this one"},
        lambda doc: ABSENT, "not Axolotl's key (adam_epsilon is): ignored, as Axolotl ignores it, with a note"),
    Row("attention", ("training.attention",), _attention_name, lambda doc: ABSENT,
        "Axolotl's newer single key: flash -> flash_attention_2, xformers -> sdpa (said)"),
    _ignored("eval_max_new_tokens", "samples generated for Axolotl's eval table, not trained"),
    _ignored("eval_table_size", "samples generated for Axolotl's eval table, not trained"),
    _ignored("eval_table_max_new_tokens", "samples generated for Axolotl's eval table, not trained"),
    _ignored("experimental_skip_move_to_device", "where the model is loaded before sharding, not what trains"),
    Row("model_quantization_config", (), _mxfp4_dequantized, lambda doc: ABSENT,
        "Mxfp4Config with dequantize: true only, what recipe run does with an MXFP4 base; said"),
    Row("model_quantization_config_kwargs", (), _mxfp4_dequantized, lambda doc: ABSENT,
        "read with model_quantization_config"),
    _ignored("ddp_find_unused_parameters", "DDP bookkeeping accelerate sets, not what trains"),
    _ignored("low_cpu_mem_usage", "transformers loads models that way"),
    _ignored("remove_unused_columns", "which dataset columns the trainer keeps: recipe hands it tokens only"),
    _ignored("skip_prepare_dataset", "when Axolotl tokenizes (ahead or on the fly): recipe tokenizes before training"),
    _ignored("debug", "Axolotl's own debug output"),
    Row("use_tensorboard", (), _said_when_true("use_tensorboard: recipe logs to the run folder (metrics.jsonl, "
                                                "loss.png) and to W&B, not to TensorBoard"), lambda doc: ABSENT,
        "logging only, said"),
    Row("use_swanlab", (), _said_when_true("use_swanlab: recipe logs to the run folder (metrics.jsonl, loss.png) "
                                            "and to W&B, not to SwanLab"), lambda doc: ABSENT, "logging only, said"),
    *(_ignored(key, "SwanLab's settings, read with use_swanlab (said)") for key in _SWANLAB_SETTINGS),
    _ignored("swanlab_api_key", "a secret in the config: recipe reads keys from the environment, never from files"),
    Row("use_otel_metrics", (), _said_when_true("use_otel_metrics: recipe serves no OpenTelemetry metrics; the run "
                                                 "folder's metrics.jsonl holds each logged step"), lambda doc: ABSENT,
        "monitoring only, said"),
    *(_ignored(key, "where use_otel_metrics serves its metrics (said)") for key in ("otel_metrics_host",
                                                                                   "otel_metrics_port")),
    Row("max_packed_sequence_len", ("data.packing",), _max_packed, lambda doc: ABSENT,
        "Axolotl's older packing: sample packing where it packs to sequence_len"),
    _ignored("torch_compile_mode", "read with torch_compile (said when that is on)"),
    _ignored("tokenizer_legacy", "a loader hint of older Llama tokenizers; the tokenizer's own files say it"),
    Row("save_only_model", (), _said_when_true(
        "save_only_model: recipe's checkpoints keep the optimizer state too (more disk), so that --resume continues "
        "exactly"), lambda doc: ABSENT, "what a checkpoint holds, not what trains: said"),
    Row("eval_batch_size", (), lambda v, cfg: {NOTE: f"eval_batch_size {v}: recipe evaluates in micro-batches of "
                                                     "micro_batch_size (no gradients: less memory than a step)"},
        lambda doc: ABSENT, "evaluation only, said"),
    Row("gptq", (), _only(False, why="GPTQ bases are not supported; recipe quantizes with bitsandbytes",
                          hint="use load_in_4bit"), lambda doc: ABSENT),
    *(_one(key, why) for key, why in (
        ("dp_shard_size", "sharding over part of the GPUs is not supported: recipe's fsdp shards over all of them"),
        ("dp_replicate_size", "replicated groups of shards are not supported"),
        ("tensor_parallel_size", "tensor parallelism is not supported"),
        ("context_parallel_size", "context parallelism is not supported"),
        ("sequence_parallel_degree", "sequence parallelism is not supported"),
        ("expert_parallel_size", "expert parallelism is not supported"))),
    Row("special_tokens", tuple(f"data.special_tokens.{k}" for k in SPECIAL_TOKENS), _special_tokens, lambda doc: get(doc, "data.special_tokens"),
        "a token the tokenizer has (checked when the recipe runs): recipe adds no tokens"),
    Row("tokens", ("data.tokens",), _tokens, lambda doc: get(doc, "data.tokens"),
        "tokens the tokenizer must have (recipe checks; Axolotl adds missing ones); older configs give the special "
        "tokens here, read as special_tokens"),
)


# --- dataset entries -------------------------------------------------------------------------------

# Axolotl `type` -> recipe format, for types whose prompt is the same on both sides (alpaca_chat and
# alpaca:chat are alpaca records with another prompt: said in TYPE_NOTES).
TYPES = {"alpaca": "alpaca", "alpaca_chat": "alpaca", "alpaca:chat": "alpaca", "completion": "text",
         "sharegpt": "sharegpt", "sharegpt:chat": "sharegpt", "chat_template": "chat", "chat_template.default": "chat"}
# Axolotl's legacy sharegpt types: conversations [{from, value}] with human and gpt turns; sharegpt:chat
# was the older spelling, read by its ShareGPTPrompter without the dataset's conversation key.
LEGACY_SHAREGPT = ("sharegpt", "sharegpt:chat")
_SHAREGPT_FIELDS = {"role": "from", "content": "value"}
# Each recipe format's own names (recipe's fields default to them; data.py reads them).
_OWN_NAMES = {"chat": {"messages": "messages", "role": "role", "content": "content"},
              "sharegpt": {"messages": "conversations", "role": "from", "content": "value"},
              "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
              "text": {"text": "text"}}
_OWN_ROLES = {"chat": {"system": ["system"], "user": ["user"], "assistant": ["assistant"]},
              "sharegpt": {"system": ["system"], "user": ["human", "user"], "assistant": ["gpt", "assistant"]}}
# A user-defined Axolotl type with these prompts builds recipe's alpaca prompt exactly, without
# Stanford Alpaca's preamble (False) or with it (True).
_ALPACA_TYPES = {False: {"format": ALPACA_PROMPT_WITH_INPUT, "no_input_format": ALPACA_PROMPT},
                 True: {"format": ALPACA_PREAMBLE_WITH_INPUT + ALPACA_PROMPT_WITH_INPUT,
                        "no_input_format": ALPACA_PREAMBLE + ALPACA_PROMPT}}


def _type(v, entry):
    if v == "alpaca":  # Axolotl's alpaca prompts are Stanford Alpaca's, preamble included
        return {"format": "alpaca", "preamble": True}
    if isinstance(v, str) and v in TYPES:
        return {"format": _format_of(entry)}
    if isinstance(v, dict):
        return _custom_type(v)
    if v is None:  # Axolotl reads a dataset without a type as token ids: input_ids, labels, attention_mask
        return {"format": "tokenized"}
    raise NotConverted(f"dataset type {_shown(v)} is not one recipe reads",
                       "recipe reads " + ", ".join(TYPES))


def _format_of(entry) -> str:
    fmt = TYPES[entry["type"]]
    if entry["type"] in LEGACY_SHAREGPT:
        return fmt
    # chat_template turns {from, value} are recipe's sharegpt format (its roles include human and gpt).
    turns = {k: n for k, n in _mappings(entry).items() if k in ("role", "content")}  # beside a reasoning mapping
    return "sharegpt" if fmt == "chat" and turns == _SHAREGPT_FIELDS else fmt


def _custom_type(v: dict) -> dict:
    """A user-defined type: recipe's alpaca with the data's field names, when its prompt is recipe's."""
    names = {"field_instruction": "instruction", "field_input": "input", "field_output": "output"}
    other = [k for k in v if k not in names and k not in _ALPACA_TYPES[False]]
    preamble = next((p for p, prompts in _ALPACA_TYPES.items() if all(v.get(k) == s for k, s in prompts.items())),
                    None)
    if other or preamble is None:
        raise NotConverted("a custom prompt type is supported only as recipe's alpaca prompt (format and "
                           "no_input_format as `recipe convert --to axolotl` writes them, and field_* names)",
                           "convert the data to alpaca, chat or prompt/completion records, or use type: alpaca")
    if not all(isinstance(v.get(k, ""), str) and v.get(k) != "" for k in names if k in v):
        raise NotConverted("field_instruction, field_input and field_output are field names (text)")
    fields = {names[k]: v[k] for k in names if k in v and v[k] != _OWN_NAMES["alpaca"][names[k]]}
    return {"format": "alpaca", **({"preamble": True} if preamble else {}), **({"fields": fields} if fields else {})}


def _mappings(entry) -> dict:
    found = dict(entry.get("message_property_mappings") or {}) if isinstance(
        entry.get("message_property_mappings"), dict) else {}
    for old, name in (("message_field_role", "role"), ("message_field_content", "content")):
        if isinstance(entry.get(old), str):
            found.setdefault(name, entry[old])
    return found


def _conversational(entry) -> str:
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in TYPES or TYPES[kind] not in ("chat", "sharegpt"):
        raise NotConverted(f"message fields with type {_shown(entry.get('type'))}: only conversations have them",
                           "use type: chat_template, or remove the key")
    return _format_of(entry)


def _write_type(d):
    if d["format"] == "tokenized":
        return ABSENT  # no type: Axolotl's pre-tokenized dataset
    if d["format"] == "alpaca":
        preamble = bool(d.get("preamble"))
        if preamble and not d.get("fields"):
            return "alpaca"  # Axolotl's own: Stanford Alpaca's prompt, preamble included
        # Renamed fields, or recipe's prompt without the preamble: a user-defined type that builds it.
        mine = {**_OWN_NAMES["alpaca"], **(d.get("fields") or {})}
        return {f"field_{k}": mine[k] for k in ("instruction", "input", "output")} | dict(_ALPACA_TYPES[preamble])
    return {"text": "completion", "chat": "chat_template",
            "sharegpt": "chat_template"}.get(d["format"]) or _unexpressible_format(d["format"])


def _unexpressible_format(fmt):
    raise NotConverted(f"format {fmt} has no Axolotl type that builds the same prompt",
                       "Axolotl's custom types template the prompt; convert the data to alpaca or chat")


def _message_fields(v, entry):
    """field_messages and the turn mappings, read together, as recipe's fields where they differ
    from the format's own names (Axolotl's chat_template defaults are recipe chat's). A mapping to
    the template's reasoning key is the turn's reasoning (fields.thinking), as Axolotl copies it."""
    fmt = _conversational(entry)
    mappings = _mappings(entry)
    key = _template_thinking_key(entry)
    other = [k for k in mappings if k not in ("role", "content", key)]
    if other:
        raise NotConverted(f"message property {other[0]!r}: recipe reads a turn's role, content and reasoning "
                           f"({key}) only", "remove it from message_property_mappings")
    thinking = _thinking_of(mappings[key], key) if key in mappings else {}
    # Axolotl's own names: its legacy sharegpt type reads conversations [{from, value}].
    own = _OWN_NAMES["sharegpt" if entry.get("type") in LEGACY_SHAREGPT else "chat"]
    names = {"messages": entry.get("field_messages", own["messages"]), "role": mappings.get("role", own["role"]),
             "content": mappings.get("content", own["content"])}
    if not all(isinstance(n, str) and n for n in names.values()):
        raise NotConverted(f"field names must be text, got {_shown(list(names.values()))}")
    fields = {k: n for k, n in names.items() if n != _OWN_NAMES[fmt][k]} | thinking.pop("fields", {})
    return ({"fields": fields} if fields else {}) | thinking


def _write_field_messages(d):
    if d["format"] not in ("chat", "sharegpt"):
        return ABSENT
    name = (d.get("fields") or {}).get("messages", _OWN_NAMES[d["format"]]["messages"])
    return ABSENT if name == "messages" else name


def _write_mappings(d):
    if d["format"] not in ("chat", "sharegpt"):
        return ABSENT
    names = {k: (d.get("fields") or {}).get(k, _OWN_NAMES[d["format"]][k]) for k in ("role", "content")}
    if names == {"role": "role", "content": "content"}:
        return ABSENT
    # Beside mappings of its own, Axolotl adds no reasoning mapping: the reasoning is one of them.
    thinking = (d.get("fields") or {}).get("thinking")
    return names if thinking is None else names | {d.get("template_thinking_key", AXOLOTL_THINKING): thinking}


# Axolotl's default for both field_thinking and template_thinking_key (its ChatTemplatePrompter's).
AXOLOTL_THINKING = "reasoning_content"
_THINKING_TYPES = ("chat_template", "chat_template.default")


def _template_thinking_key(entry) -> Any:
    return entry.get("template_thinking_key", AXOLOTL_THINKING)


def _thinking_of(field, key) -> dict:
    if not all(isinstance(n, str) and n for n in (field, key)):
        raise NotConverted(f"field_thinking and template_thinking_key are key names (text), got {_shown([field, key])}")
    return {"fields": {"thinking": field}} | ({"template_thinking_key": key} if key != AXOLOTL_THINKING else {})


def _thinking(v, entry):
    """field_thinking and template_thinking_key, read together: Axolotl copies each turn's
    message[field_thinking] to message[template_thinking_key] (both reasoning_content when left
    out), by a mapping it adds to its own default mappings only."""
    if entry.get("type") not in _THINKING_TYPES:
        raise NotConverted(f"a turn's reasoning with type {_shown(entry.get('type'))}: Axolotl reads it for type "
                           "chat_template only", "use type: chat_template, or remove the key")
    field, key = entry.get("field_thinking", AXOLOTL_THINKING), _template_thinking_key(entry)
    mappings = _mappings(entry)
    if not mappings:
        return _thinking_of(field, key)
    if key in mappings:
        return {}  # the mapping to the template's key is the reasoning (_message_fields), field_thinking unread
    if field == key:  # not mapped, but Axolotl passes a turn's keys that the template reads through as they are
        return _thinking_of(field, key)
    raise NotConverted(f"Axolotl reads no reasoning from {_shown(field)} beside message_property_mappings: it adds "
                       "the mapping to template_thinking_key only to its default mappings",
                       f"add {key}: {field} to message_property_mappings")


def _write_field_thinking(d):
    thinking = (d.get("fields") or {}).get("thinking")
    # Written even where it is Axolotl's default: read back, a config without it has no reasoning.
    return ABSENT if thinking is None or _write_mappings(d) is not ABSENT else thinking  # or one of the mappings


def _write_template_thinking_key(d):
    key = d.get("template_thinking_key")
    return ABSENT if key in (None, AXOLOTL_THINKING) else key


def _roles(v, entry):
    fmt = _conversational(entry)
    if not isinstance(v, dict) or not all(isinstance(s, list) and s and all(isinstance(n, str) and n for n in s)
                                          for s in v.values()):
        raise NotConverted(f"expected {{role: [names in the data]}}, got {_shown(v)}")
    other = [k for k in v if k not in _OWN_ROLES[fmt]]
    if other:
        raise NotConverted(f"role {other[0]!r}: recipe's conversations have system, user and assistant turns",
                           "remove it, and the turns of that role from the data")
    roles = {k: list(s) for k, s in v.items() if list(s) != _OWN_ROLES[fmt][k]}
    return {"roles": roles} if roles else {}


def _drop_system(v, entry):
    _conversational(entry)
    if not isinstance(v, bool):
        raise NotConverted(f"expected true or false, got {_shown(v)}")
    return {"drop_system": True} if v else {}


def _roles_to_train(v, entry):
    if v in (None, ["assistant"]):
        return {}
    raise NotConverted(f"roles_to_train {_shown(v)}: recipe trains assistant turns (or every token with "
                       "train_on_inputs: true)")


def _ds_type(v, entry):
    path = str(entry.get("path", ""))
    suffix = {"json": (".json", ".jsonl"), "csv": (".csv",), "parquet": (".parquet",)}.get(v) if isinstance(v, str) \
        else None
    if suffix and path.endswith(suffix):
        return {}
    raise NotConverted(f"ds_type {_shown(v)} for {path!r}: recipe reads the type from the file name",
                       "name the file .jsonl, .json, .csv or .parquet")


def _completion_field(v, entry):
    if entry.get("type") != "completion":
        raise NotConverted(f"field with type {_shown(entry.get('type'))}: recipe reads it for type completion only",
                           "remove it")
    if not isinstance(v, str) or not v:
        raise NotConverted(f"field {_shown(v)} is not a field name")
    return {} if v == "text" else {"fields": {"text": v}}


def _data_files(v, entry):
    files = [v] if isinstance(v, str) else v
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        raise NotConverted(f"data_files {_shown(v)}: expected a file name or a list of them",
                           "a mapping of split names to files is not supported: pick the training split's files")
    return {"data_files": files}


# The legacy sharegpt type's FastChat conversation templates that are one of recipe's named ones.
CONVERSATIONS = {"chatml": "chatml"}


def _conversation(v, entry):
    if entry.get("type") != "sharegpt":
        return {NOTE: f"not converted, as Axolotl ignores it with type {_shown(entry.get('type'))}: it reads "
                      "conversation for the legacy sharegpt type only"}
    if not isinstance(v, str) or v not in CONVERSATIONS:
        raise NotConverted(f"conversation {_shown(v)} is not a template recipe names", "use conversation: chatml, "
                           "or type chat_template with the top-level chat_template")
    return {"data.chat_template": CONVERSATIONS[v]}


DATASET_ROWS: tuple[Row, ...] = (
    Row("path", ("path",), lambda v, e: {"path": v}, lambda d: d["path"],
        "a local file is relative to where Axolotl runs; written relative to the recipe"),
    Row("type", ("format", "preamble"), _type, _write_type,
        "alpaca -> alpaca with Stanford Alpaca's preamble (Axolotl's prompt exactly), completion -> text, "
        "chat_template -> chat, or sharegpt for conversations [{from, value}] (and the legacy sharegpt, "
        "sharegpt:chat)"),
    Row("split", ("split",), lambda v, e: {"split": v}, lambda d: d["split"] if d.get("split") != "train" else ABSENT),
    Row("name", ("subset",), lambda v, e: {"subset": v}, lambda d: d.get("subset", ABSENT)),
    Row("data_files", ("data_files",), _data_files, lambda d: d.get("data_files", ABSENT),
        "files inside a hub dataset's repository; one name becomes a list of one"),
    Row("ds_type", (), _ds_type, lambda d: ABSENT, "must agree with the file's suffix"),
    Row("field_messages", ("fields",), _message_fields, _write_field_messages,
        "the field of the turns -> fields.messages where it is not the format's own"),
    Row("message_property_mappings", ("fields",), _message_fields, _write_mappings,
        "{role, content} -> fields.role and fields.content; {from, value} makes the format sharegpt"),
    Row("message_field_role", ("fields",), _message_fields, lambda d: ABSENT, "older spelling of the mappings"),
    Row("message_field_content", ("fields",), _message_fields, lambda d: ABSENT, "older spelling of the mappings"),
    Row("field_thinking", ("fields",), _thinking, _write_field_thinking,
        "a turn's key for its reasoning -> fields.thinking (Axolotl's reasoning_content when only "
        "template_thinking_key is given); type chat_template only"),
    Row("template_thinking_key", ("template_thinking_key",), _thinking, _write_template_thinking_key,
        "where the template reads it -> template_thinking_key, with fields.thinking (Axolotl's reasoning_content "
        "when only field_thinking is given)"),
    Row("roles", ("roles",), _roles, lambda d: d.get("roles", ABSENT),
        "system, user and assistant; Axolotl's default also reads human and gpt, recipe's chat format does not"),
    Row("conversation", ("data.chat_template",), _conversation, lambda d: ABSENT,
        "the legacy sharegpt type's template (FastChat's chatml) -> the top-level data.chat_template"),
    Row("drop_system_message", ("drop_system",), _drop_system, lambda d: True if d.get("drop_system") else ABSENT),
    Row("roles_to_train", (), _roles_to_train, lambda d: ABSENT),
    Row("train_on_eos", (), _only("turn", why="recipe trains the end of each assistant turn"), lambda d: ABSENT),
    Row("chat_template", (), _dataset_chat_template, lambda d: ABSENT, "tokenizer_default only: the top-level key "
        "names the template"),
    Row("field", ("fields",), _completion_field,
        lambda d: d["fields"]["text"] if d["format"] == "text" and "text" in (d.get("fields") or {}) else ABSENT,
        "type completion's text field -> fields.text"),
    Row("trust_remote_code", (), _only(False, why="recipe never runs a dataset's code"), lambda d: ABSENT),
)

# Reasons shared by several keys below.
_HUB = ("recipe pushes the trained result only, not the prepared data set", "remove it")
_OTHER_QUANTIZATION = ("quantized bases other than bitsandbytes 4/8-bit are not supported", "")

# Keys recipe has no field for, with the reason; anything else unknown is named as such.
UNSUPPORTED = {
    # what is trained
    "rl": ("preference training (dpo, orpo, kto, grpo...) is not supported yet", "recipe trains supervised (SFT)"),
    "lora_model_dir": ("starting from an existing adapter is not supported", ""),
    "peft": ("peft options beyond recipe's lora section (LoftQ...) are not supported", ""),
    "relora_steps": ("ReLoRA is not supported", ""),
    "lisa_n_layers": ("LISA is not supported", ""),
    "fp8": ("fp8 training is not supported", "use bf16"),
    # the model and its tokenizer
    "overrides_of_model_config": ("changing the model's config (RoPE scaling...) is not supported", ""),
    # memory and kernels
    "batch_flattening": ("padding-free batches without packing are not supported", "use sample_packing: true"),
    "device_map": ("placing the model's layers over several GPUs is not supported: recipe trains the whole model on "
                   "each GPU (or shards it with distributed)", "remove it"),
    "tensor_parallel": ("tensor parallelism is not supported", ""),
    # data and schedule
    "test_datasets": ("recipe holds out val_fraction of the data; a separate eval set is not supported", ""),
    # where it runs and what it leaves
    "resume_from_checkpoint": ("resuming is `recipe run RUN_DIR/recipe.yaml --resume`", ""),
    "push_dataset_to_hub": _HUB,
}


# A value that switches an unsupported key off is what recipe does: it converts to nothing.
OFF = (False, [], {})
OFF_AT_ZERO = ("expert_parallel_size",)


def unsupported(key: str, value: Any) -> Optional[tuple[str, str]]:
    """Why recipe cannot do this key's value, with a hint; None where the value switches it off."""
    if key not in UNSUPPORTED:
        return None
    off = any(value == o and type(value) is type(o) for o in OFF) or (key in OFF_AT_ZERO and value == 0
                                                                      and not isinstance(value, bool))
    return None if off else UNSUPPORTED[key]


# Axolotl's defaults that differ from the recipe's: written explicitly when the key is absent.
DEFAULTS = {
    "data.max_seq_length": 512,  # sequence_len
    "training.warmup_ratio": 0.0,  # no warm-up unless warmup_ratio or warmup_steps says so (see UNLESS)
    "training.gradient_checkpointing": False,
    "lora.dropout": 0.0,  # lora_dropout, with an adapter
}
# A default above is not written when the field named here is set (the two exclude each other).
UNLESS = {"training.warmup_ratio": "training.warmup_steps"}
# Recipe fields Axolotl has no key for, at the value Axolotl always runs with: written as nothing
# (any other value is reported as not converted). transformers' EarlyStoppingCallback counts any
# improvement of eval_loss, threshold 0, and Axolotl passes it none.
AXOLOTL_ALWAYS = {"training.early_stopping_threshold": 0.0}
# What an adapter needs that Axolotl leaves to peft's per-model defaults when absent.
ADAPTER_NEEDS = {
    "lora_r": "add lora_r, e.g. lora_r: 16",
    "lora_alpha": "add lora_alpha (twice lora_r is common)",
    "lora_target_modules": "add lora_target_linear: true (every linear layer), lora_target_modules: [q_proj, v_proj] "
                           "or a pattern of full names, e.g. 'model.layers.[\\d]+.self_attn.(q|v)_proj'",
}
# Said once per conversion where a dataset has this Axolotl type, read or written: the records
# convert, the prompt they train with differs (a user-defined type with recipe's prompt does not).
TYPE_NOTES = {
    "alpaca_chat": "alpaca_chat prompts: Axolotl writes 'USER: ... ASSISTANT:'; recipe's alpaca prompt is "
                   "### Instruction / ### Response",
}
TYPE_NOTES["alpaca:chat"] = TYPE_NOTES["alpaca_chat"]
TYPE_NOTES["sharegpt:chat"] = ("sharegpt:chat prompts: Axolotl renders FastChat's vicuna_v1.1 template (a system line, "
                               "then 'USER: ... ASSISTANT: ...'); recipe renders data.chat_template")


def row_for(key: str, rows: tuple[Row, ...]) -> Row | None:
    return next((r for r in rows if r.key == key), None)
