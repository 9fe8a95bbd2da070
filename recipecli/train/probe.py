"""Trace one training step (forward, backward, optimizer step) of a causal LM built from its
config.json alone, with real tensors on the CPU or, at full size and without memory, under
``FakeTensorMode``; memtrace.MemTrace counts every storage.

Real and fake run the same code: ``_build`` makes the model (transformers ``from_config``, TRL's
fused LM head, peft LoRA, activation checkpointing as the Trainer enables it) and ``_step`` trains
it one step on a worst-case batch (every row ``seq_len`` tokens, no padding, no packing). The fake
path builds on the meta device, then wraps each parameter and buffer as a fake tensor on the
"cpu" fake device (``_to_fake``; peft cannot build adapters inside FakeTensorMode: module._apply
cannot swap fake tensors). Three things kept the fake count from the real one, each handled:
- transformers decides whether a batch is packed from the values of position_ids
  (masking_utils.find_packed_sequence_indices). Fake values cannot be read, so it assumed packing
  and built a batch x seq x seq mask for every step, which also takes sdpa off its flash kernel.
  ``_unpacked_batch`` answers as a real unpacked batch does (the probe builds the batch, so the
  answer is known) after running the same detection ops.
- the fake device: fake tensors on "meta" would pick meta kernels (sdpa's math path, which keeps
  the seq x seq matrices); on "cpu" they pick what real CPU tensors pick.
- frees: storages are counted as freed when their last reference goes. gc.collect runs before the
  step and the cyclic collector is off during it (``_refcount_only``), so a storage held only by
  a reference cycle is counted the same way, whether the tensors are real or fake.
The tests hold real and fake equal (to the byte on llama, qwen2 and phi, lora and full, with and
without checkpointing; the issue's 1,058 vs 1,841 MiB gap was not reproduced with this build).

Which kernels: a CUDA run's memory depends on the kernels it picks; this trace runs CPU ones.
- attention: with no padding mask transformers' sdpa path calls
  ``scaled_dot_product_attention(is_causal=True)``. On CUDA that is flash (fp16/bf16) or
  memory-efficient (fp32) attention: each keeps the output and a logsumexp per row and head for
  backward, never a seq x seq matrix. Here real and fake tensors both take
  ``_scaled_dot_product_flash_attention_for_cpu``, which keeps the same two tensors (the CUDA
  memory-efficient kernel pads its logsumexp to a multiple of 32 rows: not modelled).
  test_probe.py checks that an sdpa trace holds no seq x seq storage and an eager one does.
- optimizer: torch's AdamW uses the foreach kernels on CUDA and a per-parameter loop on the CPU;
  ``adamw_torch`` here asks for foreach, so the step's temporaries are those of a CUDA run.
- loss: TRL's fused LM head scores vocabulary tiles; on CUDA it keeps only labelled positions
  (the same count for a worst-case batch) and folds tiles in Triton kernels, here in torch ops,
  whose temporaries are tile-sized.
- never seen by any CPU trace: buffers allocated and freed inside one kernel (cuBLAS workspaces,
  flash attention's scratch) and the caching allocator's rounding; those belong to the
  allocator model (issue 8, section 3).

Not handled yet: mixed precision (bf16/fp16 autocast; every weight here is fp32) and
bitsandbytes 4-bit/8-bit bases (qlora). bitsandbytes registers fake kernels for its ops
(bitsandbytes/_ops.py), and one NF4 Linear4bit traces the same real and fake
(test_probe.py), but only by hand: ``Params4bit`` cannot wrap a FakeTensor
(``Tensor._make_subclass`` refuses), so the weight must be a plain uint8 fake parameter carrying
``quant_state`` (all Linear4bit.forward reads), bitsandbytes' code table must be built outside
fake mode (create_dynamic_map is data-dependent) and the mode must allow that one real input.
Wiring this into a transformers/peft qlora model (prepare_model_for_kbit_training included) is
the next step.

Imports torch at import time: import it inside functions (see train/__init__.py).
"""
from __future__ import annotations

import contextlib
import gc
import time
from typing import Optional, Sequence

import torch

from .memtrace import ADAPTERS, GRADIENTS, OPTIMIZER, OTHER, WEIGHTS, MemTrace, Trace
from .model import lora_targets

OPTIMIZERS = ("adamw_torch", "sgd")
TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks of its fused LM head


def _config(config_dict: dict):
    from transformers import AutoConfig

    values = {k: v for k, v in config_dict.items() if k != "model_type"}
    return AutoConfig.for_model(config_dict.get("model_type", "llama"), **values)


def _build(config_dict: dict, *, method: str, lora_r: int, lora_alpha: int, lora_dropout: float,
           targets, gradient_checkpointing: bool, attention: str, loss: str):
    """The model as a run trains it: fp32 weights, LoRA adapters or every weight trainable."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_config(config_dict), dtype=torch.float32,
                                             attn_implementation=attention)
    if loss == "trl":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=TRL_OUTPUTS)  # as SFTTrainer.__init__ does, before peft
    elif loss != "transformers":
        raise ValueError(f"loss {loss!r}: trl or transformers")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, task_type="CAUSAL_LM",
                          target_modules=lora_targets(targets, model))
        model = get_peft_model(model, lora)
    elif method != "full":
        raise ValueError(f"method {method!r}: lora or full (qlora is not traced yet)")
    if gradient_checkpointing:
        # what the Trainer does (transformers' default kwargs: non-reentrant), and SFTTrainer's input
        # gradients for a frozen base
        model.activation_checkpointing_enable()
        if method == "lora":
            model.enable_input_require_grads()
    model.train()
    return model


def _optimizer(name: str, params: Sequence[torch.nn.Parameter]):
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)  # foreach: what CUDA defaults to
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-4)
    raise ValueError(f"optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")


def _loss(model, input_ids: torch.Tensor, how: str) -> torch.Tensor:
    """The loss as the run computes it: SFTTrainer.compute_loss's fused LM head (per-token log
    probabilities in vocabulary tiles, no full logits), or the model's own (full logits)."""
    if how == "transformers":
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    out = model(input_ids=input_ids, labels=input_ids, use_cache=False, fused_lm_head=True)
    # SFTTrainer divides by the batch's token count (num_items_in_batch); its metrics (.item()) are left out
    return -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)


