"""Activation memory per token: what the forward pass keeps for backward, and the logits.

Part of the estimate (estimate.py), split out because it is the arithmetic that depends on the
sequence: what each decoder layer saves with and without gradient checkpointing, what the
eager and sdpa attention kernels keep, and the working set of the LM head and the loss (TRL's
chunked head, or transformers' ``logits.float()``). Plain arithmetic, like estimate.py.

Each rule was checked op by op against full-size traces of the real step (recipecli.train.probe,
benchmarks/trace_grid.py, where tests/fit/test_trace_grid.py holds the estimate to them).
"""
from __future__ import annotations

from ..units import gib
from .architectures import ATTENTION_ROLES, EXPERT_STACKS, LAYOUTS, Shape
from .setup import Dtypes, Setup

# TRL's fused LM head: tokens x vocabulary tile of logits computed at once (trl.kernels).
LOSS_TILE_TOKENS, LOSS_TILE_VOCAB = 4096, 32768


def saved_bytes(shape: Shape, s: Setup, dt: Dtypes, adapters: dict, tokens: int):
    """Activation memory of the decoder stack for one micro-batch.

    Args:
        shape: the model.
        s: the run; gradient checkpointing, attention kernel and autocast decide what is saved.
        dt: bytes per element of each kind of tensor.
        adapters: (in_features, out_features) of each adapted linear of one layer; empty for full.
        tokens: micro_batch_size x seq_len.

    Returns:
        (bytes saved until backward, extra bytes while one layer runs backward, how it was counted).
    """
    layers, h = shape.num_hidden_layers, shape.hidden_size
    per_token = layer_bytes_per_token(shape, s, dt, adapters)
    # Autocast keeps fp16 copies of fp32 weights for the backward of the layers that used them.
    amp_casts = s.weight_bits == 32 and s.autocast and dt.compute == 2
    one_layer = per_token * tokens + (shape.breakdown().block_linear / layers * dt.compute
                                      if amp_casts else 0) + expert_stacks_bytes(shape, s, dt)
    # Backward through a layer's MLP holds one MLP-wide gradient at a time beside the gradients
    # of the hidden states flowing down (into the residual, the norm and the layer's output).
    mlp_gradient = experts_backward_bytes(shape, s, dt, tokens) if shape.experts else \
        shape.intermediate_size * dt.matmul_out * tokens
    # The math kernel's backward holds three more fp32 attention matrices (measured on an H200).
    attention_gradient = 3 * 4 * shape.num_attention_heads * s.seq_len * tokens if _math_attention(shape, s) else 0
    gradients = max(mlp_gradient, attention_gradient) + 3 * h * 4 * tokens
    # An adapter wider than its input (fp32 LoRA on a 16-bit base) casts the MLP-wide input of
    # down_proj up (peft's _cast_input_dtype): in backward the gradients of the dropped copy and of
    # the cast come in the adapter's dtype beside the base path's one.
    i = shape.intermediate_size
    if dt.train > dt.matmul_out and any(fin == i for fin, _ in adapters.values()):
        gradients += i * (2 * dt.train - dt.matmul_out) * tokens
    # The final norm keeps its input and statistics (and, trained, its normalized input); every
    # layer reads one rotary cos/sin pair, computed once.
    final_norm = _norm_bytes(shape, s, dt) * tokens + 2 * shape.head_dim * dt.attention * tokens
    kernel = s.attention + _grouped_heads_said(shape, s)
    if s.gradient_checkpointing:  # only layer inputs are kept; one layer is recomputed at a time
        # ... and what LLM.int8 hangs on its autograd context, which checkpointing cannot drop
        int8 = int8_inputs_per_token(shape, dt) if s.weight_bits == 8 and s.method != "full" else 0
        return (layers * tokens * (h * dt.residual + int8) + final_norm, one_layer + gradients,
                f"{layers} layer inputs x {tokens:,} tokens x {h} x {dt.residual} bytes "
                f"(gradient checkpointing) + one layer recomputed ({per_token / 1024:.0f} "
                f"KiB/token, {kernel})")
    # LoRA on a frozen embedding: the first layer's input needs no gradient, so its first norm
    # and the dropout of the adapters that read that norm keep nothing.
    first = 0 if s.method == "full" else (_norm_bytes(shape, s, dt) + dt.dropout_mask * sum(
        fin for path, (fin, _) in adapters.items() if path in _first_norm_readers(shape))) * tokens
    roles = dict(LAYOUTS[shape.layout])
    if s.method != "full" and shape.parallel_mlp and all(roles[path] in ATTENTION_ROLES for path in adapters):
        # ... and a parallel MLP without adapters reads that input too: nothing of it (nor of its
        # own norm) needs a gradient there
        first += (_mlp_bytes(shape, s, dt) + (shape.norms_per_layer - 1) * _norm_bytes(shape, s, dt)) * tokens
    return (layers * one_layer + final_norm - first, gradients,
            f"{layers} layers x {tokens:,} tokens x {per_token / 1024:.0f} KiB/token saved for "
            f"backward ({kernel})")


