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
from .architectures import LAYOUTS, Shape
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
                                      if amp_casts else 0)
    # Backward through a layer's MLP holds one MLP-wide gradient at a time beside the gradients
    # of the hidden states flowing down (into the residual, the norm and the layer's output).
    gradients = (shape.intermediate_size * dt.matmul_out + 3 * h * 4) * tokens
    # An adapter wider than its input (fp32 LoRA on a 16-bit base) casts the MLP-wide input of
    # down_proj up (peft's _cast_input_dtype): in backward the gradients of the dropped copy and of
    # the cast come in the adapter's dtype beside the base path's one.
    i = shape.intermediate_size
    if dt.train > dt.matmul_out and any(fin == i for fin, _ in adapters.values()):
        gradients += i * (2 * dt.train - dt.matmul_out) * tokens
    # The final norm keeps its input and statistics (and, trained, its normalized input); every
    # layer reads one rotary cos/sin pair, computed once.
    final_norm = _norm_bytes(shape, s, dt) * tokens + 2 * shape.head_dim * dt.attention * tokens
    if s.gradient_checkpointing:  # only layer inputs are kept; one layer is recomputed at a time
        # ... and what LLM.int8 hangs on its autograd context, which checkpointing cannot drop
        int8 = int8_inputs_per_token(shape, dt) if s.weight_bits == 8 and s.method != "full" else 0
        return (layers * tokens * (h * dt.residual + int8) + final_norm, one_layer + gradients,
                f"{layers} layer inputs x {tokens:,} tokens x {h} x {dt.residual} bytes "
                f"(gradient checkpointing) + one layer recomputed ({per_token / 1024:.0f} "
                f"KiB/token)")
    # LoRA on a frozen embedding: the first layer's input needs no gradient, so its first norm
    # and the dropout of the adapters that read that norm keep nothing.
    first = 0 if s.method == "full" else (_norm_bytes(shape, s, dt) + dt.dropout_mask * sum(
        fin for path, (fin, _) in adapters.items() if path in _first_norm_readers(shape))) * tokens
    return (layers * one_layer + final_norm - first, gradients,
            f"{layers} layers x {tokens:,} tokens x {per_token / 1024:.0f} KiB/token saved for "
            f"backward ({s.attention})")


def int8_inputs_per_token(shape: Shape, dt: Dtypes) -> int:
    """Bytes LLM.int8 layers keep per token and decoder layer: bitsandbytes' MatMul8bitLt keeps its
    input, when that needs a gradient (always below LoRA), as ``ctx.tensors`` rather than through
    save_for_backward: each norm's output (one tensor for the linears reading it), the attention
    output and the MLP product. Checkpointing only drops what passes through save_for_backward, so
    these stay with it too (seen in the traces)."""
    return (shape.norms_per_layer * shape.hidden_size * dt.residual
            + shape.num_attention_heads * shape.head_dim * dt.attention + shape.intermediate_size * dt.matmul_out)


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
    elif s.attention == "sdpa" and (s.packing or (s.micro_batch_size > 1 and s.padded) or
                                    (shape.sliding_window is not None and seq >= shape.sliding_window)):
        # A mask (padding, or a sliding window the sequence reaches: transformers' sdpa_mask skips
        # it only below the window) rules out sdpa's native GQA (k/v repeated to all heads) and is
        # turned into a float bias per layer. flash_attention_2 takes both natively.
        attention = 4 * hq * dt.attention + seq * dt.attention
    else:  # q, k, v, the output and an fp32 logsumexp per head (flash and memory-efficient kernels)
        attention = (2 * hq + hkv + v_kept) * dt.attention + 4 * heads
    # Gated: gate output (act input), activation and up output (product inputs); plain: fc1 out.
    # Phi's gelu_new is tanh-GELU in Python ops: input, x / 2, tanh and 1 + tanh are kept.
    act = 3 if shape.gated_mlp else (4 if shape.model_type == "phi" else 1)
    mlp = act * i * dt.matmul_out
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
    # Each adapter saves its input (dropout mask + dropped copy) and its rank-r projection.
    adapter = sum(fin * (dt.adapter_in + dt.dropout_mask) + s.lora_r * dt.adapter_in
                  for fin, _ in adapters.values())
    return norms + attention + mlp + inputs + adapter


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
