"""Trace one training step (forward, backward, optimizer step) of a causal LM built from its
config.json alone, as ``recipe run`` would train it, with real tensors on the CPU or, at full
size and without memory, under ``FakeTensorMode``; memtrace.MemTrace counts every storage.

Real and fake run the same code: ``_build`` makes the model as ``recipe run`` does (transformers
``from_config`` in the dtype precision.choose decides; for qlora transformers' own bitsandbytes
quantizer swaps the linear layers and model.prepare_kbit (peft's k-bit preparation, the run's
code) follows; TRL's fused LM head; peft LoRA from model.lora_config; model.enforce_dtypes; activation
checkpointing as the Trainer enables it) and ``_step`` trains it one step as the Trainer does
(autocast around forward and loss, the fp16 loss scaled, accumulated micro-batches, clipping,
the optimizer the Trainer builds for ``optim=``) on a worst-case batch (every row ``seq_len``
tokens). The fake path builds on the meta device, then wraps each parameter and buffer as a fake
tensor on the "cpu" fake device (``_to_fake``; peft cannot build adapters inside FakeTensorMode).
What kept the fake count from the real one, each handled:
- transformers decides whether a batch is packed from the values of position_ids; fake values
  cannot be read (``_packing_known`` answers as the real batch does).
- the fake device: on "meta" fake tensors would pick meta kernels (sdpa's math path); on "cpu"
  they pick what real CPU tensors pick.
- frees: gc.collect before the step, the cyclic collector off during it (``_refcount_only``).
- bitsandbytes: ``Params4bit``/``Int8Params`` cannot wrap a FakeTensor (``Tensor._make_subclass``
  refuses), so a fake quantized weight is a plain uint8/int8 parameter carrying ``quant_state``
  (all Linear4bit.forward reads) or ``CB``/``SCB`` (what Linear8bitLt.forward moves into its
  state), made by bitsandbytes' own quantize functions through its registered fake kernels. Its
  code table (create_dynamic_map, data-dependent) is built for real first, and so are 8-bit
  optimizers' maps: the fake mode allows those few real inputs.
The tests hold real and fake equal to the byte (llama, qwen2, phi; lora, full, qlora nf4/fp4/
double quant/int8; fp32, bf16, fp16; every optimizer; accumulation; packing; checkpointing), and
the quantized weights and their state equal to hand arithmetic.

Which kernels: a CUDA run's memory depends on the kernels it picks; this trace runs CPU ones and,
where they would keep other tensors, the GPU's stand-ins from kernels.py (its docstring says which
and why).

Imports torch at import time: import it inside functions (see train/__init__.py).
"""
from __future__ import annotations

import contextlib
import gc
import time
from typing import Optional, Sequence

import torch

from ..fit.precision import DTYPE_OF, FLASH_KERNELS, Choices, dtypes
from .memtrace import ADAPTERS, GRADIENTS, OPTIMIZER, OTHER, PAGED, QUANT_STATE, WEIGHTS, MemTrace, Trace
from .kernels import gpu_kernels
from .model import (bnb_config, drop_adapter_inputs, enforce_dtypes, freeze_all_but, lora_config, prepare_kbit,
                    quantize_experts, repeated_kv_heads)

OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd")
TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks of its fused LM head
PAGED_MIN_NUMEL = 100_000  # bitsandbytes pages a state buffer from this size (Optimizer8bit.get_state_buffer)
PACKED_SEQUENCES = 4  # sequences in one traced packed row
MICRO_BATCHES_TRACED = 2  # of an accumulation: the second one repeats for every later one


def _config(config_dict: dict):
    from transformers import AutoConfig

    values = {k: v for k, v in config_dict.items() if k != "model_type"}
    return AutoConfig.for_model(config_dict.get("model_type", "llama"), **values)


def _quantize(model, bnb, fake: bool, device) -> list:
    """Swap the linear layers for bitsandbytes ones as from_pretrained does (transformers' own
    quantizer picks the layers, the output head stays 16-bit); real: quantize each layer's weights
    onto ``device`` as transformers' Bnb4bitQuantize / Bnb8bitQuantize do. Returns the bitsandbytes
    layers."""
    import bitsandbytes as bnb_lib
    from transformers.quantizers.auto import AutoHfQuantizer

    linear = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    quantizer = AutoHfQuantizer.from_config(bnb)
    quantizer.preprocess_model(model, device_map=None)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, (bnb_lib.nn.Linear4bit, bnb_lib.nn.Linear8bitLt)):
            continue
        old = linear[name]
        if old.bias is not None:  # from_pretrained loads biases in the model's dtype
            module.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        if not fake:
            kwargs = {k: v for k, v in module.weight.__dict__.items() if k != "SCB"}
            kind = bnb_lib.nn.Params4bit if isinstance(module, bnb_lib.nn.Linear4bit) else bnb_lib.nn.Int8Params
            # bitsandbytes quantizes a weight as it moves it to the device, one layer at a time
            module.weight = kind(old.weight.data, requires_grad=False, **kwargs).to(device)
        layers.append(module)
    quantizer.postprocess_model(model)
    return layers