def int8_inputs_per_token(shape: Shape, dt: Dtypes) -> int:
    """Bytes LLM.int8 layers keep per token and decoder layer: bitsandbytes' MatMul8bitLt keeps its
    input, when that needs a gradient (always below LoRA), as ``ctx.tensors`` rather than through
    save_for_backward: each norm's output (one tensor for the linears reading it), the attention
    output and the MLP product. Checkpointing only drops what passes through save_for_backward, so
    these stay with it too (seen in the traces)."""
    # Experts are no LLM.int8 layers, nor are transformers 5's routers (a module of their own, not an
    # nn.Linear): the MLP norm's output is kept only where a shared expert (its gate and up
    # projections) reads it, and a shared expert's down projection keeps its product.
    mlp = (shape.shared_expert_intermediate_size if shape.experts else shape.intermediate_size) * dt.matmul_out
    norms = shape.norms_per_layer - (1 if shape.experts and not shape.shared_expert_intermediate_size else 0)
    return (norms * shape.hidden_size * dt.residual
            + shape.num_attention_heads * shape.head_dim * dt.attention + mlp)


def _norm_bytes(shape: Shape, s: Setup, dt: Dtypes) -> int:
    """Bytes one norm keeps per token: RMSNorm its fp32 input and rsqrt (and, when its weight
    trains, the normalized input); LayerNorm its input, mean and rstd."""
    h = shape.hidden_size
    if shape.norm == "layer":
        return dt.residual * h + 8
    return 4 * h + 4 + (dt.residual * h if s.method == "full" else 0)


def _first_norm_readers(shape: Shape) -> set[str]:
    """Linears reading a layer's first norm: q/k/v, and the MLP's input too when attention and
    MLP run in parallel from one norm (phi)."""
    roles = {"q", "k", "v", "qkv"} | ({"gate", "up", "gate_up"} if shape.norms_per_layer == 1 else set())
    return {path for path, role in LAYOUTS[shape.layout] if role in roles}


