"""Peak training memory per GPU of a recipe, by component, as plain arithmetic.

Models the stack ``recipe run`` uses: transformers + peft + bitsandbytes + TRL's SFTTrainer.
What each component counts, and why, is written next to it; the numbers come from reading
those libraries: bitsandbytes ``Params4bit``/``QuantState`` (NF4/FP4 packed two per byte,
fp32 absmax per 64 weights, or with double quant an 8-bit absmax plus fp32 constants per 256
blocks), peft's ``prepare_model_for_kbit_training`` (upcasts every non-quantized fp16/bf16
parameter, embeddings and head included, to fp32), TRL casting LoRA weights of quantized
models to bf16 (kept under bf16 only: the runner makes them fp32 otherwise, and the adapters
are counted in the dtype ``precision.dtypes`` decides) and computing the loss in tiles
(``add_fused_lm_head``), and transformers'
``ForCausalLMLoss`` (``logits.float()``) for stacks that materialize logits.
The activation and logits arithmetic is in activations.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from . import activations
from ..read.recipe import Bits, Method, Optimizer
from ..units import GIB, gib
from .architectures import Shape
from .setup import ATTENTION_KERNELS, Dtypes, Loss, Parallelism, Setup, dtypes_of

# CUDA context, cuBLAS/cuDNN workspaces and the bitsandbytes kernels: what nvidia-smi shows
# before the first tensor is allocated.
CUDA_CONTEXT_BYTES = GIB // 2
# What the caching allocator holds beyond the live tensors (block rounding, fragmentation).
ALLOCATOR_SLACK = 0.05


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    explanation: str  # one line a user reads: how it was computed, with the numbers


@dataclass(frozen=True)
class Estimate:
    components: tuple[Component, ...]
    base_params: int  # the base model alone, exactly its published count (no adapters)
    trainable_params: int  # the adapters for LoRA methods, every weight for full fine-tuning

    @property
    def device_bytes(self) -> int:
        """What the process holds on the card at the peak, as nvidia-smi shows it: the reserved
        bytes plus the CUDA context. The verdict compares this with the card."""
        return sum(c.bytes for c in self.components)

    @property
    def allocated_bytes(self) -> int:
        """Live tensors at the peak: torch.cuda.max_memory_allocated()."""
        return sum(c.bytes for c in self.components if c.name != "cuda_overhead")

    @property
    def reserved_bytes(self) -> int:
        """What the caching allocator holds at the peak: torch.cuda.max_memory_reserved()."""
        return round(self.allocated_bytes * (1 + ALLOCATOR_SLACK))


def lora_modules(shape: Shape, targets: str | tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """The linear layers of one decoder layer that get adapters, matched as peft matches them.

    Args:
        shape: the model.
        targets: "all-linear" (every linear layer but the output head), "attention", or module
            names/suffixes such as ("q_proj", "v_proj").

    Returns:
        (in_features, out_features) by path inside the layer.

    Raises:
        UnknownTargets: a name matches no linear layer, or reaches the output head
            (architectures.match_modules, the rule `recipe run` applies too).
    """
    if targets == "all-linear":
        return shape.linear_modules()
    return shape.match_targets(shape.attention_modules() if targets == "attention" else targets)


def _check(s: Setup) -> None:
    # The recipe was validated already; a bad Setup is a bug in the caller, so it crashes.
    allowed = {"method": get_args(Method), "optimizer": get_args(Optimizer),
               "attention": ATTENTION_KERNELS, "parallelism": get_args(Parallelism),
               "loss": get_args(Loss), "compute_bytes": (2, 4), "adapter_bytes": (None, 2, 4),
               "weight_bits": get_args(Bits) if s.method == "qlora" else (16, 32)}
    for field, values in allowed.items():
        if getattr(s, field) not in values:
            raise ValueError(f"Setup.{field}={getattr(s, field)!r}; expected one of {values}")
    if s.method != "full" and not s.lora_r:
        raise ValueError("Setup.lora_r is required for LoRA methods")


def _quant_constants(shape: Shape, s: Setup) -> tuple[float, str]:
    layers, mods = shape.num_hidden_layers, shape.linear_modules().values()
    if s.weight_bits == 8:
        rows = layers * sum(fout for _, fout in mods)
        return rows * 4, f"LLM.int8 scales: {rows:,} output rows x 4 bytes (fp32)"
    blocks = [-(-fin * fout // 64) for fin, fout in mods]
    if s.double_quant:  # 8-bit absmax per block; fp32 absmax per 256 blocks, 256-entry code
        total = sum(b + 4 * -(-b // 256) + 4 * 256 for b in blocks) * layers
        how = "1-byte absmax per 64 weights + fp32 constants per 256 blocks (double quant)"
    else:
        total = sum(4 * b for b in blocks) * layers
        how = "fp32 absmax per 64 weights"
    return total, f"{s.quant_type} constants: {how}"


def _optimizer(shape: Shape, s: Setup, dt: Dtypes, adapters: dict, trainable: int):
    """Optimizer states, step temporaries and how they were counted.

    Raises:
        ValueError: an optimizer without a memory model here (a caller bug: every
            ``read.recipe.Optimizer`` has its branch, and a new one must get its own).
    """
    name, n = s.optimizer, trainable
    if name == "adamw_torch":
        # torch's foreach AdamW keeps both moments in the parameters' dtype and allocates one
        # more parameter-sized buffer (sqrt of the second moment) during step().
        return (2 * dt.train * n, dt.train * n,
                f"AdamW: 2 moments x {dt.train} bytes x {n:,} trainable weights")
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        paged = ", paged: can spill to CPU RAM" if name.startswith("paged") else ""
        return (n * (2 + 8 / 256), 0,
                f"8-bit AdamW: 2 one-byte moments + fp32 absmax per 256 values x {n:,}{paged}")
    if name == "paged_adamw_32bit":
        return 8 * n, 0, f"paged 32-bit AdamW: 2 fp32 moments x {n:,} (can spill to CPU RAM)"
    if name == "sgd":
        return 0, 0, "SGD without momentum keeps no state"
    if name != "adafactor":
        # Costing an unknown optimizer like another would give a wrong verdict without a word.
        raise ValueError(f"no memory model for optimizer {name!r}; expected one of {get_args(Optimizer)}")
    # Adafactor: an fp32 row and column vector per trainable matrix (vectors are negligible);
    # step() works on fp32 copies of the largest one (gradient, update, parameter).
    if adapters:
        per_layer = [(s.lora_r, f) for f in sum(adapters.values(), ())]
        others = []
    else:
        per_layer = list(shape.linear_modules().values())
        others = [(shape.vocab_size, shape.hidden_size)] * (1 if shape.tie_word_embeddings else 2)
    values = shape.num_hidden_layers * sum(map(sum, per_layer)) + sum(map(sum, others))
    largest = max(a * b for a, b in per_layer + others)
    return 4 * values, 12 * largest, f"Adafactor: factored fp32 moments ({values:,} values)"


def _weights(shape: Shape, s: Setup, dt: Dtypes) -> tuple[float, str]:
    br = shape.breakdown()
    if s.weight_bits >= 16:
        return br.total * dt.weight, f"{br.total:,} weights x {dt.weight:g} bytes"
    other = br.total - br.block_linear
    return (br.block_linear * dt.weight + other * dt.other,
            f"{br.block_linear:,} block weights x {dt.weight:g} byte ({s.weight_bits}-bit) + "
            f"{other:,} embedding/head/norm weights x {dt.other} bytes"
            + (" (fp32 after prepare_model_for_kbit_training)" if s.kbit_upcast else ""))


def estimate(shape: Shape, setup: Setup) -> Estimate:
    """Peak training memory per GPU.

    The peak is the larger of two moments: the end of the forward pass (every saved
    activation, the loss working set) and the end of the backward pass / the optimizer step
    (every gradient, the optimizer's temporaries). Components are what is alive at the larger.

    Args:
        shape: the model.
        setup: method, precision, batch, optimizer and parallelism.

    Returns:
        The components, parameter counts and total.

    Raises:
        UnknownTargets: a LoRA target names no linear layer of the model, or its output head.
        ValueError: the setup is inconsistent (a caller bug, never a user's recipe).
    """
    s = setup
    _check(s)
    dt = dtypes_of(s)
    br, layers = shape.breakdown(), shape.num_hidden_layers
    tokens = s.micro_batch_size * s.seq_len
    adapters = lora_modules(shape, s.lora_targets) if s.method != "full" else {}
    lora_params = layers * sum(s.lora_r * (fin + fout) for fin, fout in adapters.values())
    trainable = lora_params if adapters else br.total
    # fsdp/zero3 shard everything; zero2 gradients and optimizer states; ddp copies gradients.
    shard_w = s.num_gpus if s.parallelism in ("fsdp", "zero3") else 1
    shard_g = s.num_gpus if s.parallelism in ("fsdp", "zero2", "zero3") else 1

    weights, weights_how = _weights(shape, s, dt)
    weights /= shard_w
    if shard_w > 1:  # the unsharded parameters of the running and the prefetched layer
        gathered = 2 * max(br.block_linear // layers, br.embedding) * dt.weight
        weights += gathered
        weights_how += f", sharded over {s.num_gpus} GPUs + {gib(gathered)} gathered"
    kbit = s.weight_bits < 16
    quant, quant_how = _quant_constants(shape, s) if kbit else (0, "weights are not quantized")
    biggest = max(fin * fout for fin, fout in shape.linear_modules().values())
    dequant = biggest * dt.compute if kbit else 0
    states, step_temp, opt_how = _optimizer(shape, s, dt, adapters, trainable)
    states, step_temp = states / shard_g, step_temp / shard_g
    grads = trainable * dt.train / shard_g * (2 if s.parallelism == "ddp" else 1)
    saved, in_backward, act_how = activations.saved_bytes(shape, s, dt, adapters, tokens)
    loss, loss_how = activations.loss_bytes(shape, s, dt, tokens)

    if s.gradient_accumulation_steps > 1:
        early, grad_how = grads, "kept across micro-batches"
    elif adapters:
        early, grad_how = 0, "none yet: they appear during backward"
    else:  # the head's gradient comes first in backward (for tied heads, the embedding's)
        early = (br.lm_head or br.embedding) * dt.train / shard_g
        grad_how = "only the head's so far"
    forward_peak = saved + max(loss, in_backward) + dequant + early
    step_peak = grads + max(step_temp, in_backward + dequant)
    if forward_peak >= step_peak:
        act, grad_now = saved + (in_backward if in_backward > loss else 0), early
        loss, step_temp = (loss if loss >= in_backward else 0), 0
    else:
        act, grad_now, loss = (in_backward if in_backward + dequant > step_temp else 0), grads, 0
        grad_how = "all of them, at the end of backward"
        act_how = "one layer's backward, the last" if act else "freed before the optimizer step"
        dequant, step_temp = (dequant, 0) if act else (0, step_temp)
    lora = lora_params * dt.train / shard_w
    per_gpu = f", / {s.num_gpus} GPUs" if shard_g > 1 else ""
    allocated = weights + quant / shard_w + lora + grad_now + states + step_temp + act + loss \
        + dequant
    parts = (
        ("weights", weights, weights_how),
        ("quant_constants", quant / shard_w, quant_how),
        ("lora", lora, f"{lora_params:,} adapter weights (r={s.lora_r}) x {dt.train} bytes"
         if adapters else "no adapters"),
        ("gradients", grad_now, f"{dt.train} bytes x {trainable:,} trainable weights{per_gpu}, "
         f"{grad_how}" + (" (+ DDP's all-reduce buckets)" if s.parallelism == "ddp" else "")),
        ("optimizer", states + step_temp, opt_how + per_gpu
         + (f" + {gib(step_temp)} step temporaries" if step_temp else "")),
        ("activations", act, act_how),
        ("logits", loss, loss_how if loss else "freed before the peak"),
        ("dequant_buffer", dequant, f"largest quantized layer ({biggest:,} weights) in "
         f"{dt.compute}-byte compute dtype" if dequant else "no quantized layer at the peak"),
        ("cuda_overhead", CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * allocated,
         f"CUDA context {gib(CUDA_CONTEXT_BYTES)} + {ALLOCATOR_SLACK:.0%} allocator slack"),
    )
    return Estimate(tuple(Component(n, round(b), e) for n, b, e in parts),
                    base_params=br.total, trainable_params=trainable)
