"""The smallest change that makes a recipe fit a GPU: a search over the memory knobs, each
candidate re-estimated exactly as the patched recipe will be when loaded.

Pure, like verdict.py: the GPU arrives as data, nothing here imports torch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

from ..read.load import deep_merge
from ..read.recipe import Lora, Quantization, Recipe
from ..read.schema import defaults_of
from .gpu_catalog import Gpu
from .verdict import BNB_LEAVES_UNQUANTIZED, Verdict, judge, recipe_shape, setup_for


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
    re-estimated through :func:`verdict.setup_for`, exactly as the patched recipe will be when loaded.

    Returns:
        The cheapest candidate that fits with the whole error band (verdict "fits"); when none
        does, the cheapest that fits by the estimate alone ("tight"); None when the recipe fits
        already or nothing does.

    Raises:
        InvalidRecipe, UnknownModel: as :func:`verdict.check`.
    """
    shape = recipe_shape(recipe)

    def attempt(combo: tuple[_Move, ...]) -> Verdict:
        changed = recipe
        for move in combo:
            changed = move.edit(changed)
        setup, notes = setup_for(changed, gpu, num_gpus, parallelism, shape.model_type)
        return judge(shape, setup, gpu, tuple(notes))

    if attempt(()).status == "fits":
        return None
    knobs = [moves for moves in (list(knob(recipe)) for knob in _KNOBS) if moves]
    if shape.model_type in BNB_LEAVES_UNQUANTIZED:  # method qlora is refused for it (verdict.check)
        knobs = [kept for kept in ([m for m in moves if m.patch.get("method") != "qlora"] for moves in knobs) if kept]
    # Each knob's last setting saves the most: when all of them together do not fit, nothing does.
    smallest = attempt(tuple(moves[-1] for moves in knobs))
    if not smallest.fits:
        return None
    combos = [tuple(m for m in combo if m is not None)
              for combo in itertools.product(*[[None, *moves] for moves in knobs])]
    # When the smallest setting fits with its whole band, some combination does: search for it;
    # when it is only tight, no real fit exists, and the cheapest tight one is the answer.
    wanted = ("fits",) if smallest.status == "fits" else ("fits", "tight")
    for combo in sorted(combos[1:], key=lambda c: (sum(m.cost for m in c), len(c))):
        verdict = attempt(combo)
        if verdict.status in wanted:
            return _suggestion(combo, verdict)
    return None


def _suggestion(combo: tuple[_Move, ...], verdict: Verdict) -> Suggestion:
    patch: dict = {}
    for move in combo:
        patch = deep_merge(patch, move.patch)
    return Suggestion(patch, tuple(m.change for m in combo), verdict)


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
    if recipe.method == "full" and recipe.training.optimizer not in ("adamw_torch_4bit", "adafactor", "sgd") \
            and not recipe.strategy.startswith("deepspeed"):  # rules.py: torchao's AdamW is not run under DeepSpeed
        # Half of any 8-bit AdamW's state; it matters where every weight trains. An extra to install.
        yield _Move(2.0, f"optimizer {recipe.training.optimizer} -> adamw_torch_4bit (torchao: pip install "
                    "'recipecli[torchao]')", {"training": {"optimizer": "adamw_torch_4bit"}},
                    _training(optimizer="adamw_torch_4bit"))


def _quantization(recipe: Recipe) -> Iterator[_Move]:
    quant = recipe.quantization
    # The schema's quantization is the smallest base (4-bit NF4, double quant); compute_dtype is
    # left as the recipe has it, since it follows the precision.
    smallest = {k: v for k, v in defaults_of("quantization").items() if k != "compute_dtype"}
    bits, kind = smallest["bits"], smallest["type"].upper()
    double = ", double quant" if smallest["double_quant"] else ""
    if recipe.method == "lora":
        four_bit = Quantization(**defaults_of("quantization"))
        yield _Move(3.0, f"method lora -> qlora ({bits}-bit {kind} base{double})",
                    {"method": "qlora", "quantization": smallest},
                    lambda r: replace(r, method="qlora", quantization=four_bit))
    elif quant is not None and quant.bits > bits:
        yield _Move(2.0, f"quantization.bits {quant.bits} -> {bits} ({kind}{double})", {"quantization": smallest},
                    lambda r: replace(r, quantization=replace(r.quantization, **smallest)))
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
