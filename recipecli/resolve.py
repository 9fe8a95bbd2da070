"""From a recipe and a GPU to a verdict: the settings "auto" becomes, the rules the card imposes,
whether the estimate fits, and the smallest change that makes it fit.

Pure: the GPU arrives as data (``hardware.Gpu``), nothing here asks CUDA or imports torch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Literal, Optional

from .architectures import CATALOG, Shape, find_shape
from .errors import InvalidRecipe, Location, Problem
from .estimate import Estimate, Setup, estimate
from .hardware import GIB, Gpu
from .load import deep_merge
from .recipe import Lora, Quantization, Recipe
from .schema import defaults_of
from .yamlload import json_path

# benchmarks/calibration.py finds estimates within ~6 % of published peaks of this stack (few
# rows, so twice that is kept as margin): a run needing more than 90 % of the card may or may
# not hit out-of-memory. It is reported as tight, still a fit (exit code 0).
TIGHT_FRACTION = 0.90

Status = Literal["fits", "tight", "does_not_fit"]
Locate = Callable[[tuple, bool], Location]


@dataclass(frozen=True)
class Choices:
    """What the recipe's "auto" settings become on a GPU."""

    precision: Literal["bf16", "fp16", "fp32"]
    attention: Literal["eager", "sdpa", "flash_attention_2"]
    compute_dtype: Optional[Literal["float16", "bfloat16", "float32"]]  # qlora only
    notes: tuple[str, ...]


def choose(recipe: Recipe, gpu: Optional[Gpu], locate: Optional[Locate] = None) -> Choices:
    """Resolve precision, attention and the 4-bit compute dtype for a GPU, checking what it supports.

    Args:
        recipe: the loaded recipe.
        gpu: the card; None trains on the CPU. A card with unknown compute capability (``--vram``)
            is not checked: bf16 and fp16 need the same memory, so the estimate does not depend on it.
        locate: where recipe values were written (``load.Resolved.locate``), for precise problems.

    Returns:
        The resolved settings with a note for every choice a user might not expect.

    Raises:
        InvalidRecipe: the recipe asks for something the card cannot do (bf16 or FlashAttention 2
            below compute capability 8.0, fp16 without a GPU); each problem names the knob to change.
    """
    training = recipe.training
    problems: list[Problem] = []
    notes: list[str] = []

    def problem(path: tuple, message: str, hint: str) -> None:
        where = locate(path, False) if locate else Location(str(recipe.source), 1, 1)
        problems.append(Problem(where, json_path(path), message, hint))

    cc_known = gpu is not None and gpu.compute_capability is not None
    label = "no GPU" if gpu is None else f"{gpu.name} (CC {gpu.capability_text})"
    if gpu is not None and not cc_known:
        # fp16 is the larger estimate (full fine-tuning keeps fp32 weights under it), so a card
        # of unknown generation is taken to be pre-Ampere.
        auto = "; precision auto counted as fp16" if training.precision == "auto" else ""
        notes.append(f"{gpu.name}: compute capability unknown, so bf16/FlashAttention 2 support is not "
                     f"checked{auto} (name the card with --gpu to check it)")

    precision = training.precision
    if precision == "auto":
        if gpu is None:
            precision = "fp32"
            notes.append("no GPU: precision auto -> fp32")
        elif not cc_known:
            precision = "fp16"
        elif not gpu.supports_bf16:
            precision = "fp16"
            notes.append(f"{label} has no bf16: precision auto -> fp16")
        else:
            precision = "bf16"
    elif precision == "bf16" and cc_known and not gpu.supports_bf16:
        problem(("training", "precision"), f"bf16 needs compute capability >= 8.0; {label} lacks it",
                "set training.precision to auto or fp16")
    elif precision == "fp16" and gpu is None:
        problem(("training", "precision"), "fp16 mixed precision needs a CUDA GPU",
                "set training.precision to auto (fp32 on the CPU)")

    attention = "sdpa" if training.attention == "auto" else training.attention
    if attention == "flash_attention_2" and (gpu is None or (cc_known and not gpu.supports_flash_attention_2)):
        problem(("training", "attention"), f"flash_attention_2 needs compute capability >= 8.0; {label} lacks it",
                "set training.attention to auto (sdpa: same memory, slightly slower)")

    compute_dtype = None
    if recipe.quantization is not None:
        compute_dtype = recipe.quantization.compute_dtype
        if compute_dtype == "auto":
            compute_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision]
        elif compute_dtype == "bfloat16" and cc_known and not gpu.supports_bf16:
            problem(("quantization", "compute_dtype"), f"bfloat16 needs compute capability >= 8.0; {label} lacks it",
                    "set quantization.compute_dtype to auto (follows training.precision)")

    if problems:
        raise InvalidRecipe(problems)
    return Choices(precision, attention, compute_dtype, tuple(notes))


