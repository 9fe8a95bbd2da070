"""Loading what a recipe trains: the device, the tokenizer, the base model (4/8-bit) and the layers
LoRA adapts. Shared by `recipe run` (runner.py) and `recipe merge` / `recipe generate` (after.py).

torch, transformers and peft are imported inside the functions that use them, so importing
recipecli (``recipe validate``, ``recipe --help``) never pays for them.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Optional, Sequence

from ..errors import (InvalidRecipe, NotModeled, Problem, RecipeError, UnknownModel, UnknownTargets, UsageError,
                      json_path)
from ..fit.architectures import (ALL_LINEAR_ADAPTS_EXPERTS, check_weights, find_shape, match_modules,
                                  match_parameters, match_pattern, peft_matches, shape_from_config)
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices
from ..fit.verdict import at_its_field, unquantized_base
from ..read.recipe import Recipe, TargetPattern


def say(text: str) -> None:
    """Tell the person at the terminal, on stderr: stdout carries the command's result."""
    print(text, file=sys.stderr, flush=True)


def training_gpu(gpus: Sequence[Gpu]) -> Optional[Gpu]:
    """The GPU that trains: the first one, if this torch can use CUDA at all."""
    if not gpus:
        return None
    import torch

    if torch.cuda.is_available():
        return gpus[0]
    say(f"note: {gpus[0].name} is present but this torch build has no CUDA support: training on the CPU")
    return None


def _source(recipe: Recipe) -> str:
    return str(recipe.model.local_path) if recipe.model.local_path else recipe.model.id


def _check_local_weights(recipe: Recipe) -> None:
    """A local model folder's weights against its config.json, before anything loads (architectures.
    check_weights); a shape fit-check cannot read is left to the loader.

    Raises:
        UnknownModel: a weight of another size than config.json gives, located at model.id.
    """
    model, folder = recipe.model, recipe.model.local_path
    if folder is None:
        return
    try:  # the checkpoint as saved: before model.pad_vocab_to_multiple_of grows it
        shape = find_shape(model.id, folder, model.architecture, model.revision)
    except UnknownModel:
        return
    try:
        check_weights(shape, folder)
    except UnknownModel as e:
        raise at_its_field(e, recipe) from None


class MismatchedWeights(RuntimeError):
    """Weights from_pretrained could not put into the model config.json describes (a RuntimeError
    there: transformers' report of mismatched shapes, or bitsandbytes' while quantizing them)."""


def _load_failure(what: str, error: Exception) -> RecipeError:
    """The error from_pretrained raised, with the fix that usually applies to its kind."""
    hints = {
        ValueError: "an unknown model type needs a newer transformers; a model that ships its own code needs "
                    "model.trust_remote_code: true (only for code you trust)",
        ImportError: "install the package the message names; instead of flash_attn, training.attention auto uses sdpa",
        MismatchedWeights: "the weights do not fit the model config.json describes (saved for another config.json, "
                           "or another model's?): put back the config.json they were saved with, or the weights that "
                           "belong to this one",
    }
    hint = next((h for kind, h in hints.items() if isinstance(error, kind)), "")
    return RecipeError(f"cannot load {what}: {error}", hint=hint)


REMOTE_CODE_PATH = "$.model.trust_remote_code"


def check_remote_code(recipe: Recipe, allowed: bool, command: str) -> None:
    """Refuse a recipe that runs the model's own Python code unless the command line allows it.

    A recipe is shared like a document; ``model.trust_remote_code: true`` in it must not be
    enough to run code downloaded with someone else's model on this machine. Called before
    anything is downloaded or loaded.

    Args:
        recipe: the recipe (or a run folder's recipe.yaml).
        allowed: ``--trust-remote-code`` was given.
        command: how to run it again with the flag, for the hint (``recipe run FILE``).

    Raises:
        UsageError: the recipe trusts remote code and the flag was not given; located at
            ``$.model.trust_remote_code`` in the recipe file.
    """
    if not recipe.model.trust_remote_code:
        return
    if allowed:
        say(f"warning: model.trust_remote_code is true and --trust-remote-code is given: Python code shipped "
            f"with {recipe.model.id} runs on this machine")
        return
    raise UsageError(f"the recipe trusts the Python code shipped with {recipe.model.id}, and nothing runs it "
                     "without --trust-remote-code on the command line",
                     hint=f"read the model's code first, then: {command} --trust-remote-code",
                     where=recipe.locate(("model", "trust_remote_code")), path=REMOTE_CODE_PATH)


