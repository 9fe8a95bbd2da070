"""What the GPU run's kernels keep, where probe.py's CPU trace would keep something else.

A CUDA run's memory depends on the kernels it picks; probe.py's trace runs CPU ones.
Fake CUDA tensors are no way out with torch 2.13's CPU build: they can be created, but the first
composite op (linear, ``.to``) asks for a CUDA device guard and the process aborts
(std::terminate, "PyTorch is not linked with support for cuda devices"), and torch.autocast("cuda")
disables itself without CUDA. So the trace runs CPU kernels and picks, where it matters, the
ones the GPU run uses:
- attention: with no padding mask transformers' sdpa path calls
  ``scaled_dot_product_attention(is_causal=True)``. On CUDA that is flash (fp16/bf16) or
  memory-efficient (fp32) attention: each keeps the output and a logsumexp per row and head for
  backward, never a seq x seq matrix. Real and fake CPU tensors take
  ``_scaled_dot_product_flash_attention_for_cpu``, which keeps the same two tensors (the CUDA
  memory-efficient kernel pads its logsumexp to a multiple of 32 rows: not modelled).
  flash_attention_2 cannot run on the CPU: it is traced as sdpa, whose flash kernel keeps the
  same tensors for backward; so is flex_attention, whose Triton kernel (compute capability 8.0
  and later, what precision.choose allows) keeps them too. A packed row (TRL's padding-free collator: the micro-batch in one row,
  position_ids restarting) makes transformers' sdpa path build a block-diagonal mask; with
  flash_attention_2 the run passes sequence boundaries (varlen) instead, so the trace then counts
  a bool mask of the row's length squared more than the run holds.
- LLM.int8: bitsandbytes multiplies with MatMul8bitFp on the CPU and MatMul8bitLt on CUDA;
  ``gpu_int8_matmul`` makes the trace call MatMul8bitLt. 4-bit layers take the same
  MatMul4Bit path (dequantize, matmul) on both devices.
- optimizer: torch's optimizers are asked for foreach kernels, CUDA's default (the CPU's is a
  per-parameter loop). bitsandbytes' 8-bit and paged optimizers run their registered kernels.
  Paged state (state1/state2 of tensors from PAGED_MIN_NUMEL elements, paged optimizers only)
  lives in CUDA unified memory from cudaMallocManaged, outside PyTorch's caching allocator: it is
  tagged PAGED and counted apart (memtrace), never in the allocated peak. On the device it takes
  memory while there is room and is evicted to host RAM when there is not, so it is not a cause of
  an out-of-memory error, but it is in nvidia-smi's figure while resident.
- autocast: ``torch.autocast("cpu")``. Its lists differ from CUDA's (torch/amp docs, "Autocast Op
  Reference"). Both cast linear/matmul/bmm/addmm/baddbmm and scaled_dot_product_attention to the
  16-bit dtype, and both run cross_entropy/nll_loss in fp32. CUDA alone runs softmax,
  log_softmax, logsumexp, layer_norm, group_norm, exp, log, log1p, pow, rsqrt, reciprocal, sum,
  cumsum, prod, norm and softplus in fp32 when handed 16-bit inputs; CPU autocast leaves them in
  their input dtype (checked on torch 2.13 for softmax, log_softmax, logsumexp, layer_norm, exp,
  pow, rsqrt and sum; cross_entropy is fp32 on both). For these models that means phi's
  LayerNorm outputs (fp32 on CUDA, 16-bit here: half the bytes per saved LayerNorm output); the
  fused LM head folds its tiles in Triton on CUDA (see loss below), outside autocast. RMSNorm,
  eager attention's softmax, rotary embeddings and transformers' loss upcast to fp32 explicitly,
  so they match.
- dropout (LoRA's): on CUDA ``dropout`` runs the fused ``native_dropout``, which keeps a bool
  mask for backward; on the CPU it multiplies by a noise tensor of the input's dtype and keeps
  that. ``fused_dropout`` calls ``native_dropout`` (which has a CPU kernel) whatever the device.
- fp16's GradScaler: the loss is scaled (a scalar); unscale_ works in place and is not traced.
- loss: TRL's fused LM head projects the hidden states onto the vocabulary a tile at a time
  (``mm_buf``: up to 4096 tokens x 32768 columns in the compute dtype) and folds each tile into
  per-token statistics. On CUDA the folds are Triton kernels that work in place (forward: the row
  statistics; backward: the tile's gradient written over the tile) and the fp32 accumulation of
  16-bit tiles is one cuBLAS addmm with out_dtype=fp32: no tensor beyond the tile. Without Triton
  TRL folds in torch ops (``_forward_tile``/``_backward_tile``: half a dozen fp32 copies of the
  tile, 3-4 GiB at 4096 tokens x 32000 words) and upcasts both operands of the accumulation.
  ``triton_lm_head`` puts in their place stand-ins that allocate what the CUDA kernels allocate,
  nothing (their values are not the loss's: the probe measures memory, and real and fake traces
  run the same stand-ins). On CUDA ``recipe probe --device cuda`` runs TRL's own kernels. One
  difference is left: on CUDA TRL gathers the labelled positions (``hidden_states[mask]``, a
  data-dependent shape fake tensors cannot have); here it reshapes all of them, which copies the
  same bytes for a worst-case batch of more than one row and is a view for a single row (one
  hidden-state copy, tokens x hidden x 2 bytes, less than the GPU holds).
- mixture-of-experts layers: transformers' grouped_mm path multiplies every token's experts with
  one grouped matmul, torch's native kernel on CUDA cards of compute capability 8.0 and later and its
  own fallback op elsewhere (a loop over the experts). Both keep the gathered inputs and the expert
  weights for backward; the fallback's backward also makes a zero gradient for the (frozen) expert
  stack, where the native kernel makes none. The native kernel has no fake implementation for
  other dtypes than bf16, so ``grouped_experts_fallback`` makes the trace take the fallback op:
  exact for cards before compute capability 8.0, one expert stack's transient gradient above
  what later cards hold. Real tensors on CUDA (``recipe probe --device cuda``) run the card's own.
- never seen by any CPU trace: buffers allocated and freed inside one kernel (cuBLAS workspaces,
  flash attention's scratch), LLM.int8's outlier columns (data-dependent; traced as none) and the
  caching allocator's rounding, which belongs to the allocator model (fit.allocator).

Imports torch at import time: import it inside functions (see train/__init__.py).
"""
from __future__ import annotations

