"""Llama 4 as recipe trains it: its text model under TRL, and its experts as linear layers
(model.linearized_experts), the layout of Axolotl's linearized checkpoints
(``axolotl-quants/Llama-4-*-Linearized-*``), which store each layer's experts as one nn.Linear per
expert and projection (``feed_forward.experts.gate_projs.N``, ``up_projs.N``, ``down_projs.N``)
where transformers fuses them into two 3-D parameters.

Built as nn.Linear layers, the experts load from such a checkpoint, bitsandbytes quantizes them
like every other linear layer (and loads them pre-quantized), and peft adapts them by name. The
computation is transformers' own: every expert runs on the tokens routed to it (Llama 4 hands the
experts all tokens, scaled by the router's scores, zero where an expert was not chosen)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

MODEL_TYPES = ("llama4", "llama4_text")  # Llama 4's config (multimodal) and its text model's


class LinearizedExperts(nn.Module):
    """Llama4TextExperts' computation, one nn.Linear per expert and projection.

    Named apart from transformers' class on purpose: transformers replaces modules named
    Llama4TextExperts with its own per-expert list (other names) when it loads a checkpoint
    quantized by bitsandbytes, and these names must stay the checkpoint's."""

    def __init__(self, config):
        super().__init__()
        from transformers.activations import ACT2FN

        self.num_experts, self.hidden_size = config.num_local_experts, config.hidden_size
        hidden, width = config.hidden_size, config.intermediate_size

        def linears(fan_in: int, fan_out: int) -> nn.ModuleList:
            return nn.ModuleList(nn.Linear(fan_in, fan_out, bias=False) for _ in range(self.num_experts))

        self.gate_projs, self.up_projs = linears(hidden, width), linears(hidden, width)
        self.down_projs = linears(width, hidden)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        per_expert = hidden_states.view(self.num_experts, -1, self.hidden_size)  # Llama4TextMoe's order
        out = torch.stack([down(up(x) * self.act_fn(gate(x))) for x, gate, up, down
                           in zip(per_expert, self.gate_projs, self.up_projs, self.down_projs)])
        return out.view(-1, self.hidden_size)


@contextlib.contextmanager
def linearized_llama4():
    """Build every Llama 4 MoE layer made inside the block with :class:`LinearizedExperts`.

    The MoE layer's constructor is wrapped, not transformers' experts class replaced: the model's
    weight initialization picks modules by that class and would look for fused weights in ours."""
    from transformers.models.llama4 import modeling_llama4

    moe = modeling_llama4.Llama4TextMoe
    built = moe.__init__

    def linearized(self, config):
        built(self, config)
        self.experts = LinearizedExperts(config)

    moe.__init__ = linearized
    try:
        yield
    finally:
        moe.__init__ = built


def expose_backbone(model) -> None:
    """Point a Llama 4 text model's base_model at its decoder stack.

    transformers names Llama4ForCausalLM's backbone "language_model" (the prefix its multimodal
    checkpoints store it under) but keeps it at ``.model``, so ``model.base_model`` is the whole
    model, and TRL's fused output head, which runs ``base_model`` for the hidden states, gets logits
    back and fails on the first step. Loading is over; nothing else reads the prefix of an instance."""
    if model.config.model_type in MODEL_TYPES and model.base_model is model and hasattr(model, "model"):
        model.base_model_prefix = "model"