def _fake_quantized(layers: Sequence, dtype: torch.dtype) -> None:
    """Give each bitsandbytes layer fake quantized weights (inside the FakeTensorMode).

    Params4bit and Int8Params cannot wrap a FakeTensor (Tensor._make_subclass refuses), so the weight
    is a plain parameter holding what the real one holds: Linear4bit.forward reads only
    ``weight.quant_state``; Linear8bitLt.forward moves ``weight.CB``/``SCB`` into its state."""
    import bitsandbytes as bnb

    for module in layers:
        shape = (module.out_features, module.in_features)
        if isinstance(module, bnb.nn.Linear4bit):
            old = module.weight
            packed, state = bnb.functional.quantize_4bit(
                torch.empty(shape, dtype=dtype), blocksize=old.blocksize, compress_statistics=old.compress_statistics,
                quant_type=old.quant_type, quant_storage=old.quant_storage)
            weight = torch.nn.Parameter(packed, requires_grad=False)
            weight.quant_state = module.quant_state = state
        else:
            cb, scb, _ = bnb.functional.int8_vectorwise_quant(torch.empty(shape, dtype=torch.float16))
            weight = torch.nn.Parameter(cb, requires_grad=False)
            weight.CB, weight.SCB, weight.has_fp16_weights = cb, scb, False
            # LLM.int8's outlier columns depend on the activations' values (fake ones have none): the
            # fake trace takes none, which leaves out a tokens x outliers slice of the input
            module.state.threshold = 0.0
        module._parameters["weight"] = weight


def _quant_state(layers: Sequence) -> list[torch.Tensor]:
    """The tensors beside the quantized weights: absmax, code tables, nested statistics, SCB."""
    found = []
    for module in layers:
        state = getattr(module.weight, "quant_state", None)
        if state is not None:
            found += [state.absmax, state.code]
            if state.nested:
                found += [state.state2.absmax, state.state2.code]
                found += [state.offset] if isinstance(state.offset, torch.Tensor) else []
        for t in (getattr(module.weight, "SCB", None), module.state.SCB if hasattr(module, "state") else None):
            found += [t] if isinstance(t, torch.Tensor) else []
    return found


def _build(config_dict: dict, *, method: str, lora_r: int, lora_alpha: float, lora_dropout: float,
           targets, gradient_checkpointing: bool, attention: str, loss: str, choices: Choices,
           bnb, fake: bool, unfrozen: Sequence[str] = (), moe_experts: bool = False,
           target_parameters: Sequence[str] = ()):
    """The model as a run trains it (runner.run: model.load_model, SFTTrainer, enforce_dtypes),
    built from its config: base weights in the run's dtype (bitsandbytes layers for qlora, then
    peft's k-bit preparation), TRL's fused LM head, LoRA adapters or every weight trainable, the
    trained parameters cast as the run casts them, activation checkpointing as the Trainer enables
    it. Returns the model and its bitsandbytes layers."""
    from transformers import AutoModelForCausalLM

    device = torch.get_default_device()  # gpuprobe builds on the card it measures
    # A quantized base is built in 16 bits on the CPU and quantized onto the card layer by layer, as
    # from_pretrained loads it: built on the card whole, a 7B model's 16-bit weights would have to
    # fit an 8 GB card before its 4-bit ones could be measured.
    staged = method == "qlora" and not fake  # on the CPU too, so the tests run the GPU's path
    with torch.device("cpu") if staged else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_config(_config(config_dict), dtype=getattr(torch, choices.weight_dtype),
                                                 attn_implementation=attention)
    layers = []
    if method == "qlora":
        layers = _quantize(model, bnb, fake, device)
        if staged:
            model.to(device)  # what stayed 16-bit: embeddings, norms, the head, rotary buffers
        if moe_experts:
            quantize_experts(model, 8 if bnb.load_in_8bit else 4, bnb.bnb_4bit_quant_type,
                             bnb.bnb_4bit_use_double_quant)
        model = prepare_kbit(model, gradient_checkpointing)
    if loss == "trl":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=TRL_OUTPUTS)  # as SFTTrainer.__init__ does, before peft
    elif loss != "transformers":
        raise ValueError(f"loss {loss!r}: trl or transformers")
    if method in ("lora", "qlora"):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(lora_r, lora_alpha, lora_dropout, targets, model, target_parameters))
        drop_adapter_inputs(model, lora_dropout)
    elif method != "full":
        raise ValueError(f"method {method!r}: qlora, lora or full")
    elif unfrozen:
        freeze_all_but(model, unfrozen)
    enforce_dtypes(model, choices)  # what the runner does after SFTTrainer's own casts
    if gradient_checkpointing:
        # what the Trainer does (transformers' default kwargs: non-reentrant), and SFTTrainer's input
        # gradients for a frozen base
        model.activation_checkpointing_enable()
        if method != "full":
            model.enable_input_require_grads()
    model.train()
    return model, layers


