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

from dataclasses import dataclass, replace
from typing import Optional, get_args

from . import activations
from ..errors import NotModeled, UnknownTargets
from ..read.recipe import Bits, Method, Optimizer, TargetPattern, Targets
from ..units import gib
from .architectures import EXPERT_STACKS, PARAMETER_NAMES, Shape, match_parameters
from .gpu_catalog import context_bytes, workspace_bytes
from .reserve import StepSizes, reserved_beyond_live
from .setup import ATTENTION_KERNELS, Dtypes, GroupedAttention, Loss, Parallelism, Setup, dtypes_of

# The CUDA context and cuBLAS workspace of a card whose compute capability is unknown: the
# estimate before it meets a card (gpu_catalog says why these figures; Estimate.on_card sets
# the card's own).
CUDA_CONTEXT_BYTES = context_bytes(None)
CUBLAS_WORKSPACE_BYTES = workspace_bytes(None)
OVERHEAD = "cuda_overhead"  # the component beyond the live tensors: allocator and CUDA context


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    explanation: str  # one line a user reads: how it was computed, with the numbers


@dataclass(frozen=True)
class Estimate:
    """The peak by component; the last, ``cuda_overhead``, is what the card holds beyond the
    live tensors: the caching allocator's replayed excess (reserve.py) and the CUDA context."""

    components: tuple[Component, ...]
    base_params: int  # the base model alone, exactly its published count (no adapters)
    trainable_params: int  # the adapters for LoRA methods, every weight for full fine-tuning
    step: Optional[StepSizes] = None  # the step's tensors, replayed through the allocator model
    context_bytes: int = CUDA_CONTEXT_BYTES
    workspace_bytes: int = CUBLAS_WORKSPACE_BYTES
    # `recipe run` sets expandable_segments:True unless the user configured the allocator.
    expandable_segments: bool = True

    @property
    def device_bytes(self) -> int:
        """What the process holds on the card at the peak, as nvidia-smi shows it: the reserved
        bytes plus the CUDA context. The verdict compares this with the card."""
        return sum(c.bytes for c in self.components)

    @property
    def allocated_bytes(self) -> int:
        """Live tensors at the peak: torch.cuda.max_memory_allocated()."""
        return sum(c.bytes for c in self.components if c.name != OVERHEAD)

    @property
    def reserved_bytes(self) -> int:
        """What the caching allocator holds at the peak: torch.cuda.max_memory_reserved()."""
        return self.device_bytes - self.context_bytes

    def on_card(self, context: int, workspace: int, expandable_segments: bool) -> "Estimate":
        """The same estimate on a card with this CUDA context and cuBLAS workspace, under this
        allocator setting (``PYTORCH_CUDA_ALLOC_CONF``); only ``cuda_overhead`` changes."""
        live = tuple(c for c in self.components if c.name != OVERHEAD)
        return replace(self, components=live + (overhead(sum(c.bytes for c in live), self.step, context, workspace,
                                                         expandable_segments),),
                       context_bytes=context, workspace_bytes=workspace, expandable_segments=expandable_segments)


def overhead(allocated: float, step: Optional[StepSizes], context: int, workspace: int,
             expandable_segments: bool) -> Component:
    """The ``cuda_overhead`` component: what the allocator reserves beyond the live tensors (the
    step replayed, reserve.py) plus the CUDA context."""
    # cuBLAS's workspace is a block of the allocator's own, not a tensor of the step.
    extra = workspace + (0 if step is None else reserved_beyond_live(step, expandable_segments))
    setting = "expandable segments" if expandable_segments else "fixed segments"
    return Component(OVERHEAD, round(extra + context),
                     f"CUDA context {gib(context)} + caching allocator {gib(extra)} beyond live tensors "
                     f"(the step replayed with {setting}, cuBLAS workspace included)")