@contextlib.contextmanager
def repeated_kv_heads(on: bool):
    """With ``on`` (Choices.gqa_repeat), transformers' sdpa attention repeats the key/value heads of
    grouped-query attention itself rather than passing them grouped (``enable_gqa``), which on a card
    without a fused kernel for grouped heads sends torch to its math kernel and the seq x seq
    attention matrix into memory. transformers has no setting for it: its one switch
    (``use_gqa_in_sdpa``, looked up at each call) is set for the block. The run and the probe's
    trace both take it, so the estimate counts one way of running."""
    if not on:
        yield
        return
    from transformers.integrations import sdpa_attention

    with switched_off(sdpa_attention, "use_gqa_in_sdpa"):
        yield


@contextlib.contextmanager
def switched_off(module, name: str):
    """``module.name``, a predicate transformers looks up at each call, answers False in the block."""
    chosen = getattr(module, name)
    setattr(module, name, lambda *args, **kwargs: False)
    try:
        yield
    finally:
        setattr(module, name, chosen)


def enforce_dtypes(model, choices: Choices) -> int:
    """Cast the trained parameters to the dtype precision.choose decided, whatever the libraries did.

    TRL's SFTTrainer casts the adapters of a quantized model to bf16 (trl/trainer/sft_trainer.py,
    SFTTrainer.__init__); under fp16 the GradScaler then trains bf16 adapters, emulated and slow
    before compute capability 8.0, and fp16 ones it would refuse. Called after the trainer is built
    and before it creates its optimizer, so the optimizer holds the cast parameters.

    Args:
        model: the model the trainer trains (``trainer.model``).
        choices: the run's choices; ``trainable_dtype`` is enforced.

    Returns:
        How many parameters were cast.
    """
    import torch

    dtype = getattr(torch, choices.trainable_dtype)
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)  # in place of the Parameter: modules keep referring to it
            cast += 1
    return cast


def load_tokenizer(recipe: Recipe):
    """The recipe's tokenizer: model.tokenizer where it names one, else the model's own.

    Raises:
        RecipeError: it cannot be found (offline, missing folder, wrong id or revision) or needs
            remote code or a package that is missing.
    """
    from transformers import AutoTokenizer

    from .mistral import MODE

    model = recipe.model
    # model.revision is a ref of the model's repository; a tokenizer from another one is at its default branch.
    revision = model.revision if model.tokenizer is None else None
    # mistral_format False unless the recipe asks: with mistral-common installed, transformers would
    # otherwise switch a model that ships a tekken.json to it without a word.
    backend = {"mistral_format": True, "mode": MODE} if model.tokenizer_backend == "mistral_common" else {
        "mistral_format": False}
    try:
        return AutoTokenizer.from_pretrained(model.tokenizer_source, revision=revision,
                                             trust_remote_code=model.trust_remote_code, **backend)
    # OSError: a missing repo, file or connection; ValueError: code the model ships without
    # trust_remote_code, or a tokenizer class this transformers lacks; ImportError: a missing package.
    except (OSError, ValueError, ImportError) as e:
        if isinstance(e, ImportError) and model.tokenizer_backend is not None:  # mistral-common is an extra
            raise RecipeError(f"model.tokenizer_backend {model.tokenizer_backend} needs mistral-common: {e}",
                              "pip install 'recipecli[mistral]'", where=recipe.locate(("model", "tokenizer_backend")),
                              path="$.model.tokenizer_backend") from e
        raise _load_failure(f"the tokenizer {model.tokenizer}" if model.tokenizer else
                            f"the tokenizer of {model.id}", e) from e


