"""The estimator's view of a run: the recipe reduced to plain values (``Setup``), and the bytes
per element each kind of tensor takes under it (``Dtypes``). Shared by estimate.py and
activations.py, which both read these and nothing else of the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..read.recipe import Attention, Method, Optimizer, QuantType, Targets

# What training.attention "auto" resolves among.
ATTENTION_KERNELS = tuple(a for a in get_args(Attention) if a != "auto")
# How the work is spread over GPUs (the CLI's --parallelism); how the loss is computed
# (benchmarks/calibration.py describes stacks other than `recipe run`'s).
Parallelism = Literal["none", "ddp", "fsdp", "zero2", "zero3"]
Loss = Literal["chunked", "fp32_logits"]
# How sdpa runs grouped-query attention on a batch without a mask: torch's fused kernel for grouped
# heads (flash or cuDNN on CUDA, or the CPU's), the key/value heads repeated first (`recipe run` on a
# card without such a kernel for its dtype: precision.choose), or torch's math kernel (what stock
# transformers gets on such a card; for published stacks in benchmarks/calibration.py).
GroupedAttention = Literal["native", "repeat", "math"]


@dataclass(frozen=True)
class Setup:
    """Everything the estimator needs to know about a run, as plain values.

    The fields after ``parallelism`` describe the software stack; their defaults are what
    ``recipe run`` does, other values let benchmarks/calibration.py describe published runs.
    """

    method: Method
    weight_bits: int  # storage of base weights: 4, 8, 16 or 32
    quant_type: QuantType | None  # when weight_bits == 4
    double_quant: bool
    compute_bytes: int  # 2 for fp16/bf16 compute, 4 for fp32
    lora_r: int | None
    lora_targets: Targets  # "all-linear" | "attention" | module names | TargetPattern
    micro_batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    optimizer: Optimizer
    attention: str  # one of ATTENTION_KERNELS
    gradient_accumulation_steps: int  # > 1 keeps gradients alive through the next forward
    lora_dropout: float  # > 0 saves a mask and a copy of each adapter's input
    num_gpus: int = 1
    parallelism: Parallelism = "none"
    loss: Loss = "chunked"  # chunked (TRL's fused head) | fp32_logits (the model's own loss)
    autocast: bool = True  # the Trainer runs the forward under torch.autocast
    kbit_upcast: bool = True  # prepare_model_for_kbit_training upcasts 16-bit weights to fp32
    # Bytes per LoRA adapter parameter: `recipe run` passes precision.choose's trainable_dtype
    # (verdict.setup_for); None is TRL's own rule, for the published stacks of benchmarks/.
    adapter_bytes: int | None = None
    # Rows of a micro-batch shorter than the longest are padded, so attention gets a mask; False
    # when every row is full length (packing, or the probe's worst-case batch).
    padded: bool = True
    # TRL's padding-free packing: the micro-batch arrives as one row of micro_batch_size x seq_len
    # tokens; sdpa then gets a block-diagonal mask over the whole row, flash_attention_2 the
    # sequence boundaries instead (activations.py).
    packing: bool = False
    # lora.modules_to_save: modules peft trains in full beside the adapters (architectures.match_saved).
    modules_to_save: tuple[str, ...] = ()
    use_dora: bool = False  # lora.use_dora: not modelled, the estimate refuses it (estimate.estimate)
    qat: bool = False  # training.qat: not modelled, the estimate refuses it (estimate.estimate)
    liger_kernel: bool = False  # training.liger_kernel: said in the estimate's explanations, same bytes
    activation_offloading: bool = False  # likewise: counted on the GPU, an upper bound
    moe_experts: bool = False  # quantization.moe_experts: a mixture of experts' fused experts in 4 bits too
    unfrozen: tuple[str, ...] = ()  # training.unfrozen_parameters: the weights full fine-tuning trains; () all
    target_parameters: tuple[str, ...] = ()  # lora.target_parameters: adapters on parameters (experts)
    grouped_attention: GroupedAttention = "native"


@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of each kind of tensor, decided by method, weight_bits and autocast."""

    weight: float  # quantized or plain block linear weights
    other: int  # embeddings, head, norms, biases
    train: int  # trainable parameters, their gradients and torch optimizer states
    compute: int  # matmuls (autocast dtype)
    residual: int  # residual stream, norms
    matmul_out: int  # outputs of block linears, MLP activations
    attention: int  # what the attention kernel saves
    adapter_in: int  # copy of its input each adapter saves
    dropout_mask: int  # what dropout keeps beside it, per element


def dtypes_of(s: Setup) -> Dtypes:
    kbit = s.weight_bits in (4, 8)
    c = s.compute_bytes
    # prepare_model_for_kbit_training upcasts what bitsandbytes left in 16-bit to fp32.
    other = (4 if s.kbit_upcast else c) if kbit else s.weight_bits // 8
    # TRL casts the adapters of quantized models to bf16; peft keeps the others in fp32.
    lora = s.adapter_bytes if s.adapter_bytes is not None else (2 if kbit else 4)
    train = lora if s.method != "full" else s.weight_bits // 8
    # Linear4bit/8bitLt cast their output back to the input's dtype (fp32 after the upcast).
    matmul_out = other if kbit else (c if s.autocast else s.weight_bits // 8)
    adapter_in = c if s.autocast else lora
    # CUDA's fused native_dropout keeps a bool mask beside the dropped copy (the probe traces the
    # same kernel on the CPU: train/probe.py, "dropout").
    mask = 1 if s.lora_dropout > 0 else 0
    return Dtypes(weight=s.weight_bits / 8, other=other, train=train, compute=c, residual=other,
                  matmul_out=matmul_out, attention=c if s.autocast else matmul_out,
                  adapter_in=adapter_in, dropout_mask=mask)