def setup_for(recipe: Recipe, gpu: Optional[Gpu], num_gpus: int = 1, parallelism: str = "none",
              locate: Optional[Locate] = None) -> tuple[Setup, list[str]]:
    """The estimator's view of a recipe on a GPU.

    Args:
        recipe: the loaded recipe.
        gpu: the card each process trains on (all cards alike); None for the CPU.
        num_gpus: data-parallel processes.
        parallelism: none, ddp, fsdp, zero2 or zero3.
        locate: see :func:`choose`.

    Returns:
        The setup and the notes on what "auto" became.

    Raises:
        InvalidRecipe: see :func:`choose`.
    """
    choices = choose(recipe, gpu, locate)
    quant, lora = recipe.quantization, recipe.lora
    four_bit = quant is not None and quant.bits == 4
    setup = Setup(
        method=recipe.method,
        weight_bits=quant.bits if quant is not None else _unquantized_bits(recipe.method, choices.precision),
        quant_type=quant.type if four_bit else None,
        double_quant=four_bit and quant.double_quant,
        compute_bytes=4 if choices.precision == "fp32" else 2,
        lora_r=lora.r if lora else None,
        lora_targets=lora.target_modules if lora else (),
        micro_batch_size=recipe.training.micro_batch_size,
        seq_len=recipe.data.max_seq_length,
        gradient_checkpointing=recipe.training.gradient_checkpointing,
        optimizer=recipe.training.optimizer,
        attention=choices.attention,
        num_gpus=num_gpus,
        parallelism=parallelism,
        gradient_accumulation_steps=recipe.training.gradient_accumulation_steps,
        lora_dropout=lora.dropout if lora else 0.0,
    )
    return setup, list(choices.notes)


def _unquantized_bits(method: str, precision: str) -> int:
    """Width the runner loads unquantized weights in (runner.load_model).

    The training dtype, except that fp16 mixed precision unscales fp32 gradients, so fully
    trained weights stay fp32 under it.
    """
    return 32 if precision == "fp32" or (method == "full" and precision == "fp16") else 16


@dataclass(frozen=True)
class Verdict:
    """Whether one recipe fits one GPU, and by how much."""

    status: Status
    estimate: Estimate
    setup: Setup
    gpu: Gpu
    notes: tuple[str, ...]

    @property
    def vram_bytes(self) -> int:
        return self.gpu.total_bytes

    @property
    def headroom_bytes(self) -> int:
        """VRAM left over; negative when it does not fit."""
        return self.vram_bytes - self.estimate.total_bytes

    @property
    def fits(self) -> bool:
        return self.status != "does_not_fit"


def status_of(need_bytes: int, vram_bytes: int) -> Status:
    """fits, tight (above TIGHT_FRACTION of the card) or does_not_fit."""
    if need_bytes > vram_bytes:
        return "does_not_fit"
    return "tight" if need_bytes > TIGHT_FRACTION * vram_bytes else "fits"


def _verdict(shape: Shape, setup: Setup, gpu: Gpu, notes: tuple[str, ...]) -> Verdict:
    result = estimate(shape, setup)
    notes_now = list(notes)
    if gpu.free_bytes is not None and gpu.free_bytes < result.total_bytes <= gpu.total_bytes:
        used = (gpu.total_bytes - gpu.free_bytes) / GIB
        notes_now.append(f"{gpu.name}: other processes hold {used:.1f} GiB right now; free it before training")
    return Verdict(status_of(result.total_bytes, gpu.total_bytes), result, setup, gpu, tuple(notes_now))


def check(recipe: Recipe, gpu: Gpu, num_gpus: int = 1, parallelism: str = "none",
          locate: Optional[Locate] = None) -> Verdict:
    """Estimate a recipe's peak memory per GPU and compare it with the card.

    Raises:
        InvalidRecipe: the card cannot run the recipe's settings (see :func:`choose`).
        UnknownModel: the model's shape cannot be found offline.
    """
    setup, notes = setup_for(recipe, gpu, num_gpus, parallelism, locate)
    return _verdict(_shape(recipe), setup, gpu, tuple(notes))


def _shape(recipe: Recipe) -> Shape:
    model = recipe.model
    return find_shape(model.id, model.local_path, model.architecture, model.revision)