def layer_bytes_per_token(shape: Shape, s: Setup, dt: Dtypes, adapters: dict) -> float:
    """Bytes one decoder layer saves for backward, per token.

    Args:
        shape: the model.
        s: the run; method, attention kernel, batch and LoRA dropout change what a layer keeps.
        dt: bytes per element of each kind of tensor.
        adapters: (in_features, out_features) of each adapted linear of one layer; empty for full.

    Returns:
        Bytes per token (norms, attention, MLP, trainable inputs and adapters).
    """
    h, i = shape.hidden_size, shape.intermediate_size
    seq = s.seq_len * s.micro_batch_size if s.packing else s.seq_len  # the length attention sees
    heads = shape.num_attention_heads
    hq, hkv = heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    full = s.method == "full"
    roles = {role for _, role in LAYOUTS[shape.layout]}
    # v is a view of a fused q/k/v projection's output: keeping v keeps all of it. With rotary
    # embeddings q and k are new tensors beside it; with ALiBi (bloom) they are views of it too.
    v_kept = hkv
    if "qkv" in roles:
        v_kept = hq + 2 * hkv - (hq + hkv if shape.model_type == "bloom" else 0)
    norms = shape.norms_per_layer * _norm_bytes(shape, s, dt)
    if s.attention == "eager":
        # q, k and v as the two matmuls read them (k/v repeated to every head under GQA), the
        # softmax's fp32 output and, unless that is the matmul dtype already, its cast.
        # Several KV heads are repeated by copies (repeat_kv). matmul folds the batch into one
        # dimension: a view it cannot fold (one KV head repeated, v sliced from a fused
        # projection) is copied when there is more than one sequence, and kept as is otherwise.
        folded = s.micro_batch_size == 1
        repeated = hkv < hq and (shape.num_key_value_heads > 1 or not folded)
        kv = 2 * hq if repeated else hkv + (v_kept if folded else hkv)
        cast = dt.attention if dt.attention != 4 else 0
        attention = (hq + kv) * dt.attention + (4 + cast) * heads * seq
    elif _math_attention(shape, s):
        # torch's math kernel: q scaled and k and v repeated to every head (in fp32: half inputs
        # are upcast), each head's row of the fp32 attention matrix, and the output
        attention = 4 * heads * seq + hq * (12 + dt.attention)
    elif s.attention == "sdpa" and _sdpa_masked(shape, s):
        # A mask rules out sdpa's native GQA (k/v repeated to all heads) and is turned into a
        # float bias per layer. flash_attention_2 takes both natively.
        attention = 4 * hq * dt.attention + seq * dt.attention
    elif hkv < hq and (s.grouped_attention == "repeat" or shape.head_dim > 256):
        # k and v repeated to every head (above 256 transformers repeats them itself): q, both
        # copies, the output and the logsumexp (memory-efficient kernel)
        attention = 4 * hq * dt.attention + 4 * heads
    else:  # q, k, v, the output and an fp32 logsumexp per head (flash and memory-efficient kernels)
        attention = (2 * hq + hkv + v_kept) * dt.attention + 4 * heads
    mlp = _mlp_bytes(shape, s, dt)
    inputs = 0
    if full:
        # Trainable linears keep their inputs: each norm's output (one tensor for the linears that
        # read it, or an autocast copy per linear when the dtypes differ) and the MLP product;
        # o_proj's input is sdpa's output, kept already, but eager makes a contiguous copy.
        n_attn = len(shape.attention_modules()) - 1
        n_mlp = len(shape.linear_modules()) - n_attn - 2
        copies = n_attn + n_mlp if dt.residual != dt.compute else shape.norms_per_layer
        inputs = (copies * h + i + (hq if s.attention == "eager" else 0)) * dt.compute
    elif s.weight_bits == 8:
        inputs = int8_inputs_per_token(shape, dt)
    # Each adapter saves its input (dropout mask + dropped copy) and its rank-r projection. With no
    # dropout and no cast it keeps the very tensor its frozen layer reads (which keeps none of its
    # own), so adapters reading one tensor (q, k and v the first norm's output) keep it once (the
    # traces: fp32 with dropout 0 was 12 % over when counted per adapter).
    shared = not s.autocast and s.lora_dropout == 0 and dt.adapter_in == dt.matmul_out
    read = {_input_of(shape, path) if shared else path: fin for path, (fin, _) in adapters.items()}
    adapter = sum(read.values()) * dt.adapter_in + sum(fin * dt.dropout_mask + s.lora_r * dt.adapter_in
                                                       for fin, _ in adapters.values())
    return norms + attention + mlp + inputs + adapter + _qk_norms_bytes(shape)


def _input_of(shape: Shape, path: str) -> str:
    """Which tensor a decoder layer's linear reads: the first norm's output, the second's (the
    MLP's, and a shared expert's with its gate), or one of its own (o_proj, down_proj)."""
    if path in _first_norm_readers(shape):
        return "first norm"
    role = dict(LAYOUTS[shape.layout])[path]
    return "second norm" if role in ("gate", "up", "gate_up", "shared_gate", "shared_up", "shared_expert_gate") else path


def _mlp_bytes(shape: Shape, s: Setup, dt: Dtypes) -> float:
    """What a layer's MLP keeps per token. Gated: gate output (act input), activation and up output
    (product inputs); plain: fc1 out. Phi's gelu_new is tanh-GELU in Python ops: input, x / 2,
    tanh and 1 + tanh are kept. A mixture of experts: experts_bytes_per_token."""
    if shape.experts:
        return experts_bytes_per_token(shape, s, dt)
    act = 3 if shape.gated_mlp else (4 if shape.model_type == "phi" else 1)
    return act * shape.intermediate_size * dt.matmul_out


def _grouped_heads_said(shape: Shape, s: Setup) -> str:
    """How sdpa runs this model's grouped key/value heads, where it is not its fused kernel."""
    if _falcon_math(shape, s):
        return ", falcon's one key/value head and mask in torch's math kernel: a seq x seq matrix per head"
    if s.attention != "sdpa" or shape.num_key_value_heads >= shape.num_attention_heads or _sdpa_masked(shape, s):
        return ""
    if _math_attention(shape, s):
        return ", grouped heads in torch's math kernel: a seq x seq matrix per head"
    if s.grouped_attention == "repeat":
        return ", key/value heads repeated: this card has no fused kernel for grouped heads in this dtype"
    return ""