def _optimizer(name: str, params: Sequence[torch.nn.Parameter], weight_decay: float = 0.0):
    """The optimizer the Trainer builds for ``optim=name`` (Trainer.get_optimizer_cls_and_kwargs).

    torch's optimizers are asked for their foreach kernels, which is what they pick on CUDA (their
    CPU default is a per-parameter loop with other temporaries)."""
    import inspect

    from transformers import Trainer, TrainingArguments

    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")
    args = TrainingArguments(output_dir="probe", optim=name, use_cpu=True, report_to="none",
                             weight_decay=weight_decay)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    if issubclass(cls, torch.optim.Optimizer) and cls.__module__.startswith("torch.") \
            and "foreach" in inspect.signature(cls).parameters:
        kwargs = {**kwargs, "foreach": True}
    return cls(params, **kwargs)


def _paged_state(optimizer) -> list[torch.Tensor]:
    """The state bitsandbytes puts in CUDA unified memory: state1/state2 of parameters from
    PAGED_MIN_NUMEL elements, for a paged optimizer (on the CPU it allocates them as plain tensors)."""
    if not getattr(optimizer, "is_paged", False):
        return []
    return [state[key] for p, state in optimizer.state.items() if p.numel() >= PAGED_MIN_NUMEL
            for key in ("state1", "state2") if isinstance(state.get(key), torch.Tensor)]


def _loss(model, batch: dict, how: str) -> torch.Tensor:
    """The loss as the run computes it: SFTTrainer.compute_loss's fused LM head (per-token log
    probabilities in vocabulary tiles, no full logits), or the model's own (full logits)."""
    if how == "transformers":
        return model(**batch, labels=batch["input_ids"], use_cache=False).loss
    out = model(**batch, labels=batch["input_ids"], use_cache=False, fused_lm_head=True)
    # SFTTrainer divides by the batch's token count (num_items_in_batch); its metrics (.item()) are left out
    return -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)


