"""What a recipe's precision settings become on a card: the dtypes of the run, decided once.

Pure: the card arrives as data (``gpu_catalog.Gpu``, None for the CPU); nothing here asks CUDA.
The runner loads and trains with these choices and the estimate counts them, so the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import InvalidRecipe, Problem, json_path
from ..read.recipe import Recipe
from .gpu_catalog import Gpu

DtypeName = Literal["float16", "bfloat16", "float32"]  # torch's names: getattr(torch, name)
DTYPE_OF: dict[str, DtypeName] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "pure_fp16": "float16"}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# The attention kernels that keep flash attention's tensors (no seq x seq matrix), from compute
# capability 8.0; the probe traces both as sdpa's flash kernel.
FLASH_KERNELS = ("flash_attention_2", "flex_attention")
# Causal language models whose attention transformers (5.24) runs without sdpa (_supports_sdpa
# False: Gemma 2's and VaultGemma's logit softcapping, gpt-oss' attention sinks, BLOOM's ALiBi...):
# asked for sdpa, from_pretrained refuses them, so attention auto is eager there.
NO_SDPA = frozenset({
    "big_bird", "bigbird_pegasus", "bloom", "cpmant", "deepseek_v4", "falcon_mamba", "flint", "gemma2", "git",
    "got_ocr2", "gpt_neo", "gpt_neox_japanese", "gpt_oss", "granite_swa", "granitemoe_swa", "hy_v4",
    "inkling2_loop_text", "inkling2_text", "mamba", "mamba2", "megatron-bert", "mimo_v2_flash", "mpt", "mvp",
    "openai-gpt", "prophetnet", "reformer", "rembert", "roformer", "rwkv", "trocr", "vaultgemma", "xglm", "xlm",
    "xlnet", "xlstm",
})


@dataclass(frozen=True)
class Choices:
    """What the recipe's "auto" settings become on a GPU, and the dtype of every kind of tensor.

    The runner loads (``model.load_model``), builds the trainer and enforces
    (``model.enforce_dtypes``) exactly these; the estimate (``verdict.setup_for``) counts them.
    """

    precision: Literal["bf16", "fp16", "fp32", "pure_fp16"]
    attention: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"]
    compute_dtype: Optional[DtypeName]  # bitsandbytes' compute dtype: quantized bases only
    notes: tuple[str, ...]
    weight_dtype: DtypeName  # what from_pretrained loads the base in (its 16-bit parts when quantized)
    trainable_dtype: DtypeName  # the trained parameters: LoRA adapters, or every weight (method full)
    autocast_dtype: Optional[DtypeName]  # the forward's torch.autocast dtype; None: no autocast
    grad_scaler: bool  # fp16's AMP GradScaler scales the loss and unscales fp32 gradients
    tf32: bool = False  # fp32 matmuls in TF32 (training.tf32 on a card that has it); changes no memory
    activation_offloading: bool = False  # training.activation_offloading on a GPU (TRL's works on CUDA only)
    # sdpa's grouped-query attention run with the key/value heads repeated (model.repeated_kv_heads):
    # the card has no fused kernel for grouped heads in this dtype (see choose)
    gqa_repeat: bool = False

    @property
    def matmul_dtype(self) -> DtypeName:
        """What matmuls compute in: bitsandbytes' compute dtype, else the training precision."""
        return self.compute_dtype or DTYPE_OF[self.precision]