def lora_modules(shape: Shape, targets: Targets) -> dict[str, tuple[int, int]]:
    """The linear layers of one decoder layer that get adapters, matched as peft matches them.

    Args:
        shape: the model.
        targets: "all-linear" (every linear layer but the output head), "attention", module
            names/suffixes such as ("q_proj", "v_proj"), or a TargetPattern of full names.

    Returns:
        (in_features, out_features) by path inside the layer.

    Raises:
        UnknownTargets: a name matches no linear layer, or reaches the output head
            (architectures.match_modules and match_pattern, the rules `recipe run` applies too).
        NotModeled: a pattern that adapts other layers in some decoder layers (Shape.match_pattern).
    """
    if targets == "all-linear":
        return shape.linear_modules()
    if isinstance(targets, TargetPattern):
        return shape.match_pattern(targets.pattern)
    return shape.match_targets(shape.attention_modules() if targets == "attention" else targets)


def _check(s: Setup) -> None:
    # The recipe was validated already; a bad Setup is a bug in the caller, so it crashes.
    allowed = {"method": get_args(Method), "optimizer": get_args(Optimizer),
               "attention": ATTENTION_KERNELS, "parallelism": get_args(Parallelism),
               "loss": get_args(Loss), "grouped_attention": get_args(GroupedAttention),
               "compute_bytes": (2, 4), "adapter_bytes": (None, 2, 4),
               "weight_bits": get_args(Bits) if s.method == "qlora" else (16, 32)}
    for field, values in allowed.items():
        if getattr(s, field) not in values:
            raise ValueError(f"Setup.{field}={getattr(s, field)!r}; expected one of {values}")
    if s.method != "full" and not s.lora_r:
        raise ValueError("Setup.lora_r is required for LoRA methods")


def _quant_constants(shape: Shape, s: Setup) -> tuple[float, str]:
    layers, mods = shape.num_hidden_layers, list(shape.linear_modules().values())
    if s.moe_experts:  # each fused expert stack quantized whole, in the same blocks
        mods += [(fin, count * fout) for count, fin, fout in shape.expert_parameters(EXPERT_STACKS).values()]
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


# torchao's low-bit AdamW (torchao/optim/adam.py, _new_buffer): bits per moment value and values per
# fp32 scale, for a tensor of at least TORCHAO_MIN_NUMEL values that the block divides (any other keeps
# two moments of its own size and dtype), and a code table (qmap) of fp32 values per moment. transformers
# builds both with blocks of 256 (trainer_optimizer.py, _get_torchao_optimizer; torchao's own 4-bit
# default is 128).
TORCHAO_STATE = {"adamw_torch_8bit": (8, 256, 256), "adamw_torch_4bit": (4, 256, 16)}
TORCHAO_MIN_NUMEL = 4096


def _torchao_states(name: str, sizes: list[int], dtype_bytes: float) -> tuple[float, float, str]:
    bits, block, table = TORCHAO_STATE[name]
    quantized = [n for n in sizes if n >= TORCHAO_MIN_NUMEL and n % block == 0]
    plain = sum(sizes) - sum(quantized)
    states = sum(2 * (n * bits / 8 + 4 * n / block + 4 * table) for n in quantized) + 2 * plain * dtype_bytes
    # Measured with torch.profiler on the compiled step (torchao 0.18, CPU): the 4-bit moments are
    # re-packed through a one-byte-per-value buffer each (aten::cat, two live at once); 8-bit allocates
    # nothing the size of a tensor.
    step = 2 * max(quantized, default=0) if bits == 4 else 0
    return (states, step, f"torchao {bits}-bit AdamW: 2 moments x {bits} bits + fp32 scale per {block} values x "
            f"{sum(quantized):,} weights in {len(quantized)} tensors; {plain:,} in smaller tensors x 2 x "
            f"{dtype_bytes:g} bytes")


def _adapter_sizes(shape: Shape, s: Setup, adapters: dict) -> list[int]:
    """The size of each LoRA matrix of the model: A and B of every adapted linear layer, and of every
    adapted router and fused expert stack (lora_A to rank x experts rows), in every decoder layer."""
    sizes = [n for fin, fout in adapters.values() for n in (s.lora_r * fin, s.lora_r * fout)]
    ranks = activations.expert_ranks(shape, s)
    sizes += [n for path, (count, fin, fout) in shape.expert_parameters(activations.adapted_experts(shape, s)).items()
              for n in (count * ranks[path] * fin, count * ranks[path] * fout)]
    return sizes * shape.num_hidden_layers