def load_model(recipe: Recipe, choices: Choices, *, cuda: bool, quantize: bool = True, train: bool = True):
    """The base model, quantized as the recipe says and prepared for k-bit training.

    Args:
        recipe: the loaded recipe.
        choices: resolved precision, attention and compute dtype (``precision.choose`` for this device).
        cuda: load onto cuda:0; otherwise the CPU, where bitsandbytes' CPU backend quantizes.
        quantize: False loads a qlora base unquantized, in its compute dtype (for merging).
        train: False skips the k-bit training preparation (fp32 norms, input gradients).

    Raises:
        RecipeError: the model cannot be loaded (not found, unknown architecture, remote code
            without trust_remote_code, a missing package such as flash-attn).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .llama4 import MODEL_TYPES, expose_backbone, linearized_llama4  # torch at import

    _check_local_weights(recipe)
    dtype = getattr(torch, choices.weight_dtype)  # precision.choose decides it, as the estimate counts it
    quant = recipe.quantization if quantize else None
    config = None if quant is None else bnb_config(quant.bits, quant.type, quant.double_quant, choices.weight_dtype)
    stored = _stored_config(recipe)
    stored_as = _quant_method(stored)
    if stored_as not in (None, "mxfp4", "bitsandbytes"):
        # transformers would load it with that method's own layers (or refuse bitsandbytes beside
        # them): not the 16-bit or bitsandbytes base the recipe, fit-check and the probe describe.
        raise InvalidRecipe([Problem(recipe.locate(("model", "id")), "$.model.id",
                                     f"{recipe.model.id} is stored quantized with {stored_as}, which recipe does not "
                                     "train from", "use the model's 16-bit checkpoint (method qlora quantizes it "
                                     "with bitsandbytes)")])
    if stored_as == "mxfp4":
        config = _mxfp4_dequantized(recipe, config)
    pre_quantized = stored_as == "bitsandbytes"
    if pre_quantized:
        _check_stored_quantization(recipe, stored.quantization_config)
    if recipe.model.linearized_experts and stored is not None and stored.model_type not in MODEL_TYPES:
        raise InvalidRecipe([Problem(recipe.locate(("model", "linearized_experts")), "$.model.linearized_experts",
                                     f"{recipe.model.id} is a {stored.model_type} model: only Llama 4's experts "
                                     "are built as linear layers", "remove model.linearized_experts")])
    if quant is not None and quant.bits == 4 and recipe.strategy == "fsdp":
        # FSDP shards float tensors only: bitsandbytes stores the 4-bit weights as the compute dtype
        # for it (FSDP-QLoRA, bitsandbytes docs/fsdp_qlora.md).
        config.bnb_4bit_quant_storage = dtype
    try:
        with linearized_llama4() if recipe.model.linearized_experts else contextlib.nullcontext():
            model, loading = AutoModelForCausalLM.from_pretrained(
                _source(recipe), revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code,
                dtype=dtype, attn_implementation=choices.attention, quantization_config=config,
                # Each process of a distributed run loads onto its own GPU (torchrun's LOCAL_RANK).
                device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None,
                output_loading_info=True)
    # ValueError: an architecture this transformers does not know, remote code without
    # trust_remote_code, an attention the model lacks; ImportError: flash-attn or bitsandbytes missing.
    except ValueError as e:
        if "does not support an attention implementation" in str(e):  # gpt-oss' attention sinks: eager only
            raise InvalidRecipe([Problem(recipe.locate(("training", "attention")), "$.training.attention",
                                         f"{recipe.model.id} has no {choices.attention} attention in transformers "
                                         f"({str(e).split('. ')[0]})", "set training.attention: eager (it keeps "
                                         "each layer's attention matrices; fit-check counts them)")]) from None
        raise _load_failure(f"the model {recipe.model.id}", e) from e
    except (OSError, ImportError) as e:
        raise _load_failure(f"the model {recipe.model.id}", e) from e
    except torch.OutOfMemoryError:
        raise  # the run explains running out of memory (failures.py)
    except RuntimeError as e:  # weights of other shapes than config.json's: transformers' or bitsandbytes' refusal
        raise _load_failure(f"the model {recipe.model.id}", MismatchedWeights(str(e))) from e
    _check_loaded(recipe, loading)
    if quant is not None and not any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules()):
        # transformers leaves a model's linear layers alone where it does not take them for nn.Linear
        raise unquantized_base(recipe, model.config.model_type)
    expose_backbone(model)
    if pre_quantized and quant is not None and quant.bits == 4:
        # transformers takes a pre-quantized checkpoint's whole quantization_config, its compute
        # dtype too (bf16 in most): the card and training.precision decide that one, as for any base.
        for module in model.modules():
            if type(module).__name__ == "Linear4bit":
                module.compute_dtype = dtype
    check_experts(recipe, model)
    if recipe.model.experts_implementation:  # set once loaded: a dense model is refused above, located
        model.set_experts_implementation(recipe.model.experts_implementation)
    if quant is not None and quant.moe_experts:
        quantize_experts(model, quant.bits, quant.type, quant.double_quant)
    if recipe.model.pad_vocab_to_multiple_of is not None:
        # recipe adds no tokens, so the recipe's tokenizer has the length of every tokenizer a
        # caller holds (the run's, the one saved beside the adapter): merge and generate pad alike.
        pad_vocab(model, len(load_tokenizer(recipe)), recipe.model.pad_vocab_to_multiple_of)
    if quant is not None and train:
        model = prepare_kbit(model, recipe.training.gradient_checkpointing)
    if train and recipe.training.unfrozen_parameters:
        try:
            trained, total = freeze_all_but(model, recipe.training.unfrozen_parameters)
        except RecipeError as e:
            raise at_its_field(e, recipe) from None
        say(f"note: training.unfrozen_parameters: {trained:,} of {total:,} weights train, the rest are frozen")
    return model


def freeze_all_but(model, patterns: Sequence[str]) -> tuple[int, int]:
    """Full fine-tuning of the parameters training.unfrozen_parameters names (matched as fit-check
    matches them, architectures.match_parameters): every other parameter frozen. `recipe run` and
    the probe both apply it.

    Returns:
        (weights that train, all weights).

    Raises:
        UnknownTargets: a pattern that matches no parameter of the model.
    """
    keep = set(match_parameters(patterns, [n for n, _ in model.named_parameters()], model.config.model_type))
    for name, param in model.named_parameters():
        param.requires_grad = name in keep
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def _stored_config(recipe: Recipe):
    """The base's config (transformers' AutoConfig), or None where it cannot be read: from_pretrained
    then says what is wrong with the model, located."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_source(recipe), revision=recipe.model.revision,
                                          trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError):
        return None


