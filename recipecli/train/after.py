"""After training: merge the adapter into its base model, and ask the trained model something.

Both read the run folder only (its recipe.yaml says which base, which quantization, which
prompt format), so they work on a run made on another machine.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from ..errors import InvalidRecipe, UsageError
from ..fit import hardware
from ..fit.gpu_catalog import Gpu
from ..fit.precision import Choices, choose, portable
from ..read.load import load_recipe
from ..read.recipe import Recipe
from . import checkpoints, claim, data, runfolder
from .model import check_remote_code, load_model, load_tokenizer, model_type_of, say, training_gpu


def _run_recipe(run_dir: Path) -> Recipe:
    """The recipe a run folder was trained with.

    Raises:
        UsageError: the folder is not a run folder, or training did not finish.
        InvalidRecipe: its recipe.yaml no longer loads (e.g. the base model folder moved).
    """
    if not (run_dir / runfolder.RECIPE).is_file():
        raise UsageError(f"{run_dir} is not a run folder (it has no {runfolder.RECIPE})")
    recipe = load_recipe(run_dir / runfolder.RECIPE)
    trained = run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)
    if not trained.is_dir():
        raise UsageError(f"{run_dir} has no {trained.name}/: training did not finish "
                         f"(continue it with `recipe run {run_dir / runfolder.RECIPE} --resume`)")
    return recipe


def _choices_here(recipe: Recipe, gpu: Optional[Gpu]) -> Choices:
    """The run's precision and attention where this machine has them, else fp32 with sdpa.

    A run trained in bf16 or with FlashAttention 2 on a new card can still be merged or asked on
    an older card or the CPU: those settings only made training fast, and fp32 with sdpa
    computes the same model everywhere.
    """
    try:
        return choose(recipe, gpu, model_type_of(recipe))
    except InvalidRecipe as e:
        unsupported = "; ".join(p.message for p in e.problems)
        say(f"note: {unsupported}: loading in fp32 with sdpa attention instead")
        return portable(recipe)


def _saved_tokenizer(recipe: Recipe, folder: Path):
    """The tokenizer saved beside the trained weights (the one the run trained with, model.tokenizer's
    too), loaded as the recipe loads the base one."""
    saved = dataclasses.replace(recipe.model, id=str(folder), tokenizer=None)
    return load_tokenizer(dataclasses.replace(recipe, model=saved))


def merge(run_dir: Path, *, gpus: Optional[Sequence[Gpu]] = None, trust_remote_code: bool = False) -> Path:
    """Merge the LoRA adapter into the base model and save it, with the tokenizer, to run_dir/merged.

    The base is loaded unquantized (a qlora base too: 4-bit weights cannot absorb an adapter) in
    the run's precision (16-bit where the GPU has it, 32-bit on the CPU or where the GPU lacks the
    run's bf16), and merged on the CPU, which holds a model that the GPU could only hold quantized.

    Args:
        run_dir: a finished run folder.
        gpus: the GPUs whose precision the merge uses; None detects them.
        trust_remote_code: the command line allows the model's own code (``--trust-remote-code``).

    Returns:
        The merged model's folder, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        UsageError: not a finished run folder, a full fine-tune (which has nothing to merge), or
            a recipe that trusts remote code without ``trust_remote_code``.
    """
    recipe = _run_recipe(run_dir)
    check_remote_code(recipe, trust_remote_code, f"recipe merge {run_dir}")
    if recipe.lora is None:
        raise UsageError(f"{run_dir} is a full fine-tune: {run_dir / runfolder.FULL_MODEL} already is the whole model")
    from peft import PeftModel

    gpus = hardware.detect() if gpus is None else tuple(gpus)
    choices = _choices_here(recipe, gpus[0] if gpus else None)
    with claim.holding(run_dir):  # no run replaces the adapter while it is read and merged/ is written
        base = load_model(recipe, choices, cuda=False, quantize=False, train=False)
        merged = PeftModel.from_pretrained(base, str(run_dir / runfolder.ADAPTER)).merge_and_unload()
        # Written beside and renamed into place: an interrupted merge leaves no half model behind.
        target = run_dir / runfolder.MERGED
        partial = checkpoints.partial(target)
        checkpoints.discard(partial)
        try:
            merged.save_pretrained(str(partial))
            _saved_tokenizer(recipe, run_dir / runfolder.ADAPTER).save_pretrained(str(partial))
        except BaseException:
            checkpoints.discard(partial)  # a full disk gets its space back
            raise
        checkpoints.publish(partial, target)
    return target


def generate(run_dir: Path, prompt: str, max_new_tokens: int = 128, *, input: str = "",
             gpus: Optional[Sequence[Gpu]] = None, trust_remote_code: bool = False) -> str:
    """The trained model's answer to a prompt, formatted exactly as the training examples were.

    alpaca data: the prompt is the instruction (and ``input`` the Input section) in the alpaca
    template; chat and sharegpt data: a user turn through the tokenizer's chat template;
    prompt_completion and text: as given. Decoding is greedy, so the same run and prompt always
    give the same answer.

    Args:
        run_dir: a finished run folder.
        prompt: what to ask.
        max_new_tokens: the most tokens to generate.
        input: alpaca only: the context of the instruction.
        gpus: None detects them; the first one generates, the CPU without one.
        trust_remote_code: the command line allows the model's own code (``--trust-remote-code``).

    Returns:
        The completion alone, without the prompt and special tokens.

    Raises:
        UsageError: not a finished run folder, an input for data that has no Input section, or a
            recipe that trusts remote code without ``trust_remote_code``.
    """
    recipe = _run_recipe(run_dir)
    check_remote_code(recipe, trust_remote_code, f"recipe generate {run_dir} --prompt ...")
    alpaca = data.layout(recipe) != "messages" and recipe.data.datasets[0].format == "alpaca"
    if input and not alpaca:
        raise UsageError("an input is part of alpaca prompts only; put the whole question in the prompt")

    gpus = hardware.detect() if gpus is None else tuple(gpus)
    gpu = training_gpu(gpus)
    choices = _choices_here(recipe, gpu)
    if recipe.lora is None:
        trained = dataclasses.replace(recipe.model, id=str((run_dir / runfolder.FULL_MODEL).absolute()))
        model = load_model(dataclasses.replace(recipe, model=trained), choices, cuda=gpu is not None, train=False)
        tokenizer = _saved_tokenizer(recipe, run_dir / runfolder.FULL_MODEL)
    else:
        from peft import PeftModel

        base = load_model(recipe, choices, cuda=gpu is not None, train=False)
        model = PeftModel.from_pretrained(base, str(run_dir / runfolder.ADAPTER))
        tokenizer = _saved_tokenizer(recipe, run_dir / runfolder.ADAPTER)
    model.eval()
    inputs = _prompt_inputs(recipe, tokenizer, prompt, input).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=_pad_token_id(tokenizer))
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, its end-of-sequence id when it has none (0 is a valid id)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _prompt_inputs(recipe: Recipe, tokenizer, prompt: str, input: str = ""):
    """Token ids of the prompt, made the way TRL made the training prompts (trl.data_utils._tokenize)."""
    if data.layout(recipe) == "messages":
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True, return_tensors="pt")
    # A mix of alpaca and prompt_completion trains on both; the first dataset sets the convention.
    first = recipe.data.datasets[0]
    text = data.alpaca_prompt(prompt, input, first.preamble) if first.format == "alpaca" else prompt
    return tokenizer(text=text, return_tensors="pt")
