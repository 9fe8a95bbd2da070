"""The typed, frozen recipe that every later stage reads.

The dataclasses mirror the schema's sections field for field (same names, same nesting), so
codec.py translates between a YAML document and a ``Recipe`` by walking both, with no
hand-written map that could drift. Built only by the codec from a document that passed the schema
and the rules, with every default already filled in from the schema: there is no default here.

Local paths are absolute by then (resolved against the file that wrote them, ``~`` expanded):
a ``Recipe`` means the same thing whatever the current directory is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Union

from ..errors import Location

Method = Literal["qlora", "lora", "full"]
Format = Literal["alpaca", "chat", "sharegpt", "text", "prompt_completion"]
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Attention = Literal["auto", "eager", "sdpa", "flash_attention_2"]
LrScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
Bits = Literal[4, 8]
QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["auto", "float16", "bfloat16", "float32"]
TargetShorthand = Literal["all-linear", "attention"]
WandbMode = Literal["online", "offline"]

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Fields that are not written in a recipe file: the codec skips them both ways.
NOT_IN_DOCUMENT = {"document": False}


def _local(reference: str) -> Optional[Path]:
    """A local file or folder: the codec stores every local reference as an absolute path."""
    path = Path(reference)
    return path if path.is_absolute() else None


@dataclass(frozen=True)
class Architecture:
    """Shape of a model, as in its config.json; enough to count parameters and activations."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    model_type: str
    tie_word_embeddings: bool
    num_key_value_heads: Optional[int]
    head_dim: Optional[int]


@dataclass(frozen=True)
class Model:
    id: str  # a hub id (org/name), or the absolute path of a local model folder
    revision: str
    trust_remote_code: bool
    architecture: Optional[Architecture]

    @property
    def local_path(self) -> Optional[Path]:
        """The local model folder, when id names one."""
        return _local(self.id)


@dataclass(frozen=True)
class Quantization:
    bits: Bits
    type: Optional[QuantType]  # 4-bit only
    double_quant: Optional[bool]  # 4-bit only
    compute_dtype: ComputeDtype


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: float
    dropout: float
    target_modules: Union[TargetShorthand, tuple[str, ...]]  # a shorthand or module names


@dataclass(frozen=True)
class Dataset:
    path: str  # a hub dataset id, or the absolute path of a local file
    format: Format
    split: str
    subset: Optional[str]
    max_samples: Optional[int]

    @property
    def local_path(self) -> Optional[Path]:
        return _local(self.path)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


@dataclass(frozen=True)
class Data:
    datasets: tuple[Dataset, ...]
    max_seq_length: int
    packing: bool
    completion_only_loss: bool
    val_fraction: Optional[float]


@dataclass(frozen=True)
class Training:
    micro_batch_size: int
    gradient_accumulation_steps: int
    epochs: Optional[float]  # absent when max_steps is set: it would be ignored
    max_steps: Optional[int]
    learning_rate: float
    lr_scheduler: LrScheduler
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    optimizer: Optimizer
    gradient_checkpointing: bool
    precision: Precision
    attention: Attention
    seed: int
    logging_steps: int
    save_steps: int
    save_total_limit: int


@dataclass(frozen=True)
class Wandb:
    project: str
    entity: Optional[str]
    run_name: Optional[str]
    tags: tuple[str, ...]
    mode: WandbMode


@dataclass(frozen=True)
class Logging:
    wandb: Optional[Wandb]


@dataclass(frozen=True)
class Output:
    dir: str  # absolute


@dataclass(frozen=True)
class Recipe:
    """A valid, fully resolved recipe (extends merged, overrides applied, defaults filled)."""

    recipe_version: int
    name: str
    description: Optional[str]
    model: Model
    method: Method
    quantization: Optional[Quantization]  # present exactly when method is qlora
    lora: Optional[Lora]  # present exactly when method is qlora or lora
    data: Data
    training: Training
    logging: Logging
    output: Output
    # The recipe file this came from: where it was read, not what it says, so two recipes that
    # say the same thing are equal wherever they are.
    source: Path = field(compare=False, metadata=NOT_IN_DOCUMENT)
    # Where each value was written (load.Resolved.locate: (path tuple, key=False) -> Location), so
    # every stage after loading reports a problem at its field, the same way the loader does.
    locate: Callable[..., Location] = field(compare=False, repr=False, metadata=NOT_IN_DOCUMENT)

    @property
    def wandb(self) -> Optional[Wandb]:
        return self.logging.wandb

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)