def _step(model, optimizer, tracer: MemTrace, batch: dict, how: str, choices: Choices, micro_batches: int,
          max_grad_norm: float) -> None:
    """One optimizer step as the Trainer runs it: per micro-batch the forward and loss under
    autocast, the (fp16: scaled) backward into accumulating gradients; then clipping, the step and
    zero_grad."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = batch["input_ids"].device.type  # "cpu" for fake tensors; "cuda" when gpuprobe measures
    autocast = (torch.autocast(device, dtype=getattr(torch, choices.autocast_dtype)) if choices.autocast_dtype
                else contextlib.nullcontext())
    for _ in range(micro_batches):
        tracer.phase("forward")
        with autocast:
            loss = _loss(model, batch, how)
        if choices.grad_scaler:
            loss = loss * torch.full((), 65536.0)  # GradScaler.scale; its in-place unscale_ allocates nothing
        tracer.phase("backward")
        loss.backward()
        del loss
    tracer.tag([p.grad for p in trainable if p.grad is not None], GRADIENTS)
    tracer.phase("optimizer")
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)  # foreach on every device
    optimizer.step()
    tracer.tag([t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)],
               OPTIMIZER)
    tracer.tag(_paged_state(optimizer), PAGED)
    optimizer.zero_grad(set_to_none=True)


def _to_fake(model, mode, skip=()) -> None:
    """Replace every meta parameter and buffer of ``model`` (but the modules in ``skip``' weights)
    by a fake tensor on the "cpu" fake device, in place; tied weights stay one tensor."""
    device = torch.device("cpu")
    done: dict[int, torch.Tensor] = {id(m.weight): m.weight for m in skip}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or id(t) in done and done[id(t)] is t and module in skip:
                    continue
                if id(t) not in done:
                    fake = mode.fake_tensor_converter.from_meta_and_device(mode, t.data, device)
                    done[id(t)] = (torch.nn.Parameter(fake, requires_grad=t.requires_grad)
                                   if isinstance(t, torch.nn.Parameter) else fake)
                table[name] = done[id(t)]


@contextlib.contextmanager
def _packing_known(packed: bool):
    """Tell transformers' mask code what it would read from the real batch.

    transformers decides whether a batch is packed from the values of position_ids
    (masking_utils.find_packed_sequence_indices); it cannot read fake values, so it assumes packing
    and builds a batch x seq x seq mask, which also takes sdpa off its flash kernel. The probe
    builds the batch, so the real answer is known: None for unpacked rows; for a packed row the
    fake result stands (its values are never read, only its shape, which is the real one).
    """
    from transformers import masking_utils

    found = masking_utils.find_packed_sequence_indices

    def known(position_ids):
        indices = found(position_ids)  # the same temporaries as a real batch, then the real answer
        return indices if packed else None

    masking_utils.find_packed_sequence_indices = known
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


def _batch(vocab: int, seq_len: int, micro_batch: int, packing: bool) -> dict:
    """A worst-case batch: every row ``seq_len`` tokens. Packed, as TRL's padding-free collator
    hands it over: the rows flattened into one, position_ids restarting at each sequence."""
    if not packing:
        return {"input_ids": torch.randint(0, vocab, (micro_batch, seq_len))}
    length = max(seq_len // PACKED_SEQUENCES, 1)
    positions = torch.arange(micro_batch * seq_len) % length
    return {"input_ids": torch.randint(0, vocab, (1, micro_batch * seq_len)), "position_ids": positions[None]}


def trace_step(config_dict: dict, *, method: str = "lora", lora_r: int = 16, targets="all-linear",
               seq_len: int = 512, micro_batch: int = 1, gradient_checkpointing: bool = False,
               optimizer: str = "adamw_torch", fake: bool = True, lora_alpha: Optional[float] = None,
               lora_dropout: float = 0.05, attention: str = "sdpa", loss: str = "trl", steps: int = 1,
               precision: str = "fp32", choices: Optional[Choices] = None, bits: int = 4,
               quant_type: str = "nf4", double_quant: bool = False, gradient_accumulation_steps: int = 1,
               packing: bool = False, max_grad_norm: float = 0.0, weight_decay: float = 0.0,
               unfrozen: Sequence[str] = (), moe_experts: bool = False, target_parameters: Sequence[str] = (),
               gqa_repeat: bool = False, recorder: Optional[MemTrace] = None) -> Trace:
    """Trace training steps on a worst-case batch (every sequence ``seq_len`` tokens).

    Args:
        config_dict: the model's config.json as a dict (``model_type`` and sizes).
        method: "qlora" (LoRA on a 4/8-bit bitsandbytes base), "lora" (adapters on a frozen 16/32-bit
            base) or "full" (every weight trained).
        lora_r, targets, lora_alpha, lora_dropout: the adapters (targets as a recipe writes
            them: "all-linear", "attention" or module names); alpha defaults to 2 r.
        seq_len, micro_batch: the batch shape.
        gradient_checkpointing: recompute each decoder layer in backward.
        optimizer: one of OPTIMIZERS, built as the Trainer builds it for ``optim=``; paged state is
            counted apart (``Trace.paged_bytes``).
        fake: trace under FakeTensorMode (no tensor memory) instead of with real CPU tensors.
        attention: transformers' attn_implementation ("sdpa", "eager"; "flash_attention_2" and
            "flex_attention" are traced as sdpa, see the module doc).
        loss: "trl" (SFTTrainer's fused LM head, what ``recipe run`` trains with) or
            "transformers" (the model's own loss over full logits).
        steps: optimizer steps traced; from the second on, the optimizer state made by the first
            is live through forward and backward (phases of the same name share one peak).
        precision: the resolved training precision, "fp32", "bf16", "fp16" or "pure_fp16" (weights, trained
            parameters and autocast as fit.precision.dtypes decides them); ignored with ``choices``.
        choices: the run's precision.choose result (``recipe probe`` passes it); its attention is
            not used (``attention`` is).
        bits, quant_type, double_quant: the qlora base: 4 bits ("nf4" or "fp4", double quant or not)
            or 8 (LLM.int8).
        gradient_accumulation_steps: micro-batches per optimizer step; the gradients of one are
            alive through the next one's forward. At most two are traced (the rest repeat the second).
        packing: the batch as TRL packs it (see :func:`_batch`).
        max_grad_norm: clip gradients to this norm before the step, as the Trainer does; 0: no clipping.
        weight_decay: the optimizer's weight decay (in-place, no memory of its own).
        unfrozen: with method full, the parameters that train (training.unfrozen_parameters); () all.
        moe_experts: with method qlora, a mixture of experts' fused experts quantized too (in bnb's bits).
        target_parameters: parameters adapted directly (lora.target_parameters: fused experts).
        gqa_repeat: grouped-query attention with the key/value heads repeated, as the run does on a
            card without a fused kernel for grouped heads (Choices.gqa_repeat, model.repeated_kv_heads).
        recorder: the MemTrace to record into (a subclass that also reads a device's counters,
            gpuprobe.py); None: a plain MemTrace.

    Returns:
        The Trace: peak bytes, peaks after load and in forward, backward and the optimizer step,
        the peak's breakdown by category, the allocation events; ``seconds`` is the wall time of
        the traced steps (model building excluded).

    Raises:
        ValueError: an unknown method, precision or optimizer.
        UnknownTargets: targets that match no linear layer of the model.
    """
    quantized = method == "qlora"
    if choices is None:
        if precision not in DTYPE_OF:
            raise ValueError(f"precision {precision!r}: one of {', '.join(DTYPE_OF)}")
        compute = DTYPE_OF[precision] if quantized else None
        choices = Choices(precision, "sdpa", compute, (), **dtypes(method, quantized, precision, compute))
    bnb = bnb_config(bits, quant_type, double_quant, choices.weight_dtype) if quantized else None
    build = dict(method=method, lora_r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=lora_dropout,
                 targets=targets, gradient_checkpointing=gradient_checkpointing, loss=loss, choices=choices, bnb=bnb,
                 attention="sdpa" if attention in FLASH_KERNELS else attention,
                 unfrozen=unfrozen,
                 moe_experts=moe_experts, target_parameters=target_parameters)
    mode = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        if quantized:
            import bitsandbytes as bnb_lib

            # its code table is data-dependent: built for real, once, before the fake mode reads it
            bnb_lib.functional.quantize_blockwise(torch.randn(256), blocksize=256)
        # non-fake inputs: bitsandbytes' code tables and 8-bit optimizers' maps (real, a few KiB)
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with torch.device("meta"):
            model, layers = _build(config_dict, **build, fake=True)
        _to_fake(model, mode, skip=layers)
        with mode:
            _fake_quantized(layers, getattr(torch, choices.weight_dtype))
    else:
        model, layers = _build(config_dict, **build, fake=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # built outside the fake mode: bitsandbytes' 8-bit optimizers make their maps from data at construction
    opt = _optimizer(optimizer, trainable, weight_decay)
    micro_batches = min(gradient_accumulation_steps, MICRO_BATCHES_TRACED)
    # Flash attention runs a packed row's sequences one by one, maskless; traced as sdpa, the row
    # would get the row x row block-diagonal mask sdpa takes instead (13 GiB for Phi-3's 12 x 4,000
    # tokens). The rows side by side hold the same tokens in tensors of the same sizes.
    packing = packing and attention not in FLASH_KERNELS
    with mode:
        batch = _batch(model.config.vocab_size, seq_len, micro_batch, packing)
        tracer = MemTrace() if recorder is None else recorder
        for p in model.parameters():
            tracer.track(p, ADAPTERS if method != "full" and p.requires_grad else WEIGHTS)
        tracer.track(_quant_state(layers), QUANT_STATE)
        tracer.track(list(model.buffers()) + list(batch.values()), OTHER)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_refcount_only())
            if fake:
                stack.enter_context(_packing_known(packing))
            stack.enter_context(gpu_kernels(int8=quantized and bits == 8, fused_lm_head=loss == "trl",
                                            on_cuda=batch["input_ids"].device.type == "cuda"))
            stack.enter_context(repeated_kv_heads(gqa_repeat))
            start = time.perf_counter()
            with tracer:
                for _ in range(steps):
                    _step(model, opt, tracer, batch, loss, choices, micro_batches, max_grad_norm)
            seconds = time.perf_counter() - start
    trace = tracer.result()
    trace.seconds = seconds
    return trace