@dataclass(frozen=True)
class Suggestion:
    """The smallest change found that makes a recipe fit."""

    patch: dict  # nested like the recipe, e.g. {"training": {"micro_batch_size": 1}}
    changes: tuple[str, ...]  # one line per knob, for people
    verdict: Verdict  # the re-estimate with the change applied


@dataclass(frozen=True)
class _Move:
    """One setting of one knob: what it writes into the recipe file, and into the typed recipe."""

    cost: float  # what it costs in speed or quality; cheaper moves are tried first
    change: str
    patch: dict
    edit: Callable[[Recipe], Recipe]


def suggest(recipe: Recipe, gpu: Gpu, num_gpus: int = 1, parallelism: str = "none") -> Optional[Suggestion]:
    """Search the memory knobs for the cheapest change that makes a recipe fit.

    Candidates combine at most one setting per knob and are tried cheapest first: speed-only
    changes (micro-batch down with accumulation up so the effective batch stays, gradient
    checkpointing, a paged 8-bit optimizer) before ones that cost some quality (4-bit base, lower
    LoRA rank, adapters on attention only, shorter sequences), a change of method last. Each is
    re-estimated through :func:`setup_for`, exactly as the patched recipe will be when loaded.

    Returns:
        The first candidate whose re-estimate fits (tight included), or None when the recipe
        already fits or nothing does.

    Raises:
        InvalidRecipe, UnknownModel: as :func:`check`.
    """
    shape = _shape(recipe)

    def attempt(combo: tuple[_Move, ...]) -> Verdict:
        changed = recipe
        for move in combo:
            changed = move.edit(changed)
        setup, notes = setup_for(changed, gpu, num_gpus, parallelism)
        return _verdict(shape, setup, gpu, tuple(notes))

    if attempt(()).fits:
        return None
    knobs = [moves for moves in (list(knob(recipe)) for knob in _KNOBS) if moves]
    # Each knob's last setting saves the most: when all of them together do not fit, nothing does.
    if not attempt(tuple(moves[-1] for moves in knobs)).fits:
        return None
    combos = [tuple(m for m in combo if m is not None)
              for combo in itertools.product(*[[None, *moves] for moves in knobs])]
    for combo in sorted(combos[1:], key=lambda c: (sum(m.cost for m in c), len(c))):
        verdict = attempt(combo)
        if verdict.fits:
            patch: dict = {}
            for move in combo:
                patch = deep_merge(patch, move.patch)
            return Suggestion(patch, tuple(m.change for m in combo), verdict)
    return None


def _training(**changes) -> Callable[[Recipe], Recipe]:
    return lambda r: replace(r, training=replace(r.training, **changes))


def _lora(**changes) -> Callable[[Recipe], Recipe]:
    return lambda r: replace(r, lora=replace(r.lora, **changes))


def _checkpointing(recipe: Recipe) -> Iterator[_Move]:
    if not recipe.training.gradient_checkpointing:
        yield _Move(1.0, "gradient_checkpointing false -> true (~30 % slower)",
                    {"training": {"gradient_checkpointing": True}}, _training(gradient_checkpointing=True))


def _micro_batch(recipe: Recipe) -> Iterator[_Move]:
    micro, accum = recipe.training.micro_batch_size, recipe.training.gradient_accumulation_steps
    # Divisors only, so micro_batch_size * gradient_accumulation_steps stays exactly the same.
    for step, smaller in enumerate(d for d in range(micro - 1, 0, -1) if micro % d == 0):
        more = accum * micro // smaller
        # Cheaper than checkpointing at first: one halving costs less speed than recomputing.
        yield _Move(0.5 + 0.5 * step, f"micro_batch_size {micro} -> {smaller}, gradient_accumulation_steps "
                    f"{accum} -> {more} (same effective batch {micro * accum})",
                    {"training": {"micro_batch_size": smaller, "gradient_accumulation_steps": more}},
                    _training(micro_batch_size=smaller, gradient_accumulation_steps=more))


def _optimizer(recipe: Recipe) -> Iterator[_Move]:
    if recipe.training.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        yield _Move(1.5, f"optimizer {recipe.training.optimizer} -> paged_adamw_8bit",
                    {"training": {"optimizer": "paged_adamw_8bit"}}, _training(optimizer="paged_adamw_8bit"))


_FOUR_BIT = {"bits": 4, "type": "nf4", "double_quant": True}