def model_type_of(recipe: Recipe) -> Optional[str]:
    """The base's config.json model_type (for precision.choose), or None where it cannot be read."""
    return getattr(_stored_config(recipe), "model_type", None)


def _quant_method(config) -> Optional[str]:
    """How the checkpoint's weights are stored quantized (config.json's quantization_config:
    mxfp4 for gpt-oss, bitsandbytes for a base saved 4/8-bit), or None."""
    stored = getattr(config, "quantization_config", None)
    method = stored.get("quant_method") if isinstance(stored, dict) else getattr(stored, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def _check_stored_quantization(recipe: Recipe, stored) -> None:
    """A checkpoint saved quantized by bitsandbytes loads quantized as it was saved, whatever
    from_pretrained is asked for (transformers uses the stored settings): the recipe must say so.

    Raises:
        InvalidRecipe: a method without quantization, or bits, type or double quant other than the
            checkpoint's, located at the field to change.
    """
    def get(key: str):
        return stored.get(key) if isinstance(stored, dict) else getattr(stored, key, None)

    bits = 4 if get("load_in_4bit") else 8
    kind = f"{bits}-bit{' ' + str(get('bnb_4bit_quant_type')) if bits == 4 else ''}"
    quant, problems = recipe.quantization, []
    if quant is None:
        problems.append((("method",), f"method {recipe.method}: {recipe.model.id} is stored quantized by "
                         f"bitsandbytes ({kind}) and loads so", "use method qlora, with quantization as the "
                         "checkpoint stores it"))
    else:
        wanted = {("quantization", "bits"): (quant.bits, bits)}
        if bits == 4 == quant.bits:  # with other bits, the 4-bit settings follow once bits is set
            wanted[("quantization", "type")] = (quant.type, get("bnb_4bit_quant_type"))
            wanted[("quantization", "double_quant")] = (quant.double_quant, bool(get("bnb_4bit_use_double_quant")))
        problems += [(path, f"{path[-1]} {_yaml(ours)}: {recipe.model.id} is stored quantized by bitsandbytes with "
                      f"{path[-1]} {_yaml(theirs)}, and loads so", f"set {'.'.join(path)}: {_yaml(theirs)}")
                     for path, (ours, theirs) in wanted.items() if ours != theirs]
    if problems:
        raise InvalidRecipe([Problem(recipe.locate(path), json_path(path), message, hint)
                             for path, message, hint in problems])


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_loaded(recipe: Recipe, loading: dict) -> None:
    """Every weight of the model came from the checkpoint: transformers starts a missing one from
    random values and says so in a log line only.

    Raises:
        InvalidRecipe: Llama 4's experts stored in the other layout than model.linearized_experts says.
        RecipeError: other weights missing (a checkpoint of another architecture, or cut short).
    """
    missing = sorted(loading.get("missing_keys") or ())
    if not missing:
        return
    unexpected = loading.get("unexpected_keys") or ()
    path = ("model", "linearized_experts")
    if recipe.model.linearized_experts and any(".experts.gate_projs." in name for name in missing):
        raise InvalidRecipe([Problem(recipe.locate(path), json_path(path), f"{recipe.model.id} stores Llama "
                                     "4's experts fused (experts.gate_up_proj, experts.down_proj), as transformers "
                                     "builds them", "remove model.linearized_experts")])
    if any(".experts.gate_projs." in name for name in unexpected):
        raise InvalidRecipe([Problem(recipe.locate(path), json_path(path), f"{recipe.model.id} stores Llama "
                                     "4's experts as linear layers (experts.gate_projs.N: Axolotl's linearized "
                                     "checkpoints); built fused, they would start from random values",
                                     "set model.linearized_experts: true")])
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3:,} more" if len(missing) > 3 else "")
    raise RecipeError(f"cannot load the model {recipe.model.id}: {len(missing):,} of its weights are not in the "
                      f"checkpoint ({shown}); transformers would start them from random values",
                      hint="model.id names a checkpoint of another architecture than its config.json, or one cut "
                           "short: put back the weights that belong to it")


