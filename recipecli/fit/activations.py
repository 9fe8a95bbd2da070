"""Activation memory per token: what the forward pass keeps for backward, and the logits.

Part of the estimate (estimate.py), split out because it is the arithmetic that depends on the
sequence: what each decoder layer saves with and without gradient checkpointing, what the
eager and sdpa attention kernels keep, and the working set of the LM head and the loss (TRL's
chunked head, or transformers' ``logits.float()``). Plain arithmetic, like estimate.py.
"""
from __future__ import annotations

from ..units import gib
from .architectures import Shape
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
    gradients = 3 * shape.intermediate_size * dt.matmul_out * tokens  # grads inside the MLP
    final_norm = 4 * h * tokens
    if s.gradient_checkpointing:  # only layer inputs are kept; one layer is recomputed at a time
        return (layers * tokens * h * dt.residual + final_norm, one_layer + gradients,
                f"{layers} layer inputs x {tokens:,} tokens x {h} x {dt.residual} bytes "
                f"(gradient checkpointing) + one layer recomputed ({per_token / 1024:.0f} "
                f"KiB/token)")
    return (layers * one_layer + final_norm, gradients,
            f"{layers} layers x {tokens:,} tokens x {per_token / 1024:.0f} KiB/token saved for "
            f"backward ({s.attention})")


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
    h, i, seq = shape.hidden_size, shape.intermediate_size, s.seq_len
    heads = shape.num_attention_heads
    hq, hkv = heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    full = s.method == "full"
    # Each norm keeps its input in fp32; a trainable norm weight also keeps the normalized input.
    norms = shape.norms_per_layer * (4 + (dt.residual if full else 0)) * h
    if s.attention == "eager":  # q, repeated k/v, fp32 softmax and its cast: heads x seq scores
        attention = 3 * hq * dt.attention + (4 + dt.attention) * heads * seq
    elif s.attention == "sdpa" and s.micro_batch_size > 1:
        # A padding mask rules out sdpa's native GQA (k/v repeated to all heads) and is turned
        # into a float bias per layer.
        attention = 4 * hq * dt.attention + seq * dt.attention
    else:  # q, k, v, output
        attention = (2 * hq + 2 * hkv) * dt.attention
    # Gated: gate output (act input), activation and up output (product inputs); plain: fc1 out.
    mlp = (3 if shape.gated_mlp else 1) * i * dt.matmul_out
    inputs = 0
    if full:  # trainable linears keep their inputs; autocast copies per linear when dtypes differ
        n_attn = len(shape.attention_modules()) - 1
        n_mlp = len(shape.linear_modules()) - n_attn - 2
        copies = n_attn + n_mlp if dt.residual != dt.compute else 2
        inputs = (copies * h + hq + i) * dt.compute
    elif s.weight_bits == 8:  # LLM.int8's matmul keeps its input even for a frozen weight
        inputs = 2 * h * dt.residual + hq * dt.attention + i * dt.matmul_out
    # Each adapter saves its input (dropout mask + dropped copy) and its rank-r projection.
    mask = 1 if s.lora_dropout > 0 else 0
    adapter = sum(fin * (dt.adapter_in + mask) + s.lora_r * dt.adapter_in
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
    tile = min(tokens, LOSS_TILE_TOKENS) * LOSS_TILE_VOCAB * dt.compute
    head_dtype = dt.train if s.method == "full" else dt.other
    cast = min(v, LOSS_TILE_VOCAB) * h * dt.compute if head_dtype != dt.compute else 0
    hidden = tokens * h * (dt.residual + 4)
    head_grad = 4 * v * h if s.method == "full" else 0  # accumulated in fp32, then cast
    return (tile + cast + hidden + head_grad,
            f"chunked loss: {gib(tile)} logits tile + {gib(cast)} head cast + {gib(hidden)} "
            f"hidden states and their fp32 grad" + (f" + {gib(head_grad)} fp32 head grad"
                                                     if head_grad else ""))