def _sdpa_masked(shape: Shape, s: Setup) -> bool:
    """sdpa gets a mask: padding, packing's block diagonal, or a sliding window the sequence
    reaches (transformers' sdpa_mask skips it only below the window)."""
    seq = s.seq_len * s.micro_batch_size if s.packing else s.seq_len
    return s.packing or (s.micro_batch_size > 1 and s.padded) or (
        shape.sliding_window is not None and seq >= shape.sliding_window)


def _math_attention(shape: Shape, s: Setup) -> bool:
    """sdpa runs grouped heads in torch's math kernel: no fused kernel for them (Setup.grouped_attention),
    no mask (which makes transformers repeat the heads itself), head size within what it passes
    grouped (256). Falcon with one key/value head always (:func:`_falcon_math`)."""
    return _falcon_math(shape, s) or (
        s.attention == "sdpa" and s.grouped_attention == "math" and not _sdpa_masked(shape, s)
        and shape.num_key_value_heads < shape.num_attention_heads and shape.head_dim <= 256)


def _falcon_math(shape: Shape, s: Setup) -> bool:
    """Falcon with one key/value head under sdpa: transformers hands sdpa that head unrepeated beside
    a materialized mask, which only torch's math kernel takes (it broadcasts the one head), on CUDA
    as on the CPU."""
    return s.attention == "sdpa" and shape.layout == "falcon" and shape.num_key_value_heads == 1


def expert_bytes(s: Setup, dt: Dtypes) -> int:
    """Bytes per element of the experts' weights as their grouped matmul reads them, which sets its
    inputs' and outputs' dtype too (the grouped matmul is not autocast: transformers casts the
    tokens to the weights' dtype). 16-bit with the model, fp32 after peft's k-bit preparation
    upcast them, or the load dtype bitsandbytes dequantizes quantized experts to."""
    if s.weight_bits >= 16:
        return int(dt.weight)
    return dt.compute if s.moe_experts else dt.other


def adapted_experts(shape: Shape, s: Setup) -> tuple[str, ...]:
    """The router and expert stacks of a layer that get adapters (Shape.adapted_experts)."""
    if s.method == "full":
        return ()
    return shape.adapted_experts(s.lora_targets, s.target_parameters, s.moe_experts)


def expert_ranks(shape: Shape, s: Setup) -> dict[str, int]:
    """The LoRA rank of each adapted router and expert stack of a layer. Under all-linear peft reaches
    the experts through its transformers-v5 conversion, which maps the v4 layout's separate gate
    and up projections onto the fused gate_up stack and gives it rank 2 r (and alpha 2 alpha: the
    same scaling, an adapter per projection as v4 had); named in lora.target_parameters a stack
    gets rank r (the traces' parameter shapes)."""
    fused = s.lora_targets == "all-linear"
    return {path: 2 * s.lora_r if fused and path == "mlp.experts.gate_up_proj" else s.lora_r
            for path in adapted_experts(shape, s)}


def experts_bytes_per_token(shape: Shape, s: Setup, dt: Dtypes) -> float:
    """What a mixture-of-experts layer keeps per token in place of the MLP, its experts frozen or
    adapted (transformers' grouped_mm path: each token's k experts as rows of one grouped matmul).

    The router keeps its fp32 softmax and the top-k indices. Each of the token's k rows keeps the
    token gathered (the up projection's input, cast to the experts' dtype), the up projection's
    gate and up halves (the activation's input), the activation, their product (the down
    projection's input) and the down projection's output (the routing weight's product), plus the
    routing weight (fp32) and three int64 index rows (the sort's permutation, the gather's and the
    scatter back's). An adapted router keeps its input too (the linear's weight now needs a gradient).
    """
    h, i, k, e = shape.hidden_size, shape.expert_intermediate_size, shape.experts_per_token, shape.experts
    de = expert_bytes(s, dt)
    router = 4 * e + 8 * k + (h * dt.compute if "mlp.gate.weight" in adapted_experts(shape, s) else 0)
    return router + k * (de * (2 * h + 4 * i) + 4 + 3 * 8) + _shared_expert_bytes(shape, dt)


def _shared_expert_bytes(shape: Shape, dt: Dtypes) -> float:
    """Per token: Qwen2-MoE's shared expert, a gated MLP every token goes through (its gate output,
    activation and up output, as a dense layer's), and its sigmoid gate, whose product keeps the
    shared expert's output and the gate's value."""
    si = shape.shared_expert_intermediate_size
    return (3 * si + shape.hidden_size + 1) * dt.matmul_out if si else 0


