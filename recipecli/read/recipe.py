"""The typed, frozen recipe that every later stage reads.

Built only by ``load.py`` from a document that passed the schema and the rules, with every
default already filled in from the schema: there is no default here, so none can drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

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
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None


@dataclass(frozen=True)
class Model:
    id: str
    revision: str
    trust_remote_code: bool
    architecture: Optional[Architecture]
    local_path: Optional[Path]  # set when id names a local folder, resolved against the recipe file


@dataclass(frozen=True)
class Quantization:
    bits: Bits
    type: QuantType
    double_quant: bool
    compute_dtype: ComputeDtype


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: float
    dropout: float
    target_modules: Union[TargetShorthand, tuple[str, ...]]  # a shorthand or module names


@dataclass(frozen=True)
class Dataset:
    path: str  # as written in the recipe
    format: Format
    split: str
    subset: Optional[str]
    max_samples: Optional[int]
    local_path: Optional[Path]  # set for local files, resolved against the recipe file

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
    epochs: float
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
class Recipe:
    """A valid, fully resolved recipe (extends merged, defaults filled)."""

    name: str
    description: Optional[str]
    model: Model
    method: Method
    quantization: Optional[Quantization]  # present exactly when method is qlora
    lora: Optional[Lora]  # present exactly when method is qlora or lora
    data: Data
    training: Training
    wandb: Optional[Wandb]
    output_dir: Path
    source: Path  # the recipe file this came from