def _mxfp4_dequantized(recipe: Recipe, bnb):
    """An MXFP4 base loads dequantized to the load dtype: transformers keeps MXFP4 where its kernels
    run (Triton and the kernels package) and refuses to train it, and dequantizes elsewhere, so the
    same recipe would train on one machine and not on another (Axolotl's model_quantization_config:
    Mxfp4Config with dequantize: true).

    Raises:
        InvalidRecipe: method qlora: bitsandbytes cannot quantize weights stored quantized.
    """
    if bnb is not None:
        raise InvalidRecipe([Problem(recipe.locate(("method",)), "$.method",
                                     f"method qlora: {recipe.model.id} is stored in MXFP4, which bitsandbytes cannot "
                                     "quantize again", "use method lora: recipe run loads an MXFP4 base dequantized "
                                     "to 16 bits")])
    from transformers import Mxfp4Config

    return Mxfp4Config(dequantize=True)


def fused_experts(model) -> list:
    """(module, parameter name) of each mixture-of-experts weight stored fused, one 3-D parameter
    for all the experts of a layer (transformers 5's layout): parameters outside any nn.Linear.
    Once quantized (:func:`quantize_experts`) each is a parametrization's output, named as before."""
    from torch.nn.utils import parametrize

    return [(module, name) for module in model.modules() if not isinstance(module, parametrize.ParametrizationList)
            for name in [*(n for n, p in module.named_parameters(recurse=False) if p.dim() == 3),
                         *getattr(module, "parametrizations", {})]]


def check_experts(recipe: Recipe, model) -> None:
    """Refuse the recipe's mixture-of-experts settings on a model they would change nothing in.

    transformers takes an experts kernel and a router loss for any model and ignores them where
    there are no experts, and TRL, with the model config's coefficient absent, leaves the loss off
    without a word: the run would not be the one the recipe describes.

    Raises:
        InvalidRecipe: each setting the loaded model has no experts for, located at its field.
    """
    routed = hasattr(model.config.get_text_config(), "output_router_logits")
    fused = bool(fused_experts(model))
    quant = recipe.quantization
    settings = {
        ("model", "experts_implementation"): (recipe.model.experts_implementation is not None and not fused,
                                              "no experts for an experts kernel to run"),
        ("quantization", "moe_experts"): (bool(quant and quant.moe_experts) and not fused,
                                          "no fused expert weights to quantize"),
        ("training", "router_aux_loss"): (recipe.training.router_aux_loss and not routed,
                                          "no routers, so no load-balancing loss"),
    }
    problems = [Problem(recipe.locate(path), json_path(path),
                        f"{recipe.model.id} ({model.config.model_type}) is not a mixture of experts: {why}",
                        "remove it")
                for path, (wrong, why) in settings.items() if wrong]
    if problems:
        raise InvalidRecipe(problems)