import contextlib
import logging

import torch

from .model import switched_off


@contextlib.contextmanager
def gpu_kernels(*, int8: bool, fused_lm_head: bool, on_cuda: bool):
    """Every stand-in a trace needs: LLM.int8's matmul for 8-bit bases, the Triton folds for TRL's
    fused LM head, fused dropout always, and the experts' fallback grouped matmul off CUDA (real
    tensors on a GPU run the kernel the card has: that is what a measurement is for)."""
    with contextlib.ExitStack() as stack:
        if int8:
            stack.enter_context(gpu_int8_matmul())
        if fused_lm_head:
            stack.enter_context(triton_lm_head())
        stack.enter_context(fused_dropout())
        if not on_cuda:
            stack.enter_context(grouped_experts_fallback())
        yield


@contextlib.contextmanager
def grouped_experts_fallback():
    """Make transformers' grouped_mm experts take its fallback op (see the module doc)."""
    from transformers.integrations import moe

    with switched_off(moe, "_can_use_grouped_mm"):
        yield


@contextlib.contextmanager
def gpu_int8_matmul():
    """Run LLM.int8 layers through the kernel a GPU run uses.

    In training bitsandbytes multiplies on the CPU with MatMul8bitFp (the int8 weight dequantized,
    a float matmul) and on CUDA with MatMul8bitLt (the activations quantized to int8 per row, an
    int8 matmul; the dequantized weight only in backward); bitsandbytes.matmul picks by device.
    MatMul8bitLt has CPU kernels, so this calls it whatever the device. Its per-call warning that
    fp32 inputs are cast to fp16 is silenced."""
    import bitsandbytes as bnb
    from bitsandbytes.autograd._functions import MatMul8bitLt, MatmulLtState

    chosen = bnb.matmul
    log = logging.getLogger("bitsandbytes.autograd._functions")
    level = log.level

    def gpu_matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        state = state or MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        return MatMul8bitLt.apply(A, B, out, bias, state)

    bnb.matmul = gpu_matmul
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        bnb.matmul = chosen
        log.setLevel(level)


@contextlib.contextmanager
def triton_lm_head():
    """Fold TRL's fused-LM-head tiles with what its Triton kernels allocate (nothing), not with its
    torch fallback's tile-sized temporaries (module doc, "loss"). CUDA tensors keep TRL's own code."""
    from trl.kernels import chunked_logprob as kernels

    forward_tile, backward_tile, addmm = kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32

    def forward_in_place(tile, tile_stride, targets, running_max, sum_exp, *args, **kwargs):
        # the statistics stay finite (log_z = log 1) so a real trace's loss, scaled or not, is a number
        running_max.clamp_(min=0.0)
        sum_exp.fill_(1.0)

    def backward_in_place(tile, *args, **kwargs):
        tile.zero_()  # the Triton kernel writes the tile's gradient over the tile

    def addmm_fp32(acc, a, b):
        if acc.device.type == "cuda" or a.dtype == acc.dtype:
            addmm(acc, a, b)  # in place on CUDA (out_dtype) and for fp32 tiles everywhere
        # a 16-bit tile off CUDA: cuBLAS's fp32-output addmm allocates nothing; torch's fallback
        # upcasts both operands, which the GPU never holds, so the accumulation is left out

    kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32 = forward_in_place, backward_in_place, addmm_fp32
    try:
        yield
    finally:
        kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32 = forward_tile, backward_tile, addmm


@contextlib.contextmanager
def fused_dropout():
    """Dropout as CUDA runs it: ``native_dropout``, keeping a bool mask (module doc, "dropout")."""
    functional = torch.nn.functional
    chosen = functional.dropout

    def fused(input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0 or inplace:
            return chosen(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    functional.dropout = fused
    try:
        yield
    finally:
        functional.dropout = chosen