def _step(model, optimizer, tracer: MemTrace, input_ids: torch.Tensor, how: str) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    tracer.phase("forward")
    loss = _loss(model, input_ids, how)
    tracer.phase("backward")
    loss.backward()
    del loss
    tracer.tag([p.grad for p in trainable if p.grad is not None], GRADIENTS)
    tracer.phase("optimizer")
    optimizer.step()
    tracer.tag([t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)],
               OPTIMIZER)
    optimizer.zero_grad(set_to_none=True)


def _to_fake(model, mode) -> None:
    """Replace every meta parameter and buffer of ``model`` by a fake tensor on the "cpu" fake
    device, in place; tied weights stay one tensor."""
    device = torch.device("cpu")
    done: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None:
                    continue
                if id(t) not in done:
                    fake = mode.fake_tensor_converter.from_meta_and_device(mode, t.data, device)
                    done[id(t)] = (torch.nn.Parameter(fake, requires_grad=t.requires_grad)
                                   if isinstance(t, torch.nn.Parameter) else fake)
                table[name] = done[id(t)]


@contextlib.contextmanager
def _unpacked_batch():
    """Tell transformers' mask code what it would read from a real batch: no packed sequences.

    transformers decides whether a batch is packed from the values of position_ids
    (masking_utils.find_packed_sequence_indices); it cannot read fake values, so it assumes packing
    and builds a batch x seq x seq mask, which also takes sdpa off its flash kernel. The probe's
    batches are never packed (one sequence per row, position_ids 0..seq-1), so the real answer is
    known: None.
    """
    from transformers import masking_utils

    found = masking_utils.find_packed_sequence_indices

    def unpacked(position_ids):
        found(position_ids)  # the same temporaries as a real batch, then the answer a real one gives
        return None

    masking_utils.find_packed_sequence_indices = unpacked
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = found


@contextlib.contextmanager
def _refcount_only():
    """Free storages the moment their last reference goes, as CUDA code does, for real and fake
    tensors alike: collect what is pending, then keep the cyclic collector out of the block."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def trace_step(config_dict: dict, *, method: str = "lora", lora_r: int = 16, targets="all-linear",
               seq_len: int = 512, micro_batch: int = 1, gradient_checkpointing: bool = False,
               optimizer: str = "adamw_torch", fake: bool = True, lora_alpha: Optional[int] = None,
               lora_dropout: float = 0.05, attention: str = "sdpa", loss: str = "trl", steps: int = 1) -> Trace:
    """Trace training steps on a worst-case batch (every sequence ``seq_len`` tokens).

    Args:
        config_dict: the model's config.json as a dict (``model_type`` and sizes).
        method: "lora" (peft adapters on a frozen fp32 base) or "full" (every weight trained).
        lora_r, targets, lora_alpha, lora_dropout: the adapters (targets as a recipe writes
            them: "all-linear", "attention" or module names); alpha defaults to 2 r.
        seq_len, micro_batch: the batch shape.
        gradient_checkpointing: recompute each decoder layer in backward.
        optimizer: "adamw_torch" (foreach AdamW, as on CUDA) or "sgd".
        fake: trace under FakeTensorMode (no tensor memory) instead of with real CPU tensors.
        attention: transformers' attn_implementation ("sdpa" or "eager").
        loss: "trl" (SFTTrainer's fused LM head, what ``recipe run`` trains with) or
            "transformers" (the model's own loss over full logits).
        steps: optimizer steps traced; from the second on, the optimizer state made by the first
            is live through forward and backward (phases of the same name share one peak).

    Returns:
        The Trace: peak bytes, peaks after load and in forward, backward and the optimizer step,
        the peak's breakdown by category, the allocation events; ``seconds`` is the wall time of
        the traced steps (model building excluded).

    Raises:
        ValueError: an unknown method or optimizer.
        UnknownTargets: targets that match no linear layer of the model.
    """
    build = dict(method=method, lora_r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=lora_dropout,
                 targets=targets, gradient_checkpointing=gradient_checkpointing, attention=attention,
                 loss=loss)
    mode = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode()
        with torch.device("meta"):
            model = _build(config_dict, **build)
        _to_fake(model, mode)
    else:
        model = _build(config_dict, **build)
    with mode:
        opt = _optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
        vocab = model.config.vocab_size
        input_ids = torch.randint(0, vocab, (micro_batch, seq_len))
        tracer = MemTrace()
        for p in model.parameters():
            tracer.track(p, ADAPTERS if method == "lora" and p.requires_grad else WEIGHTS)
        tracer.track(list(model.buffers()) + [input_ids], OTHER)
        with _refcount_only(), (_unpacked_batch() if fake else contextlib.nullcontext()):
            start = time.perf_counter()
            with tracer:
                for _ in range(steps):
                    _step(model, opt, tracer, input_ids, loss)
            seconds = time.perf_counter() - start
    trace = tracer.result()
    trace.seconds = seconds
    return trace