def quantize_experts(model, bits: int, quant_type: Optional[str], double_quant: Optional[bool]) -> None:
    """Each fused expert weight quantized behind a parametrization (quantization.moe_experts):
    stored in ``bits`` with its constants, dequantized whole to its load dtype when a forward pass
    reads it. Before peft's k-bit preparation, which would otherwise upcast these 16-bit weights
    to fp32.

    4 bits: bitsandbytes' own parametrization (nf4/fp4, double quant). 8 bits: bitsandbytes has
    none, so :class:`Int8Rows` here, LLM.int8's row-wise absmax quantization (an int8 per weight,
    an fp32 scale per row of the last dimension), as Axolotl quantizes 8-bit experts.
    """
    if bits == 4:
        from bitsandbytes.nn.parametrize import replace_parameter_4bit

        for module, name in fused_experts(model):
            replace_parameter_4bit(module, name, compress_statistics=bool(double_quant), quant_type=quant_type)
        return
    import torch
    import torch.nn.utils.parametrize as parametrize
    from bitsandbytes.functional import int8_vectorwise_quant

    experts = fused_experts(model)
    for module, name in experts:
        weight = getattr(module, name)
        # LLM.int8 quantizes fp16 rows of a matrix (its kernels take nothing else), as Int8Params does
        stored, scales, _ = int8_vectorwise_quant(weight.data.reshape(-1, weight.shape[-1]).to(torch.float16))
        setattr(module, name, torch.nn.Parameter(stored.view(weight.shape), requires_grad=False))
        parametrize.register_parametrization(module, name, _int8_rows(scales, weight.dtype), unsafe=True)
        del weight
    # bitsandbytes' own pair of hooks, as its 4-bit parametrization registers them: torch's
    # parametrization cache on for the experts' forward only, so a stack read once per expert is
    # dequantized once and nothing stays cached between steps; the closing hook runs even when
    # checkpointing's recompute cuts the forward short, else every dequantized stack would be pinned.
    from bitsandbytes.nn.parametrize import _disable_parametrization_cache, _enable_parametrization_cache

    for module in {id(m): m for m, _ in experts}.values():
        module.register_forward_pre_hook(_enable_parametrization_cache)
        module.register_forward_hook(_disable_parametrization_cache, always_call=True)


def _int8_rows(scales, dtype):
    """The parametrization of an 8-bit expert stack: the stored int8 rows times their scales, in
    ``dtype``. A module (a class made here, where torch is imported) whose scales move with it."""
    import torch
    from bitsandbytes.functional import int8_vectorwise_dequant

    class Int8Rows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scales", scales)
            self.dtype = dtype

        @torch.no_grad()
        def forward(self, stored):
            rows = stored.view(-1, stored.shape[-1])
            return int8_vectorwise_dequant(rows, self.scales).to(self.dtype).view(stored.shape)

    return Int8Rows()


