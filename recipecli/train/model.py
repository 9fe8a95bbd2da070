"""Loading what a recipe trains: the device, the tokenizer, the base model (4/8-bit) and the layers
LoRA adapts. Shared by `recipe run` (runner.py) and `recipe merge` / `recipe generate` (after.py).

torch, transformers and peft are imported inside the functions that use them, so importing
recipecli (``recipe validate``, ``recipe --help``) never pays for them.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from ..errors import RecipeError, UsageError
from ..fit.architectures import match_modules, shape_from_config
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices
from ..read.recipe import Recipe


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


def _load_failure(what: str, error: Exception) -> RecipeError:
    """The error from_pretrained raised, with the fix that usually applies to its kind."""
    hints = {
        ValueError: "an unknown model type needs a newer transformers; a model that ships its own code needs "
                    "model.trust_remote_code: true (only for code you trust)",
        ImportError: "install the package the message names; instead of flash_attn, training.attention auto uses sdpa",
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
    """The model's tokenizer, as the recipe names it.

    Raises:
        RecipeError: it cannot be found (offline, missing folder, wrong id or revision) or needs
            remote code or a package that is missing.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(_source(recipe), revision=recipe.model.revision,
                                             trust_remote_code=recipe.model.trust_remote_code)
    # OSError: a missing repo, file or connection; ValueError: code the model ships without
    # trust_remote_code, or a tokenizer class this transformers lacks; ImportError: a missing package.
    except (OSError, ValueError, ImportError) as e:
        raise _load_failure(f"the tokenizer of {recipe.model.id}", e) from e


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
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, choices.weight_dtype)  # precision.choose decides it, as the estimate counts it
    quant = recipe.quantization if quantize else None
    config = None
    if quant is not None and quant.bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.type,
                                    bnb_4bit_use_double_quant=quant.double_quant, bnb_4bit_compute_dtype=dtype)
    elif quant is not None:
        config = BitsAndBytesConfig(load_in_8bit=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            _source(recipe), revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code,
            dtype=dtype, attn_implementation=choices.attention, quantization_config=config,
            device_map={"": 0} if cuda else None)
    # ValueError: an architecture this transformers does not know, remote code without
    # trust_remote_code, an attention the model lacks; ImportError: flash-attn or bitsandbytes missing.
    except (OSError, ValueError, ImportError) as e:
        raise _load_failure(f"the model {recipe.model.id}", e) from e
    if config is not None and train:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.training.gradient_checkpointing)
    return model


def lora_targets(wanted, model):
    """Turn the recipe's target_modules into the module names peft matches in this model.

    "all-linear" is peft's own. "attention" becomes the architecture's query/key/value/output
    projections as the memory estimator counts them (architectures.LAYOUTS), so the estimate and
    the run adapt the same layers. Every name is checked against the model's linear layers by the
    rule fit-check applies (architectures.match_modules).

    Raises:
        UnknownTargets: a name matches no linear layer of the model, or reaches its output head.
    """
    if wanted == "all-linear":
        return wanted
    import torch

    names = shape_from_config(model.config.to_dict()).attention_modules() if wanted == "attention" else wanted
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    output = model.get_output_embeddings()
    head = next((name for name, module in model.named_modules() if module is output), None)
    match_modules(names, linear, head, model.config.model_type)
    if wanted == "attention":
        say(f"note: lora.target_modules attention -> {', '.join(names)}")
    return list(names)