def _qk_norms_bytes(shape: Shape) -> int:
    """Per token: the q and k RMSNorms (Qwen3 and Qwen3-MoE: per head; OLMoE: over the whole
    projection) keep their fp32 input and a reciprocal root per normalized row."""
    if not shape.q_norm:
        return 0
    per_head = shape.q_norm == shape.head_dim
    rows = shape.num_attention_heads + shape.num_key_value_heads if per_head else 2
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    return 4 * (q + kv) + 4 * rows


def experts_backward_bytes(shape: Shape, s: Setup, dt: Dtypes, tokens: int) -> float:
    """What backward through a mixture-of-experts layer holds beyond the layer's saved tensors, at
    the larger of its two grouped matmuls. Each makes the gradient of its input and of the whole
    expert stack, which transformers' fallback op makes even for frozen experts (the trace takes
    that op; CUDA's native kernel, compute capability 8.0 and later, makes none). At the down
    projection every saved tensor of the layer is still alive; by the up projection the down
    output, the product, the activation and the gate/up halves are freed, and the halves'
    gradient is the up projection's incoming one (and a dequantized down stack, kept for the down
    projection's backward, is freed too)."""
    h, i, k, e = shape.hidden_size, shape.expert_intermediate_size, shape.experts_per_token, shape.experts
    rows = k * tokens
    down = rows * (h + i) + e * h * i  # its incoming gradient, the input's and the stack's
    kept_down = s.moe_experts or "mlp.experts.down_proj" in adapted_experts(shape, s)
    up = e * 2 * i * h - 2 * i * rows - (e * h * i if kept_down else 0)
    return max(down, up) * expert_bytes(s, dt)


def expert_stacks_bytes(shape: Shape, s: Setup, dt: Dtypes) -> float:
    """Bytes one layer keeps of its expert weights beyond the parameters, for backward: the whole
    stacks bitsandbytes' parametrization dequantizes quantized experts to, or that peft folds an
    adapted stack's adapters into (the weight plus the scaled product of its factors, one
    baddbmm), which the grouped matmuls keep, with the factors the fold keeps."""
    ranks = expert_ranks(shape, s)
    stacks = shape.expert_parameters(EXPERT_STACKS)
    kept = sum(count * fin * fout for path, (count, fin, fout) in stacks.items() if s.moe_experts or path in ranks)
    factors = sum(count * ranks[path] * (fin + fout) for path, (count, fin, fout) in stacks.items() if path in ranks)
    return (kept + factors) * expert_bytes(s, dt)


def loss_bytes(shape: Shape, s: Setup, dt: Dtypes, tokens: int) -> tuple[float, str]:
    """Peak working set of the LM head and the loss.

    Args:
        shape: the model.
        s: the run; ``s.loss`` picks TRL's chunked head or the model's fp32 logits.
        dt: bytes per element of each kind of tensor.
        tokens: micro_batch_size x seq_len.

    Returns:
        (bytes, how it was counted).
    """
    v, h = shape.vocab_size, shape.hidden_size
    if s.loss == "fp32_logits":
        # ForCausalLMLoss calls logits.float() (and autocast runs cross-entropy in fp32 anyway):
        # backward through log_softmax holds its saved fp32 output and fp32 gradients in and out.
        return 12 * tokens * v, f"{tokens:,} tokens x {v:,} vocab x 12 bytes (fp32 logits)"
    # TRL's fused head: one tile of logits, the head cast to compute dtype, fp32 grad of hidden.
    # The tile buffer is allocated at its full width, whatever the vocabulary: trl/kernels/
    # chunked_logprob.py, _ChunkedLogProbFunction.forward: torch.empty((min(N, 4096), chunk_size)),
    # chunk_size = 32768 (trl/trainer/utils.py). A small vocabulary is no smaller a buffer.
    rows, cols = min(tokens, LOSS_TILE_TOKENS), min(v, LOSS_TILE_VOCAB)
    tile = rows * LOSS_TILE_VOCAB * dt.compute
    head_dtype = dt.train if s.method == "full" else dt.other
    cast = cols * h * dt.compute if head_dtype != dt.compute else 0
    hidden = tokens * h * (dt.residual + 4)
    head_grad = 4 * v * h if s.method == "full" else 0  # accumulated in fp32, then cast
    # Triton folds each tile in place (forward: per-token statistics; backward: the tile's
    # gradient over the tile) and accumulates it with one fp32-output addmm: nothing more is held.
    return (tile + cast + hidden + head_grad,
            f"chunked loss: {gib(tile)} logits tile + {gib(cast)} head cast + {gib(hidden)} "
            f"hidden states and their fp32 grad" + (f" + {gib(head_grad)} fp32 head grad"
                                                     if head_grad else ""))