def dtypes(method: str, quantized: bool, precision: str, compute_dtype: Optional[DtypeName]) -> dict:
    """The dtypes of a run, from what decides them; the fields of ``Choices`` after ``notes``.

    Args:
        method: qlora, lora or full.
        quantized: the base is loaded in 4 or 8 bits.
        precision: the resolved training precision (bf16, fp16, fp32 or pure_fp16, never auto).
        compute_dtype: bitsandbytes' resolved compute dtype (quantized bases only).

    Returns:
        weight_dtype, trainable_dtype, autocast_dtype and grad_scaler, by name.
    """
    half = DTYPE_OF[precision]
    scaler = precision == "fp16"
    if quantized:
        weight = compute_dtype or half  # the 16-bit leftovers of a quantized base compute in it
    else:
        # fp16 mixed precision unscales fp32 gradients: a full fine-tune under it keeps fp32 weights.
        weight = "float32" if method == "full" and scaler else half
    if method == "full":
        trainable = weight
    elif quantized and precision == "bf16":
        # TRL casts the adapters of quantized models to bf16 (trl/trainer/sft_trainer.py,
        # SFTTrainer.__init__, "When using QLoRA, the PEFT adapter weights are converted to bf16"),
        # as the QLoRA paper trains them; kept where bf16 is the precision.
        trainable = "bfloat16"
    else:
        # fp16: the GradScaler refuses fp16 gradients ("Attempting to unscale FP16 gradients") and
        # bf16 is emulated, slowly, before compute capability 8.0, so TRL's bf16 cast is undone;
        # fp32: what was asked. 16-bit bases: peft's get_peft_model upcasts adapters to fp32 itself
        # (peft/tuners/tuners_utils.py, cast_adapter_dtype).
        trainable = "float32"
    return {"weight_dtype": weight, "trainable_dtype": trainable,
            "autocast_dtype": None if precision in ("fp32", "pure_fp16") else half, "grad_scaler": scaler}


def portable(recipe: Recipe) -> Choices:
    """fp32 with sdpa attention: what every machine runs, whatever card the recipe was made for."""
    quantized = recipe.quantization is not None
    compute = "float32" if quantized else None
    return Choices("fp32", "sdpa", compute, (), **dtypes(recipe.method, quantized, "fp32", compute))