def _quantization(recipe: Recipe) -> Iterator[_Move]:
    quant = recipe.quantization
    if recipe.method == "lora":
        four_bit = Quantization(**{**defaults_of("quantization"), **_FOUR_BIT})
        yield _Move(3.0, "method lora -> qlora (4-bit NF4 base, double quant)",
                    {"method": "qlora", "quantization": dict(_FOUR_BIT)},
                    lambda r: replace(r, method="qlora", quantization=four_bit))
    elif quant is not None and quant.bits == 8:
        yield _Move(2.0, "quantization.bits 8 -> 4 (NF4, double quant)", {"quantization": dict(_FOUR_BIT)},
                    lambda r: replace(r, quantization=replace(r.quantization, **_FOUR_BIT)))
    elif quant is not None and not quant.double_quant:
        yield _Move(0.5, "quantization.double_quant false -> true", {"quantization": {"double_quant": True}},
                    lambda r: replace(r, quantization=replace(r.quantization, double_quant=True)))


def _method(recipe: Recipe) -> Iterator[_Move]:
    if recipe.method != "full":
        return
    # The patch names the method alone; loading it fills lora (and quantization) from the schema.
    lora = Lora(**defaults_of("lora"))
    advice = "; raise training.learning_rate to ~2e-4, LoRA's usual rate"
    yield _Move(6.0, f"method full -> lora (rank-{lora.r} adapters on a frozen base{advice})",
                {"method": "lora"}, lambda r: replace(r, method="lora", lora=lora))
    yield _Move(7.0, f"method full -> qlora (rank-{lora.r} adapters on a 4-bit base{advice})",
                {"method": "qlora"}, lambda r: replace(r, method="qlora", lora=lora,
                                                      quantization=Quantization(**defaults_of("quantization"))))


def _rank(recipe: Recipe) -> Iterator[_Move]:
    lora = recipe.lora
    if lora is None:
        return
    for halvings in (1, 2, 3):
        r = lora.r >> halvings
        if r < 4:  # below 4 adapters stop learning much; the memory saved there is negligible anyway
            return
        alpha = lora.alpha * r / lora.r  # keep alpha / r, the scale of the update
        alpha = int(alpha) if float(alpha).is_integer() else alpha
        yield _Move(3.0 * halvings, f"lora.r {lora.r} -> {r}, lora.alpha {lora.alpha:g} -> {alpha:g}",
                    {"lora": {"r": r, "alpha": alpha}}, _lora(r=r, alpha=alpha))


def _targets(recipe: Recipe) -> Iterator[_Move]:
    if recipe.lora is not None and recipe.lora.target_modules == "all-linear":
        yield _Move(4.0, "lora.target_modules all-linear -> attention",
                    {"lora": {"target_modules": "attention"}}, _lora(target_modules="attention"))


def _sequence(recipe: Recipe) -> Iterator[_Move]:
    length = recipe.data.max_seq_length
    shorter, halvings = 1 << (length - 1).bit_length() - 1, 1  # largest power of two below length
    while shorter >= 256:  # shorter than 256 tokens truncates most instruction data
        yield _Move(4.0 * halvings, f"data.max_seq_length {length} -> {shorter} (longer examples truncated)",
                    {"data": {"max_seq_length": shorter}},
                    lambda r, n=shorter: replace(r, data=replace(r.data, max_seq_length=n)))
        shorter, halvings = shorter // 2, halvings + 1


_KNOBS = (_checkpointing, _micro_batch, _optimizer, _quantization, _method, _rank, _targets, _sequence)


# What "a standard QLoRA run" means for `recipe gpu`: the settings of recipes/base/qlora-8gb.yaml.
STANDARD_QLORA = Setup(method="qlora", weight_bits=4, quant_type="nf4", double_quant=True, compute_bytes=2,
                       lora_r=16, lora_targets="all-linear", micro_batch_size=1, seq_len=1024,
                       gradient_checkpointing=True, optimizer="paged_adamw_8bit", attention="sdpa",
                       gradient_accumulation_steps=16, lora_dropout=0.05)
STANDARD_QLORA_TEXT = "4-bit NF4 QLoRA, r 16 on all linear layers, 1024 tokens, micro-batch 1, paged 8-bit AdamW"


def largest_qlora_model(gpu: Gpu) -> Optional[tuple[str, Verdict]]:
    """The largest model of the architecture catalog that a standard QLoRA run fits on a GPU.

    Returns:
        (hub id, verdict) of the model with the most parameters that fits, or None when none does.
    """
    families: dict[Shape, str] = {}
    for model_id, shape in CATALOG.items():
        families.setdefault(shape, model_id)  # one hub id per shape: the first one listed
    for shape, model_id in sorted(families.items(), key=lambda item: -item[0].param_count()):
        verdict = _verdict(shape, STANDARD_QLORA, gpu, ())
        if verdict.fits:
            return model_id, verdict
    return None
