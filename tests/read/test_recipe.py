"""The typed recipe: its Literal types are the schema's enums, so the schema stays the one source."""
from __future__ import annotations

from typing import get_args

from recipecli.read import recipe
from recipecli.read.schema import schema

# Where each enum of the schema is, and the Literal of recipe.py that states it for Python.
LITERALS = {
    ("method",): recipe.Method,
    ("quantization", "bits"): recipe.Bits,
    ("quantization", "type"): recipe.QuantType,
    ("quantization", "compute_dtype"): recipe.ComputeDtype,
    ("lora", "target_modules"): recipe.TargetShorthand,
    ("data", "datasets", "format"): recipe.Format,
    ("training", "lr_scheduler"): recipe.LrScheduler,
    ("training", "warmup_shape"): recipe.WarmupShape,
    ("training", "loss"): recipe.TrainingLoss,
    ("training", "qat", "weight_dtype"): recipe.QatWeight,
    ("training", "qat", "activation_dtype"): recipe.QatActivation,
    ("training", "qat", "group_size"): recipe.QatGroup,
    ("training", "optimizer"): recipe.Optimizer,
    ("training", "precision"): recipe.Precision,
    ("training", "attention"): recipe.Attention,
    ("model", "experts_implementation"): recipe.ExpertsImplementation,
    ("model", "tokenizer_backend"): recipe.TokenizerBackend,
    ("logging", "wandb", "mode"): recipe.WandbMode,
    ("logging", "wandb", "log_model"): recipe.WandbLogModel,
    ("distributed", "strategy"): recipe.Strategy,
    ("distributed", "zero_offload"): recipe.ZeroOffload,
    ("data", "chat_template"): recipe.ChatTemplate,
    ("training", "liger_kernel"): recipe.LigerKernel,
}


def _enums(node: dict, path: tuple = ()):
    """(path of properties, enum) of every enum in the schema, looking through items and oneOf."""
    if "enum" in node:
        yield path, node["enum"]
    for key, sub in node.get("properties", {}).items():
        yield from _enums(sub, path + (key,))
    for sub in [node["items"]] if isinstance(node.get("items"), dict) else []:
        yield from _enums(sub, path)
    for sub in node.get("oneOf", []):
        yield from _enums(sub, path)


def test_every_schema_enum_is_a_literal_with_the_same_values():
    enums = dict(_enums(schema()))
    assert set(enums) == set(LITERALS)
    for path, literal in LITERALS.items():
        assert list(get_args(literal)) == enums[path], path
