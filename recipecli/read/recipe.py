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
Format = Literal["alpaca", "chat", "sharegpt", "text", "prompt_completion", "tokenized"]
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_torch_8bit",
                    "adamw_torch_4bit", "adafactor", "sgd"]
TORCHAO_OPTIMIZERS = ("adamw_torch_8bit", "adamw_torch_4bit")  # torchao's low-bit AdamW (an optional extra)
Precision = Literal["auto", "bf16", "fp16", "fp32", "pure_fp16"]
Attention = Literal["auto", "eager", "sdpa", "flash_attention_2", "flex_attention"]
ExpertsImplementation = Literal["eager", "grouped_mm", "batched_mm"]
LrScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup", "rex"]
WarmupShape = Literal["linear", "quadratic"]
TrainingLoss = Literal["nll", "dft"]
QatWeight = Literal["int4", "mxfp4"]
QatActivation = Literal["none", "int8", "mxfp4"]
QatGroup = Literal[16, 32, 64, 128, 256]
Bits = Literal[4, 8]
QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["auto", "float16", "bfloat16", "float32"]
TargetShorthand = Literal["all-linear", "attention"]
LigerKernel = Literal["rope", "rms_norm", "glu", "layer_norm"]
WandbMode = Literal["online", "offline"]
WandbLogModel = Literal["end", "checkpoint"]
Strategy = Literal["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]
ZeroOffload = Literal["none", "optimizer", "parameters", "optimizer_and_parameters"]
TokenizerBackend = Literal["mistral_common"]
ChatTemplate = Literal["tokenizer", "chatml", "llama3", "mistral", "gemma", "phi", "jinja"]

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# The prompt an alpaca record trains with (train/data.py), here because it is what format alpaca
# means: the converter writes it into an Axolotl config, which must build the same prompt.
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
# Stanford Alpaca's preamble (data.datasets[].preamble), as its release and Axolotl's alpaca type write it.
ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes " \
                  "the request.\n\n"
ALPACA_PREAMBLE_WITH_INPUT = "Below is an instruction that describes a task, paired with an input that provides " \
                             "further context. Write a response that appropriately completes the request.\n\n"
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
    tokenizer: Optional[str]  # a hub id or the absolute path of a local folder; absent: the model's own
    tokenizer_backend: Optional[TokenizerBackend]  # absent: transformers' own tokenizer classes
    experts_implementation: Optional[ExpertsImplementation]  # absent: transformers chooses
    linearized_experts: bool  # Llama 4's experts stored as one nn.Linear per expert (Axolotl's checkpoints)
    pad_vocab_to_multiple_of: Optional[int]  # absent: the model's own embedding rows
    architecture: Optional[Architecture]

    @property
    def local_path(self) -> Optional[Path]:
        """The local model folder, when id names one."""
        return _local(self.id)

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer is loaded from: model.tokenizer, else the model itself."""
        return self.tokenizer or self.id

    @property
    def tokenizer_path(self) -> Optional[Path]:
        """The local tokenizer folder, when the tokenizer is loaded from one."""
        return _local(self.tokenizer_source)


@dataclass(frozen=True)
class Quantization:
    bits: Bits
    type: Optional[QuantType]  # 4-bit only
    double_quant: Optional[bool]  # 4-bit only
    compute_dtype: ComputeDtype
    moe_experts: bool  # fused expert weights quantized too, in the same bits


@dataclass(frozen=True)
class TargetPattern:
    """lora.target_modules as a regular expression: the modules whose full name it matches in full
    (``re.fullmatch``, peft's rule for a string), e.g. model.layers.[\\d]+.self_attn.(q|v)_proj."""

    pattern: str


Targets = Union[TargetShorthand, tuple[str, ...], TargetPattern]


def targets_text(targets: Targets, separator: str = ", ") -> str:
    """lora.target_modules for a message: the shorthand, the names, or the pattern as written."""
    if isinstance(targets, TargetPattern):
        return targets.pattern
    return targets if isinstance(targets, str) else separator.join(targets)


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: float
    dropout: float
    target_modules: Targets  # a shorthand, module names, or a pattern of full names
    use_rslora: bool
    use_dora: bool
    modules_to_save: tuple[str, ...]  # trained in full beside the adapters
    target_parameters: tuple[str, ...]  # parameters adapted directly (fused experts), without dropout


@dataclass(frozen=True)
class Fields:
    """A dataset's own names for the fields its format reads; None keeps the format's name."""

    messages: Optional[str]
    role: Optional[str]
    content: Optional[str]
    thinking: Optional[str]  # no format's own name: absent, the turns carry no reasoning
    instruction: Optional[str]
    input: Optional[str]
    output: Optional[str]
    prompt: Optional[str]
    completion: Optional[str]
    text: Optional[str]


@dataclass(frozen=True)
class Roles:
    """The data's names of each role; None keeps the format's names for it."""

    system: Optional[tuple[str, ...]]
    user: Optional[tuple[str, ...]]
    assistant: Optional[tuple[str, ...]]


@dataclass(frozen=True)
class SpecialTokens:
    """Special tokens set on the tokenizer by their text; None keeps the tokenizer's own."""

    pad_token: Optional[str]
    eos_token: Optional[str]
    bos_token: Optional[str]
    unk_token: Optional[str]

    def named(self) -> dict[str, str]:
        """The tokens the recipe sets, by the tokenizer's attribute names."""
        return {name: text for name, text in vars(self).items() if text is not None}


@dataclass(frozen=True)
class Dataset:
    path: str  # a hub dataset id, or the absolute path of a local file
    format: Format
    preamble: bool  # alpaca only (rules.py)
    split: str
    subset: Optional[str]
    data_files: Optional[tuple[str, ...]]  # hub datasets only (rules.py)
    max_samples: Optional[int]
    fields: Optional[Fields]  # absent: the format's own field names
    roles: Optional[Roles]  # chat and sharegpt only (rules.py)
    drop_system: bool  # chat and sharegpt only (rules.py)
    template_thinking_key: Optional[str]  # present exactly with fields.thinking (rules.py)

    @property
    def thinking(self) -> Optional[str]:
        """The data's key for a turn's reasoning text (fields.thinking); None: the turns carry none."""
        return self.fields.thinking if self.fields is not None else None

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
    chat_template: ChatTemplate
    chat_template_jinja: Optional[str]  # with chat_template jinja only (rules.py)
    special_tokens: Optional[SpecialTokens]  # absent: the tokenizer's own
    tokens: Optional[tuple[str, ...]]  # checked to be tokens already (recipe adds none)
    val_fraction: Optional[float]


@dataclass(frozen=True)
class Training:
    micro_batch_size: int
    gradient_accumulation_steps: int
    group_by_length: bool
    dataloader_drop_last: bool
    epochs: Optional[float]  # absent when max_steps is set: it would be ignored
    max_steps: Optional[int]
    learning_rate: float
    lr_scheduler: LrScheduler
    min_lr_ratio: float  # cosine only (rules.py)
    warmup_ratio: Optional[float]  # absent when warmup_steps is set
    warmup_steps: Optional[int]
    warmup_shape: WarmupShape
    weight_decay: float
    max_grad_norm: float
    neftune_noise_alpha: Optional[float]  # absent: no noise
    loss: TrainingLoss  # nll or dft (TRL's loss_type)
    router_aux_loss: bool
    router_aux_loss_coef: Optional[float]  # absent: the model config's; with router_aux_loss only (rules.py)
    optimizer: Optimizer
    bf16_stochastic_round: bool  # torchao's AdamW only (rules.py)
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    unfrozen_parameters: Optional[tuple[str, ...]]  # absent: every weight; method full only (rules.py)
    qat: Optional[Qat]  # absent: no fake quantization; method full only (rules.py)
    gradient_checkpointing: bool
    activation_offloading: bool
    precision: Precision
    attention: Attention
    tf32: bool
    seed: int
    logging_steps: int
    save_steps: Optional[int]  # absent with saves_per_epoch, which sets the steps from the data
    save_total_limit: int
    eval_steps: Optional[int]  # absent: every save_steps
    saves_per_epoch: Optional[int]  # in place of save_steps, resolved from the data at run time
    evals_per_epoch: Optional[int]  # in place of eval_steps, likewise
    early_stopping_patience: Optional[int]  # absent: no early stopping
    early_stopping_threshold: Optional[float]  # present exactly with early_stopping_patience
    liger_kernel: Union[bool, tuple[LigerKernel, ...]]  # true: every kernel


@dataclass(frozen=True)
class Distributed:
    strategy: Strategy
    processes_per_node: Optional[int]  # absent: the GPUs visible where it launches
    nodes: int
    main_address: Optional[str]  # written whenever nodes > 1 (rules.py)
    main_port: int
    node_rank: Optional[int]  # absent: from the environment at launch (launch.py)
    fsdp_offload: Optional[bool]  # fsdp only
    zero_offload: Optional[ZeroOffload]  # deepspeed_* only

    @property
    def processes(self) -> Optional[int]:
        """Training processes in all, over every node; None while processes_per_node is left to
        the GPUs visible at launch."""
        if self.strategy == "none":
            return 1
        return None if self.processes_per_node is None else self.nodes * self.processes_per_node


@dataclass(frozen=True)
class Qat:
    """training.qat: fake-quantized linear layers while training (torchao)."""

    weight_dtype: QatWeight
    activation_dtype: QatActivation
    group_size: QatGroup
    start_step: int


@dataclass(frozen=True)
class Wandb:
    project: str
    entity: Optional[str]
    run_name: Optional[str]
    tags: tuple[str, ...]
    mode: WandbMode
    log_model: Optional[WandbLogModel]  # absent: nothing uploaded


@dataclass(frozen=True)
class Logging:
    wandb: Optional[Wandb]


@dataclass(frozen=True)
class Output:
    dir: str  # absolute
    hub_model_id: Optional[str]  # absent: nothing is pushed (train/hub.py)
    hub_private: Optional[bool]  # with hub_model_id only (rules.py)


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
    distributed: Optional[Distributed]  # absent: one process
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

    @property
    def strategy(self) -> Strategy:
        return self.distributed.strategy if self.distributed is not None else "none"

    @property
    def processes(self) -> Optional[int]:
        """Processes training together (1 without a distributed section); None when the count is
        the GPUs visible at launch."""
        return self.distributed.processes if self.distributed is not None else 1

    def global_batch(self, processes: Optional[int] = None) -> Optional[int]:
        """Sequences per optimizer step: micro-batch x accumulation x processes.

        Args:
            processes: the count the launch resolved; None takes the recipe's (None if unknown).
        """
        count = processes if processes is not None else self.processes
        t = self.training
        return None if count is None else t.micro_batch_size * t.gradient_accumulation_steps * count