def pad_vocab(model, tokens: int, multiple: int) -> None:
    """model.pad_vocab_to_multiple_of, as Axolotl resizes for resize_token_embeddings_to_32x: the
    embedding (and an untied output head) grow to ``tokens`` rounded up to ``multiple`` rows where
    they hold fewer, and never shrink.

    The added rows are drawn as the model initializes weights (transformers' mean_resizing off, as
    Axolotl resizes). peft then saves the grown embedding and head with the adapter (its
    save_embedding_layers "auto" sees the vocabulary differ from the base's), so merge and
    generate, which pad the base the same way, load the trained rows over the drawn ones.
    """
    rows = model.get_input_embeddings().num_embeddings
    wanted = -(-tokens // multiple) * multiple
    if rows >= wanted:
        return
    model.resize_token_embeddings(tokens, pad_to_multiple_of=multiple, mean_resizing=False)
    say(f"note: model.pad_vocab_to_multiple_of {multiple}: the embedding grows from {rows} to {wanted} rows")


def bnb_config(bits: int, quant_type: Optional[str], double_quant: Optional[bool], compute_dtype: str):
    """The BitsAndBytesConfig of a quantized base; `recipe run` loads with it and `recipe probe`
    quantizes its traced model with it (probe.py), so both get the same layers and settings.

    Args:
        bits: 4 (nf4/fp4 blocks of 64 weights) or 8 (LLM.int8, transformers' outlier threshold 6.0).
        quant_type, double_quant: the 4-bit settings (ignored for 8 bits).
        compute_dtype: torch's name of the dtype 4-bit layers compute in (``Choices.weight_dtype``).
    """
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=bool(double_quant),
                                  bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    return BitsAndBytesConfig(load_in_8bit=True)


def prepare_kbit(model, gradient_checkpointing: bool):
    """peft's k-bit preparation, as `recipe run` applies it to a quantized base (and the probe to its
    traced one): every parameter frozen, every 16-bit one (norms, embeddings, output head, biases)
    cast to fp32, input gradients on when checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def lora_config(r: int, alpha: float, dropout: float, targets, model, target_parameters: Sequence[str] = ()):
    """peft's LoraConfig for adapters of rank ``r`` on ``targets`` (as a recipe writes them) and
    on ``target_parameters`` in ``model``; the probe builds its adapters with it, as
    runner._lora_config does for a run.

    Raises:
        UnknownTargets: see :func:`lora_targets` and :func:`parameter_targets`.
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=adapter_dropout(dropout, targets, target_parameters, model),
                      task_type="CAUSAL_LM", target_modules=lora_targets(targets, model),
                      target_parameters=parameter_targets(target_parameters, model))


def adapter_dropout(dropout: float, targets, target_parameters: Sequence[str], model) -> float:
    """The lora_dropout to build peft's adapters with: 0 where peft wraps parameters too
    (lora.target_parameters, or the fused experts all-linear reaches on ALL_LINEAR_ADAPTS_EXPERTS), as
    its ParamWrapper refuses any other; :func:`drop_adapter_inputs` then gives the adapters on linear
    layers the recipe's dropout. Axolotl's rule too: dropout on linear adapters, none on parameters."""
    wraps = bool(target_parameters) or (targets == "all-linear"
                                        and model.config.model_type in ALL_LINEAR_ADAPTS_EXPERTS)
    return 0.0 if wraps else dropout


def drop_adapter_inputs(model, dropout: float) -> None:
    """Give each LoRA adapter on a linear layer built without dropout (:func:`adapter_dropout`) the
    recipe's; adapters on parameters keep none."""
    import torch
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    for module in model.modules():
        if dropout and isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
            for name, drop in module.lora_dropout.items():
                if isinstance(drop, torch.nn.Identity):
                    module.lora_dropout[name] = torch.nn.Dropout(p=dropout)


def parameter_targets(wanted: Sequence[str], model) -> Optional[list[str]]:
    """lora.target_parameters checked against the model's parameters as peft matches them (the
    name, or a name ending in "." + it): peft adapts none for a name that matches nothing, with a
    warning only. None when there are none.

    Raises:
        UnknownTargets: names that match no parameter, at $.lora.target_parameters.
    """
    if not wanted:
        return None
    names = [name for name, _ in model.named_parameters()]
    missing = [w for w in wanted if not any(peft_matches(n, w) for n in names)]
    if missing:
        fused = sorted({n.split(".", 3)[-1] for n, p in model.named_parameters() if p.dim() == 3})
        raise UnknownTargets(f"{', '.join(missing)} match no parameter of this {model.config.model_type} model"
                             + (f"; its fused expert parameters are {', '.join(fused)}" if fused else
                                ": it has no fused experts"), path="$.lora.target_parameters")
    return list(wanted)