def choose(recipe: Recipe, gpu: Optional[Gpu], model_type: Optional[str] = None) -> Choices:
    """Resolve precision, attention and the 4-bit compute dtype for a GPU, checking what it supports.

    Args:
        recipe: the loaded recipe.
        gpu: the card; None trains on the CPU. A card with unknown compute capability (``--vram``)
            is not checked: bf16 and fp16 need the same memory, so the estimate does not depend on it.
        model_type: the model's config.json model_type, where known: attention auto is eager, and
            sdpa refused, for one transformers runs without sdpa (:data:`NO_SDPA`).

    Returns:
        The resolved settings and the dtype of every kind of tensor (:func:`dtypes`), with a note
        for every choice a user might not expect. Without a GPU, fp16/bf16 precision and compute
        dtype run as fp32.

    Raises:
        InvalidRecipe: the recipe asks for something the card cannot do (bf16 or FlashAttention 2
            below compute capability 8.0, FlashAttention 2 without a GPU); each problem names the knob
            to change.
    """
    training = recipe.training
    problems: list[Problem] = []
    notes: list[str] = []

    def problem(path: tuple, message: str, hint: str) -> None:
        problems.append(Problem(recipe.locate(path), json_path(path), message, hint))

    cc_known = gpu is not None and gpu.compute_capability is not None
    label = "no GPU" if gpu is None else f"{gpu.name} (CC {gpu.capability_text})"
    if gpu is not None and not cc_known:
        # fp16 is the larger estimate (full fine-tuning keeps fp32 weights under it), so a card
        # of unknown generation is taken to be pre-Ampere.
        auto = "; precision auto counted as fp16" if training.precision == "auto" else ""
        notes.append(f"{gpu.name}: compute capability unknown, so bf16/FlashAttention 2 support is not "
                     f"checked{auto} (name the card with --gpu to check it)")

    precision = training.precision
    if gpu is None:
        # The CPU has no fp16/bf16 mixed precision worth having; a recipe written for a GPU still runs.
        if precision == "auto":
            notes.append("no GPU: precision auto -> fp32")
        elif precision != "fp32":
            notes.append(f"no GPU: precision {precision} runs as fp32 on the CPU")
        precision = "fp32"
    elif precision == "auto":
        if not cc_known:
            precision = "fp16"
        elif not gpu.supports_bf16:
            precision = "fp16"
            notes.append(f"{label} has no bf16: precision auto -> fp16")
        else:
            precision = "bf16"
    elif precision == "bf16" and cc_known and not gpu.supports_bf16:
        problem(("training", "precision"), f"bf16 needs compute capability >= 8.0; {label} lacks it",
                "set training.precision to auto or fp16")

    no_sdpa = model_type in NO_SDPA
    attention = training.attention
    if attention == "auto":
        attention = "eager" if no_sdpa else "sdpa"
        if no_sdpa:
            notes.append(f"transformers runs {model_type}'s attention without sdpa: attention auto -> eager "
                         "(each layer keeps its attention matrices, counted)")
    elif attention == "sdpa" and no_sdpa:
        problem(("training", "attention"), f"transformers runs {model_type}'s attention without sdpa",
                "set training.attention to auto (eager for this model)")
    # FlexAttention's Triton kernels need Ampere too: below it (and on the CPU, uncompiled) torch runs
    # a dense fallback that keeps the whole attention matrix, and fails in fp16.
    if attention in FLASH_KERNELS and (
            gpu is None or (cc_known and not gpu.supports_flash_attention_2)):
        lacking = " (an NVIDIA GPU); there is no GPU here" if gpu is None else f"; {label} lacks it"
        problem(("training", "attention"), f"{attention} needs compute capability >= 8.0{lacking}",
                "set training.attention to auto (eager for this model: each layer keeps its attention matrices)"
                if no_sdpa else "set training.attention to auto (sdpa: same memory, slightly slower)")

    compute_dtype = None
    if recipe.quantization is not None:
        compute_dtype = recipe.quantization.compute_dtype
        if compute_dtype == "auto":
            compute_dtype = DTYPE_OF[precision]
        elif gpu is None and compute_dtype != "float32":
            notes.append(f"no GPU: quantization.compute_dtype {compute_dtype} runs as float32 on the CPU")
            compute_dtype = "float32"
        elif compute_dtype == "bfloat16" and cc_known and not gpu.supports_bf16:
            problem(("quantization", "compute_dtype"), f"bfloat16 needs compute capability >= 8.0; {label} lacks it",
                    "set quantization.compute_dtype to auto (follows training.precision)")

    tf32 = training.tf32 and cc_known and gpu.supports_tf32
    if training.tf32 and not tf32:
        # Asked for speed, not for a result: a card without TF32 runs plain fp32 (Axolotl configs set it freely).
        notes.append(f"{label} has no TF32 (compute capability >= 8.0): tf32 changes nothing here")

    offloading = training.activation_offloading and gpu is not None
    if training.activation_offloading and not offloading:
        notes.append("no GPU: activation_offloading changes nothing on the CPU (the activations are in host memory)")

    if problems:
        raise InvalidRecipe(problems)
    resolved = dtypes(recipe.method, recipe.quantization is not None, precision, compute_dtype)
    # On CUDA only FlashAttention and cuDNN run sdpa's grouped-query attention (enable_gqa, which
    # transformers passes when the batch has no mask), both for 16-bit inputs on compute capability
    # 8.0 and later; torch's memory-efficient kernel takes no grouped heads. Anywhere else torch
    # falls back to its math kernel, which keeps each layer's seq x seq attention matrix in fp32
    # (measured on an H200 in fp32: benchmarks/sdpa_backends.py, BENCHMARKS.md). The run repeats
    # the key/value heads instead, which the memory-efficient kernel takes at any length.
    attention_dtype = resolved["autocast_dtype"] or compute_dtype or resolved["weight_dtype"]
    gqa_repeat = attention == "sdpa" and gpu is not None and (
        attention_dtype == "float32" or not cc_known or not gpu.supports_flash_attention_2)
    return Choices(precision, attention, compute_dtype, tuple(notes), **resolved, tf32=tf32,
                   activation_offloading=offloading, gqa_repeat=gqa_repeat)


