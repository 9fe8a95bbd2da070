"""Cross-field rules: what the schema cannot say about one field alone.

A short named list, each rule a small function of the merged document. They run only on a
document that passed the schema, so every value has the type the schema promises; fields may
still be absent in an abstract base.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from ..errors import Problem, json_path
from . import paths

Rule = Callable[[dict, "Context"], Iterator[Problem]]


class Context:
    """What a rule needs beside the document: where each value was written, and the folder its
    relative paths resolve against (``load.Resolved.directory_of``)."""

    def __init__(self, locate, directory_of: Callable[[tuple], Path] = Path.cwd):
        self.locate = locate
        self.directory_of = directory_of

    def problem(self, path: tuple, message: str, hint: str, key: bool = False) -> Problem:
        return Problem(self.locate(path, key), json_path(path), message, hint)


def lora_with_full(doc: dict, ctx: Context):
    if doc.get("method") == "full" and "lora" in doc:
        yield ctx.problem(("lora",), "a lora section with method full",
                          "full fine-tuning trains every weight: remove lora, or use method qlora or lora", key=True)


def quantization_without_qlora(doc: dict, ctx: Context):
    if "quantization" in doc and doc.get("method") in ("lora", "full"):
        yield ctx.problem(("quantization",), f"a quantization section with method {doc['method']}",
                          "quantized base weights need adapters: use method qlora, or remove quantization", key=True)


def four_bit_options_with_8bit(doc: dict, ctx: Context):
    quant = doc.get("quantization", {})
    if quant.get("bits") == 8:
        for field in ("type", "double_quant"):
            if field in quant:
                yield ctx.problem(("quantization", field), f"quantization.{field} only applies to 4-bit",
                                  "remove it, or set bits: 4", key=True)


def compute_dtype_against_precision(doc: dict, ctx: Context):
    dtype = doc.get("quantization", {}).get("compute_dtype")
    precision = doc.get("training", {}).get("precision")
    clash = {("bfloat16", "fp16"), ("float16", "bf16")}
    if (dtype, precision) in clash:
        yield ctx.problem(("quantization", "compute_dtype"), f"compute_dtype {dtype} with precision {precision}",
                          "use compute_dtype: auto to follow training.precision")


def flash_attention_needs_half(doc: dict, ctx: Context):
    training = doc.get("training", {})
    if training.get("attention") == "flash_attention_2" and training.get("precision") == "fp32":
        yield ctx.problem(("training", "attention"), "flash_attention_2 with precision fp32",
                          "FlashAttention 2 runs in fp16/bf16 only: use attention sdpa, or precision auto")


def model_is_a_folder_or_a_hub_id(doc: dict, ctx: Context):
    model_id = doc.get("model", {}).get("id")
    if model_id is None:
        return
    folder = paths.model_folder(model_id, ctx.directory_of(("model", "id")))
    if folder is not None and not folder.is_dir():
        yield ctx.problem(("model", "id"), f"local model folder not found: {folder}",
                          "paths are relative to the recipe file; a hub id looks like org/name")
    elif folder is None and not paths.is_hub_id(model_id):
        yield ctx.problem(("model", "id"), f"{model_id!r} is neither a hub id nor an existing folder",
                          "a hub id is org/name (letters, digits, - _ .); a local folder is a path such as "
                          "./models/my-model, relative to the recipe file")


def datasets_are_files_or_hub_ids(doc: dict, ctx: Context):
    for i, dataset in enumerate(doc.get("data", {}).get("datasets", [])):
        path = dataset.get("path")
        where = ("data", "datasets", i, "path")
        if path is None:
            continue
        if paths.is_data_file(path):
            file = paths.absolute(path, ctx.directory_of(where))
            if not file.is_file():
                yield ctx.problem(where, f"dataset file not found: {file}" if not file.exists() else
                                  f"not a regular file: {file}",
                                  "paths are relative to the recipe file; a hub dataset id looks like org/name")
        elif not paths.is_hub_id(path):
            yield ctx.problem(where, f"{path!r} is neither a hub dataset id nor a data file",
                              "a hub id is org/name; a local file ends in .jsonl, .json, .csv or .parquet")


RULES: tuple[Rule, ...] = (
    lora_with_full,
    quantization_without_qlora,
    four_bit_options_with_8bit,
    compute_dtype_against_precision,
    flash_attention_needs_half,
    model_is_a_folder_or_a_hub_id,
    datasets_are_files_or_hub_ids,
)


def check(doc: dict, locate, directory_of: Callable[[tuple], Path]) -> list[Problem]:
    """Problems from every rule, in rule order."""
    ctx = Context(locate, directory_of)
    return [problem for rule in RULES for problem in rule(doc, ctx)]


def warnings(doc: dict, locate) -> list[Problem]:
    """Valid but worth a look: things a teammate should see before running someone's recipe."""
    ctx = Context(locate)
    found = []
    if doc.get("model", {}).get("trust_remote_code") is True:
        found.append(ctx.problem(("model", "trust_remote_code"),
                                 "warning: this recipe runs Python code downloaded with the model",
                                 "only for models whose code you have read or trust"))
    training = doc.get("training", {})
    if "max_steps" in training and "epochs" in training:
        found.append(ctx.problem(("training", "epochs"), "warning: epochs is ignored because max_steps is set",
                                 "remove one of them"))
    return found