def lora_targets(wanted, model):
    """Turn the recipe's target_modules into the module names peft matches in this model.

    "all-linear" is peft's own. "attention" becomes the architecture's query/key/value/output
    projections as the memory estimator counts them (architectures.LAYOUTS), so the estimate and
    the run adapt the same layers. Every name is checked against the model's linear layers by the
    rule fit-check applies (architectures.match_modules).

    A TargetPattern becomes the full names of the linear layers it matches in full
    (architectures.match_pattern, as fit-check matches it against the names it knows): peft would
    adapt any module it matches, an embedding too, and fit-check counts linear layers only.

    Raises:
        UnknownTargets: a name matches no linear layer of the model, or reaches its output head; a
            pattern matches no linear layer, the head, or a module that is no linear layer.
    """
    if wanted == "all-linear":
        return wanted
    import torch

    modules = dict(model.named_modules())
    linear = [name for name, module in modules.items() if isinstance(module, torch.nn.Linear)]
    output = model.get_output_embeddings()
    head = next((name for name, module in modules.items() if module is output), None)
    if isinstance(wanted, TargetPattern):
        others = [name for name, module in modules.items() if not isinstance(module, torch.nn.Linear)]
        matched = match_pattern(wanted.pattern, linear, head, others, model.config.model_type)
        paths = sorted({re.sub(r"^.*?\.\d+\.", "", name) for name in matched})
        say(f"note: lora.target_modules {wanted.pattern} -> {len(matched)} linear layers ({', '.join(paths)})")
        return matched
    try:
        names = shape_from_config(model.config.to_dict()).attention_modules() if wanted == "attention" else wanted
    except NotModeled as e:  # the shorthand is read from the layout fit-check knows; this one it does not
        attention = sorted({".".join(n.split(".")[-2:]) for n in linear if ".self_attn." in n or ".attn." in n})
        raise UnknownTargets(f"the attention shorthand is not known for {model.config.model_type} ({e.message})",
                             hint="list the names, e.g. [" + ", ".join(attention or ["q_proj", "v_proj"]) + "]",
                             path="$.lora.target_modules") from None
    match_modules(names, linear, head, model.config.model_type)
    if wanted == "attention":
        say(f"note: lora.target_modules attention -> {', '.join(names)}")
    return list(names)


def saved_modules(wanted: Sequence[str], targets, model) -> Optional[list[str]]:
    """Check lora.modules_to_save against the loaded model, as peft will match the names.

    peft trains a copy of each module whose name is a wanted name or ends with "." + it; a name
    that matches nothing is skipped without a word, and a module that is also a LoRA target is
    trained in full without its adapter. Both are refused here, as fit-check refuses them
    (architectures.Shape.match_saved), and so is a quantized layer, whose weights cannot train.

    Args:
        wanted: the recipe's lora.modules_to_save.
        targets: what :func:`lora_targets` returned ("all-linear", or module names: a pattern's
            full names).
        model: the loaded base model.

    Returns:
        The names for peft's LoraConfig, or None when there are none.

    Raises:
        UnknownTargets: at $.lora.modules_to_save, naming every module in question.
    """
    if not wanted:
        return None
    import torch

    modules = dict(model.named_modules())
    output = model.get_output_embeddings()
    head = next((name for name, module in modules.items() if module is output), None)
    linear = [name for name, module in modules.items() if isinstance(module, torch.nn.Linear) and name != head]
    adapted = set(linear) if targets == "all-linear" else {
        n for n in linear if any(peft_matches(n, t) for t in targets)}
    hits = {name: [n for n in modules if n and peft_matches(n, name)] for name in wanted}
    problems = []
    missing = [name for name, found in hits.items() if not found]
    if missing:
        top = sorted({n.rsplit(".", 1)[-1] for n in modules if n})
        problems.append(f"{', '.join(missing)} match no module of this {model.config.model_type} model; its modules "
                        f"are named {', '.join(top)}")
    both = [name for name, found in hits.items() if adapted & set(found)]
    if both:
        named = targets if isinstance(targets, str) else ", ".join(targets[:4]) + (
            f" and {len(targets) - 4} more" if len(targets) > 4 else "")  # a pattern's full names are many
        problems.append(f"{', '.join(both)} would get an adapter (target_modules {named}) and be trained in full; "
                        "peft trains it in full only")
    frozen = [name for name, found in hits.items()
              if any(not p.dtype.is_floating_point for n in found for p in modules[n].parameters(recurse=False))]
    if frozen:
        problems.append(f"{', '.join(frozen)} is quantized: its 4/8-bit weights cannot be trained in full")
    if problems:
        raise UnknownTargets("; ".join(problems), hint="list modules to train in full by their name in the model, "
                             "e.g. [embed_tokens, lm_head], and leave them out of target_modules",
                             path="$.lora.modules_to_save")
    return list(wanted)