def _trainable_sizes(shape: Shape, adapter_sizes: list[int], saved: dict, unfrozen: dict) -> list[int]:
    """The size of each trainable tensor (what torchao quantizes its optimizer's state by): the
    adapters' (:func:`_adapter_sizes`) and the modules_to_save copies', or in full fine-tuning every
    parameter, or the unfrozen ones."""
    if adapter_sizes:
        return adapter_sizes + [rows * cols for count, rows, cols in saved.values() for _ in range(count)]
    return list((unfrozen or shape.parameters()).values())


def _optimizer(shape: Shape, s: Setup, dt: Dtypes, adapters: dict, trainable: int, saved: Optional[dict] = None,
               sizes: Optional[list[int]] = None):
    """Optimizer states, step temporaries and how they were counted; ``sizes``, each trainable
    tensor's, for torchao's optimizers (they quantize by tensor).

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
    if name in TORCHAO_STATE:
        return _torchao_states(name, sizes, dt.train)
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
        others = [(rows, cols) for count, rows, cols in (saved or {}).values() for _ in range(count)]
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
    quantized = br.block_linear + (br.experts if s.moe_experts else 0)
    other = br.total - quantized
    return (quantized * dt.weight + other * dt.other,
            f"{quantized:,} block weights x {dt.weight:g} byte ({s.weight_bits}-bit) + "
            f"{other:,} embedding/head/norm{'/expert' if br.experts and not s.moe_experts else ''} weights x "
            f"{dt.other} bytes"
            + (" (fp32 after prepare_model_for_kbit_training)" if s.kbit_upcast else ""))


def _refuse_experts_in_full(shape: Shape, s: Setup, dt: Dtypes) -> None:
    """Refuse a mixture of experts trained in full, saying what its weights alone take: a lower
    bound of the peak.

    Modelled: LoRA and QLoRA, the experts frozen (quantized or not) or adapted (peft folds the
    adapters into a full copy of each adapted stack in every forward pass), through transformers'
    grouped_mm experts, and a shared expert (activations.py). Not yet: the experts' own gradients
    and optimizer state when they train in full.
    """
    if s.method != "full":
        return
    weights, how = _weights(shape, s, dt)
    experts = shape.breakdown().experts
    raise NotModeled(f"fit-check does not model full fine-tuning of a mixture of experts yet ({shape.experts} experts "
                     f"per layer, {shape.experts_per_token} per token): its weights alone take {gib(weights)} "
                     f"({how}; {experts:,} of them in the fused experts), before gradients, optimizer state and "
                     "activations", hint="a card smaller than that cannot train it; with LoRA or QLoRA fit-check "
                     "estimates it; recipe run trains it without a fit check", path="$.model.id")


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
    if s.use_dora:
        # Each adapted layer builds its whole weight (out x in, dequantized) plus the adapters' product
        # to take its norm in every forward pass, and keeps more for backward: not modelled yet.
        raise NotModeled("fit-check does not model DoRA's memory yet: every adapted layer computes its full "
                         "weight's norm in each forward pass, beyond what LoRA keeps",
                         hint="fit-check the recipe with use_dora: false for a lower bound; recipe run trains "
                              "with DoRA without a fit check", path="$.lora.use_dora")
    if s.qat:
        # Each fake-quantized layer keeps its rounded weight (and rounded input) for backward beside
        # what plain full fine-tuning keeps, and rounds in temporaries: not modelled yet.
        raise NotModeled("fit-check does not model quantization-aware training's memory yet: every fake-quantized "
                         "layer keeps a rounded copy of its weight (and input) for backward, beyond full "
                         "fine-tuning's", hint="fit-check the recipe without qat for a lower bound; recipe run "
                         "trains with qat without a fit check", path="$.training.qat")
    dt = dtypes_of(s)
    if shape.experts:
        _refuse_experts_in_full(shape, s, dt)
    br, layers = shape.breakdown(), shape.num_hidden_layers
    tokens = s.micro_batch_size * s.seq_len
    adapters = lora_modules(shape, s.lora_targets) if s.method != "full" else {}
    adapter_sizes = _adapter_sizes(shape, s, adapters)
    lora_params = sum(adapter_sizes)
    # lora.modules_to_save: peft trains a copy of each beside the frozen original; the copies are
    # trainable weights like the adapters (gradients, optimizer state, the runner's trainable dtype).
    in_full = shape.match_saved(s.modules_to_save, s.weight_bits < 16) if adapters and s.modules_to_save else {}
    adapted_too = [path for path in in_full if path in adapters]
    if adapted_too:
        raise UnknownTargets(f"{', '.join(adapted_too)} would get an adapter (target_modules) and be trained in full "
                             "(modules_to_save); peft trains it in full only", path="$.lora.modules_to_save")
    copies = sum(count * rows * cols for count, rows, cols in in_full.values())
    # training.unfrozen_parameters: full fine-tuning of the parameters they name; the rest frozen.
    sizes = shape.parameters() if s.unfrozen and not adapters else {}
    unfrozen = {n: sizes[n] for n in match_parameters(s.unfrozen, sizes, shape.model_type)} if sizes else {}
    trainable = lora_params + copies if adapters else sum(unfrozen.values()) if unfrozen else br.total
    # what the head's gradient (backward's first) and a tied embedding's are, when they train
    head_size = br.lm_head or br.embedding
    embedding_size = br.embedding
    if unfrozen:
        embedding_name = PARAMETER_NAMES[shape.layout][1] + ".weight"
        head_size = unfrozen.get(embedding_name if shape.tie_word_embeddings else shape.head + ".weight", 0)
        embedding_size = unfrozen.get(embedding_name, 0)
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
    tensors = _trainable_sizes(shape, adapter_sizes, in_full, unfrozen) if s.optimizer in TORCHAO_STATE else None
    states, step_temp, opt_how = _optimizer(shape, s, dt, adapters, trainable, in_full, tensors)
    states, step_temp = states / shard_g, step_temp / shard_g
    grads = trainable * dt.train / shard_g * (2 if s.parallelism == "ddp" else 1)
    saved, in_backward, act_how = activations.saved_bytes(shape, s, dt, adapters, tokens)
    loss, loss_how = activations.loss_bytes(shape, s, dt, tokens)
    if s.liger_kernel:
        # TRL (1.16) applies Liger's layer kernels only: it turns Liger's fused linear cross-entropy off
        # and keeps its chunked head, which never materializes the logits either. Liger's RMSNorm and
        # SwiGLU keep less for backward than the modules they replace: counted as those, an upper bound.
        loss_how += " (Liger on: TRL keeps this head, Liger's fused cross-entropy is off)"
        act_how += "; Liger's kernels counted as the layers they replace (they keep less)"
    if shape.model_type == "falcon" and s.attention == "sdpa" and shape.num_key_value_heads > 1:
        # Found 2026-11-30 on falcon-7b (one key/value head: torch's math kernel, now counted as such,
        # activations.py); Falcon's newer layout (several key/value heads) has not been traced.
        act_how += "; falcon with several key/value heads: its attention is not traced yet (a lower bound)"
    if activations.adapted_experts(shape, s) and s.lora_dropout:
        act_how += ("; the adapters on the router and experts take no dropout (peft's ParamWrapper cannot), "
                    "the others do")
    if shape.experts:
        act_how += ("; experts through transformers' grouped matmul as its fallback op runs it (cards before compute "
                    "capability 8.0): later cards' native kernel holds one expert stack's gradient less")
    if unfrozen:
        act_how += f"; counted as if every weight trained (an upper bound: {len(unfrozen):,} of " \
                   f"{len(sizes):,} parameters train, and frozen layers keep less)"
    if s.activation_offloading:
        # TRL moves each saved activation to host memory in forward (keeping the last few on the GPU
        # while they copy) and brings them back as backward reaches them: fewer on the GPU, never more.
        act_how += "; counted on the GPU although activation_offloading moves most to host memory (an upper bound)"
    head_copy = in_full.get(shape.head, (0, 0, 0))
    if head_copy[0]:  # TRL's fused head accumulates a trained head's gradient in fp32, as for full
        loss += 4 * head_copy[1] * head_copy[2]
        loss_how += f" + {gib(4 * head_copy[1] * head_copy[2])} fp32 grad of the trained {shape.head} copy"

    if s.gradient_accumulation_steps > 1:
        early, grad_how = grads, "kept across micro-batches"
    elif adapters and head_copy[0]:  # a trained head's gradient comes first in backward
        early, grad_how = head_copy[1] * head_copy[2] * dt.train, f"only the {shape.head} copy's so far"
    elif adapters:
        early, grad_how = 0, "none yet: they appear during backward"
    else:  # the head's gradient comes first in backward (for tied heads, the embedding's)
        early = head_size * dt.train / shard_g
        grad_how = "only the head's so far"
    # The step's tensors before the peak moment below keeps some of them: reserve.py replays them all.
    step = StepSizes(layers, round(weights + (quant + (lora_params + copies) * dt.train) / shard_w), round(grads),
                     s.gradient_accumulation_steps > 1, round(states), round(step_temp), round(saved),
                     round(in_backward), round(loss), round(dequant))
    forward_peak = saved + max(loss, in_backward) + dequant + early
    # A tied embedding's gradient comes last in backward, beside the head's already in .grad:
    # autograd adds the two out of place, so two more embedding-sized tensors live for a moment.
    tied_sum = 2 * embedding_size * dt.train / shard_g if not adapters and shape.tie_word_embeddings else 0
    step_peak = grads + max(step_temp, in_backward + dequant, tied_sum)
    if forward_peak >= step_peak:
        act, grad_now = saved + (in_backward if in_backward > loss else 0), early
        loss, step_temp = (loss if loss >= in_backward else 0), 0
    else:
        act, grad_now, loss = (in_backward if in_backward + dequant > step_temp else 0), grads, 0
        grad_how = "all of them, at the end of backward"
        act_how = "one layer's backward, the last" if act else "freed before the optimizer step"
        dequant, step_temp = (dequant, 0) if act else (0, step_temp)
        if tied_sum > max(step_temp, act + dequant):
            act, dequant, step_temp, grad_now = 0, 0, 0, grads + tied_sum
            grad_how += f" + {gib(tied_sum)} for the tied embedding's own gradient and its sum with the head's"
            act_how = "freed before the end of backward"
    lora = (lora_params + copies) * dt.train / shard_w
    per_gpu = f", / {s.num_gpus} GPUs" if shard_g > 1 else ""
    parts = (
        ("weights", weights, weights_how),
        ("quant_constants", quant / shard_w, quant_how),
        ("lora", lora, f"{lora_params:,} adapter weights (r={s.lora_r}) x {dt.train} bytes"
         + (f" + {copies:,} weights of modules_to_save copies ({', '.join(in_full)})" if copies else "")
         if adapters else "no adapters"),
        ("gradients", grad_now, f"{dt.train} bytes x {trainable:,} trainable weights{per_gpu}, "
         f"{grad_how}" + (" (+ DDP's all-reduce buckets)" if s.parallelism == "ddp" else "")),
        ("optimizer", states + step_temp, opt_how + per_gpu
         + (f" + {gib(step_temp)} step temporaries" if step_temp else "")),
        ("activations", act, act_how),
        ("logits", loss, loss_how if loss else f"freed before the peak ({loss_how})"),
        ("dequant_buffer", dequant, f"largest quantized layer ({biggest:,} weights) in "
         f"{dt.compute}-byte compute dtype" if dequant else "no quantized layer at the peak"),
    )
    live = tuple(Component(n, round(b), e) for n, b, e in parts)
    return Estimate(live + (overhead(sum(c.bytes for c in live), step, CUDA_CONTEXT_BYTES, CUBLAS_WORKSPACE_BYTES,
                                     True),), base_params=br.total, trainable_params=trainable, step=step)
