"""Quantization-aware training (training.qat): torchao's fake-quantized linear layers.

torchao replaces each chosen nn.Linear with its FakeQuantizedLinear, whose forward rounds the
weight (and, asked, the input) to the target integer grid and back, so the loss sees the rounding
an int4 deployment will have while the weights still train in full precision; for mxfp4, with
its MXFakeQuantizedLinear, which rounds both to the 4-bit float of the MX format. The parameters keep
their names, so checkpoints, the saved model and a resume are those of plain full fine-tuning.

torchao is an optional extra, imported inside the functions here.
"""
from __future__ import annotations

from typing import Optional

from ..errors import InvalidRecipe, Problem
from ..read.recipe import Qat, Recipe


def prepare(model, recipe: Recipe) -> int:
    """Fake quantization on the decoder layers' linear layers, switched on at once or, with
    start_step, by :func:`start_callback` at that step. The output head is left out: TRL's chunked
    loss multiplies by its weight directly and never calls its forward.

    Returns:
        How many linear layers fake-quantize.

    Raises:
        InvalidRecipe: torchao is not installed, or group_size does not divide a layer's input width.
    """
    import torch

    qat = recipe.training.qat
    try:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    except ImportError as e:
        raise InvalidRecipe([Problem(recipe.locate(("training", "qat")), "$.training.qat",
                                     f"training.qat needs torchao, which is not installed ({e})",
                                     "pip install 'recipecli[qat]'")]) from None
    head = model.get_output_embeddings()
    chosen = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    narrow = sorted({m.in_features for m in chosen if m.in_features % qat.group_size})
    if narrow:
        raise InvalidRecipe([Problem(recipe.locate(("training", "qat", "group_size")), "$.training.qat.group_size",
                                     f"group_size {qat.group_size} does not divide the input width of "
                                     f"{recipe.model.id}'s linear layers {', '.join(map(str, narrow))}",
                                     "use a group_size that divides them, e.g. 32")])
    if qat.weight_dtype == "mxfp4":
        # Weights and inputs together (rules.py): torchao's MX layer emulates the 4-bit matmul where
        # the card has none, and keeps its inputs as MX tensors for the backward.
        from torchao.prototype.qat import MXFakeQuantizeConfig

        weights = inputs = MXFakeQuantizeConfig(dtype=torch.float4_e2m1fn_x2, block_size=qat.group_size)
    else:
        weights = IntxFakeQuantizeConfig(torch.int4, group_size=qat.group_size)
        inputs = (IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
                  if qat.activation_dtype == "int8" else None)
    chosen_ids = {id(m) for m in chosen}
    quantize_(model, QATConfig(activation_config=inputs, weight_config=weights, step="prepare"),
              filter_fn=lambda module, name: id(module) in chosen_ids)
    if qat.start_step:
        switch(model, False)
    return len(chosen)


def switch(model, on: bool) -> None:
    """Turn every fake quantizer of the model on or off (torchao's per-quantizer switch)."""
    from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase

    for module in model.modules():
        if isinstance(module, FakeQuantizerBase):
            module.enabled = on


def start_callback(qat: Optional[Qat]):
    """A TrainerCallback that turns fake quantization on once start_step optimizer steps are done
    (on a resume past it, at once); None when it starts with the first step."""
    if qat is None or not qat.start_step:
        return None
    from transformers import TrainerCallback

    class StartFakeQuantization(TrainerCallback):
        started = False

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if not self.started and state.global_step >= qat.start_step and model is not None:
                switch(model, True)
                self.started = True

    return StartFakeQuantization()
