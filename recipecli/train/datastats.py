"""`recipe data`: what the recipe's data becomes before anything trains, counted on the very
examples ``recipe run`` trains (``data.prepare``), with only the tokenizer loaded.

Per dataset and for the mix: records, tokens and their length distribution against
``max_seq_length``, truncation and the tokens it loses, dropped records and why, trained tokens
(those carrying the loss), exact duplicates and fingerprints; for the mix also packing or padding,
steps per epoch and the validation split; warnings; formatted examples with their loss mask; the
length histogram as a PNG. report/data.py prints it.

Packing is counted by TRL's own ``pack_dataset``, as SFTTrainer packs (that imports trl and
datasets, so only with packing on). Padding without packing depends on which records the
trainer's random sampler puts together: it is the mean over a few seeded shuffles.
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import DataError, json_path
from ..read.recipe import Recipe
from . import atomic, data, datafiles, lossplot, templates
from .data import IGNORED, Prepared

TRUNCATED_WARNING = 0.05  # the share of truncated records that earns a warning
TEMPLATE_CHECKS = 100  # conversations whose rendering is checked turn by turn
_SHUFFLES = 4  # seeded shuffles the padding share is averaged over
GENERIC_TOKENIZER = "TokenizersBackend"  # transformers 5's tokenizer class for a bare tokenizer.json


@dataclass
class Part:
    """The numbers of one dataset, or of the whole mix."""

    name: str
    format: str
    fingerprint: Optional[str]  # None for the mix
    records: int = 0
    tokens: int = 0  # before truncation
    lengths: dict = field(default_factory=dict)  # min, median, p95, p99, max (tokens before truncation)
    truncated: int = 0
    lost_tokens: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> records
    kept_tokens: int = 0  # tokens of the records that train, after truncation
    trained_tokens: int = 0  # of those, the tokens carrying the loss
    duplicates: int = 0  # records equal to an earlier one, after formatting


@dataclass(frozen=True)
class DataWarning:
    """Something about the data that trains badly without being an error; printed in the one format."""

    where: object  # a Location, a file name or None
    path: Optional[str]
    message: str
    hint: str = ""


@dataclass
class DataStats:
    """Everything `recipe data` prints about one recipe."""

    recipe: str  # its file
    max_seq_length: int
    packing: bool
    micro_batch_size: int
    accumulation: int
    max_steps: Optional[int]
    epochs: Optional[float]
    datasets: list[Part]
    mix: Part
    train_records: int  # that train (after dropping)
    eval_records: int
    sequences: int  # what one epoch iterates: packed sequences, or the training records
    steps_per_epoch: int
    padding_share: Optional[float]  # without packing: padding tokens / all tokens of the batches
    fill_ratio: Optional[float]  # with packing: tokens / (sequences * max_seq_length)
    padding_avoided: Optional[int]  # with packing: pad tokens the same records would need unpacked
    warnings: list[DataWarning]
    previews: list[tuple[str, list[tuple[str, bool]]]]  # (where, [(text, trained)...]) per example shown
    histogram: list[int] = field(default_factory=list, repr=False)  # full lengths of every record

    def numbers(self) -> dict:
        """The summary run.yaml records."""
        mix = self.mix
        return {"records": mix.records, "train": self.train_records, "eval": self.eval_records,
                "tokens": mix.tokens, "truncated": mix.truncated, "lost_tokens": mix.lost_tokens,
                "dropped": sum(mix.dropped.values()), "trained_tokens": mix.trained_tokens,
                "kept_tokens": mix.kept_tokens, "duplicates": mix.duplicates, "lengths": dict(mix.lengths),
                "steps_per_epoch": self.steps_per_epoch, "packed_sequences": self.sequences if self.packing else None,
                "padding_share": self.padding_share, "fill_ratio": self.fill_ratio}


def load_tokenizer(recipe: Recipe):
    """The recipe's tokenizer, without importing torch where that gives the very same tokenizer.

    ``AutoTokenizer`` imports torch (through transformers' model configurations: 1.5-2 s), which
    `recipe data` does not need. A local model folder whose tokenizer_config.json names the generic
    ``TokenizersBackend`` class, without code of its own, is what AutoTokenizer loads too: that class
    is loaded directly (the folder of model.tokenizer where it names one). Anything else goes through
    model.load_tokenizer, as `recipe run` does.

    Raises:
        RecipeError: as model.load_tokenizer.
    """
    from .model import load_tokenizer as auto_tokenizer

    folder = recipe.model.tokenizer_path
    if folder is None or data.mistral_common(recipe):  # a hub id, or a tekken.json beside any tokenizer.json
        return auto_tokenizer(recipe)
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no readable config: AutoTokenizer says what is wrong
        return auto_tokenizer(recipe)
    if not isinstance(config, dict) or config.get("tokenizer_class") != GENERIC_TOKENIZER or "auto_map" in config:
        return auto_tokenizer(recipe)
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    return TokenizersBackend.from_pretrained(folder)


def collect(recipe: Recipe, tokenizer, show: int = 0) -> DataStats:
    """Prepare the recipe's data as `recipe run` does and count it.

    Args:
        recipe: a loaded recipe.
        tokenizer: the model's tokenizer (model.load_tokenizer).
        show: how many training examples to render with their loss mask.

    Raises:
        DataError: the data cannot become examples (data.prepare's errors).
    """
    train, evals = data.prepare(recipe, tokenizer)
    return summarize(recipe, tokenizer, train, evals, show)


def for_run(recipe: Recipe, tokenizer):
    """`recipe run`'s data: the datasets SFTTrainer gets, after printing the one-line summary and
    the warnings `recipe data` would print.

    Returns:
        ``(train, eval, stats)``: ``datasets.Dataset`` of input_ids and labels (eval None without a
        validation split), and the statistics, whose ``numbers()`` run.yaml records.

    Raises:
        DataError: as data.prepare, or no example has a token left to train.
    """
    from ..report.data import summary_line, warning_text
    from .model import say

    train, evals = data.prepare(recipe, tokenizer)
    stats = summarize(recipe, tokenizer, train, evals)
    say(summary_line(stats))
    for warning in stats.warnings:
        say(warning_text(warning))
    return (*data.datasets(recipe, train, evals), stats)


def summarize(recipe: Recipe, tokenizer, train: list[Prepared], evals: Optional[list[Prepared]],
              show: int = 0) -> DataStats:
    """The statistics of examples ``data.prepare`` made (``recipe run`` passes its own)."""
    everything = train + (evals or [])
    specs = recipe.data.datasets
    parts = [_part([p for p in everything if p.example.dataset == i], datafiles.display(spec), spec.format,
                   datafiles.fingerprint(spec), recipe.data.max_seq_length) for i, spec in enumerate(specs)]
    mix = _part(everything, "mix", data.layout(recipe), None, recipe.data.max_seq_length)
    kept = [p.tokens for p in train if not p.dropped]
    t = recipe.training
    lengths = [len(k.input_ids) for k in kept]
    padding = _padding(lengths, t.micro_batch_size, t.seed)
    packing = recipe.data.packing
    sequences = _packed(kept, recipe.data.max_seq_length) if packing and kept else len(kept)
    held_out = [p.tokens for p in evals or [] if not p.dropped]
    if t.dataloader_drop_last:
        _refuse_no_full_micro_batch(recipe, sequences, "train")
        if evals is not None:  # TRL packs the held-out examples as it packs the training ones
            _refuse_no_full_micro_batch(recipe, _packed(held_out, recipe.data.max_seq_length) if packing and held_out
                                        else len(held_out), "evaluate")
    steps = max(math.ceil(_micro_batches(recipe, sequences) / t.gradient_accumulation_steps), 1)
    return DataStats(
        recipe=str(recipe.source), max_seq_length=recipe.data.max_seq_length, packing=packing,
        micro_batch_size=t.micro_batch_size, accumulation=t.gradient_accumulation_steps, max_steps=t.max_steps,
        epochs=t.epochs, datasets=parts, mix=mix, train_records=len(kept),
        eval_records=len(held_out), sequences=sequences, steps_per_epoch=steps,
        padding_share=None if packing else padding[0],
        fill_ratio=sum(lengths) / (sequences * recipe.data.max_seq_length) if packing and sequences else None,
        padding_avoided=padding[1] if packing else None,
        warnings=warnings(recipe, tokenizer, everything, mix),
        previews=[(_where(p), preview(tokenizer, p.tokens)) for p in [p for p in train if not p.dropped][:show]],
        histogram=[p.tokens.length for p in everything])


def _micro_batches(recipe: Recipe, sequences: int) -> int:
    """Micro-batches each process draws from ``sequences`` in an epoch. Each process of a
    distributed run takes its share (a count left to the GPUs visible at launch is unknown here:
    one process is assumed); with training.dataloader_drop_last the Trainer's sampler leaves out
    the last micro-batch the sequences do not fill, over all processes."""
    processes, size = recipe.processes or 1, recipe.training.micro_batch_size
    if recipe.training.dataloader_drop_last:
        return sequences // size // processes
    return math.ceil(math.ceil(sequences / processes) / size)


def _refuse_no_full_micro_batch(recipe: Recipe, sequences: int, what: str) -> None:
    """With training.dataloader_drop_last, sequences that fill no micro-batch on every process
    would leave the trainer nothing to train (or evaluate: no eval_loss at all)."""
    if _micro_batches(recipe, sequences):
        return
    each = f" on each of {recipe.processes} processes" if (recipe.processes or 1) > 1 else ""
    kind = "training" if what == "train" else "held-out"
    raise DataError(f"the {sequences} {kind} sequences fill no micro-batch of {recipe.training.micro_batch_size}"
                    f"{each}, and dataloader_drop_last leaves out the short one: nothing to {what}",
                    "set training.dataloader_drop_last: false, or lower training.micro_batch_size" +
                    (" or raise data.val_fraction" if what == "evaluate" else ""),
                    where=recipe.locate(("training", "dataloader_drop_last")), path="$.training.dataloader_drop_last")


def _part(prepared: list[Prepared], name: str, format: str, fingerprint: Optional[str], max_length: int) -> Part:
    part = Part(name, format, fingerprint, records=len(prepared))
    lengths = sorted(p.tokens.length for p in prepared)
    part.tokens = sum(lengths)
    if lengths:
        part.lengths = {"min": lengths[0], "median": _rank(lengths, 0.5), "p95": _rank(lengths, 0.95),
                        "p99": _rank(lengths, 0.99), "max": lengths[-1]}
    over = [n for n in lengths if n > max_length]
    part.truncated, part.lost_tokens = len(over), sum(over) - len(over) * max_length
    part.dropped = dict(Counter(p.dropped for p in prepared if p.dropped))
    trained = [p.tokens for p in prepared if not p.dropped]
    part.kept_tokens = sum(len(t.input_ids) for t in trained)
    part.trained_tokens = sum(1 for t in trained for label in t.labels if label != IGNORED)
    seen = Counter(json.dumps(p.example.columns, sort_keys=True, ensure_ascii=False) for p in prepared)
    part.duplicates = sum(n - 1 for n in seen.values())
    return part


def _rank(ordered: list[int], q: float) -> int:
    """The nearest-rank percentile: a length some record really has."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _padding(lengths: list[int], batch: int, seed: int) -> tuple[Optional[float], int]:
    """Padding of micro-batches in a random order: (share of the batches' tokens, pad tokens per epoch)."""
    if not lengths:
        return None, 0
    pads = []
    order = list(lengths)
    rng = random.Random(seed)
    for _ in range(_SHUFFLES):
        rng.shuffle(order)
        pads.append(sum(max(chunk) * len(chunk) - sum(chunk)
                        for chunk in (order[i:i + batch] for i in range(0, len(order), batch))))
    pad = sum(pads) / len(pads)
    return pad / (pad + sum(lengths)), round(pad)


def _packed(kept: list, max_length: int) -> int:
    """How many sequences SFTTrainer packs the records into (TRL's pack_dataset, its strategy)."""
    import datasets
    from trl.data_utils import pack_dataset

    table = datasets.Dataset.from_dict({"input_ids": [t.input_ids for t in kept], "labels": [t.labels for t in kept]})
    quiet = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return len(pack_dataset(table, max_length, data.PACKING_STRATEGY, {}))
    finally:
        if quiet:
            datasets.enable_progress_bars()


def preview(tokenizer, tokens: data.Tokens) -> list[tuple[str, bool]]:
    """The example's text in runs of tokens that are trained or not, each run decoded as one."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(tokens.input_ids, tokens.labels):
        trained = label != IGNORED
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in runs]


def _where(prepared: Prepared) -> str:
    place = prepared.example.place
    return f"{place.name}:{place.line}" if place.line is not None else f"{place.name}: record {place.number}"


def _at(prepared: Prepared, message: str, hint: str, parts: tuple = ()) -> DataWarning:
    """A warning located at a record, as a data error about it would be."""
    error = prepared.example.place.error(message, hint, parts)
    return DataWarning(error.where, error.path, error.message, hint)


def warnings(recipe: Recipe, tokenizer, prepared: list[Prepared], mix: Part) -> list[DataWarning]:
    """What trains badly: truncation over 5 %, records with nothing to train, a chat template that
    renders a conversation differently turn by turn or ends assistant turns with no end-of-turn
    token (or leaves it untrained), prompts whose last token merges with the completion."""
    found = []
    limit = recipe.data.max_seq_length
    if mix.records and mix.truncated / mix.records > TRUNCATED_WARNING:
        found.append(DataWarning(
            recipe.locate(("data", "max_seq_length")), "$.data.max_seq_length",
            f"warning: {mix.truncated} of {mix.records} records ({mix.truncated / mix.records:.0%}) are longer than "
            f"max_seq_length {limit} and lose {mix.lost_tokens} tokens (the end of each is cut off)",
            f"raise data.max_seq_length (p99 is {mix.lengths['p99']} tokens), or shorten those records"))
    dropped = [p for p in prepared if p.dropped]
    if dropped:
        found.append(_at(dropped[0], f"warning: {len(dropped)} records have no trained token and are left out "
                                     f"(this is the first): {dropped[0].dropped}",
                         "raise data.max_seq_length, or check the template's {% generation %} marks with "
                         "recipe data --show"))
    merged = [p for p in prepared if p.tokens.prompt_merged]
    if merged:
        found.append(_at(merged[0], f"warning: in {len(merged)} records the prompt's last token merges with the "
                                    "completion's first (this is the first): training cuts the prompt there, "
                                    "unlike the prompt the model gets when asked",
                         "end prompts on a token boundary, e.g. with a newline or a space"))
    if data.layout(recipe) == "messages" and not data.mistral_common(recipe):  # no template: mistral.py checks
        found += _template_warnings(recipe, tokenizer, prepared)
    return found


def _template_warnings(recipe: Recipe, tokenizer, prepared: list[Prepared]) -> list[DataWarning]:
    template = data.training_template(recipe, tokenizer)
    answer_only = recipe.data.completion_only_loss

    def render(messages: list, prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                             chat_template=template, tools=None)

    def changes(messages: list, k: int) -> bool:
        """Whether the conversation up to assistant turn k renders otherwise than inside the
        whole one, or its prompt (with the generation prompt) otherwise than before the answer."""
        upto = render(messages[:k + 1])
        try:
            prompt = render(messages[:k], prompt=True) if k else ""
        except TemplateError:  # a template that refuses a conversation ending where it would not be asked
            prompt = ""
        return not (whole.startswith(upto) and upto.startswith(prompt))

    from jinja2 import TemplateError  # transformers' own dependency, for its chat templates

    found = []
    for p in prepared[:TEMPLATE_CHECKS]:
        messages = p.example.columns["messages"]
        whole = render(messages)
        turn = next((k for k, m in enumerate(messages) if m["role"] == "assistant" and changes(messages, k)), None)
        if turn is not None:
            found.append(_at(p, f"warning: the chat template renders this conversation differently when it is "
                                f"tokenized turn by turn (up to turn {turn}): a mask built turn by turn, or the "
                                "prompt at inference, does not line up with the text that trains",
                             "use a template that renders earlier turns the same whatever follows them",
                             ("messages", turn)))
            break
    # The template the warnings are about: the recipe's own Jinja, or the model's.
    knob = ("data", "chat_template_jinja") if recipe.data.chat_template == "jinja" else ("model", "id")
    where, path = recipe.locate(knob), json_path(knob)
    probe = list(data.PROBE)
    try:
        after = render(probe).rsplit("answer", 1)[-1]
    except TemplateError:  # a template that wants more than one plain exchange: no end-of-turn check
        return found
    ends = [t for t in (tokenizer.eos_token, *tokenizer.get_added_vocab()) if t and t in after]
    named = recipe.data.chat_template
    if named in templates.TEMPLATES:
        marker = templates.end_of_turn(named, tokenizer)
        pieces = len(tokenizer(text=marker, add_special_tokens=False)["input_ids"])
        if pieces != 1:
            # The model learns to write the marker piece by piece, and generation stops only at a token.
            found.append(DataWarning(recipe.locate(("data", "chat_template")), "$.data.chat_template",
                                     f"warning: chat_template {named} ends turns with {marker!r}, which the "
                                     f"tokenizer of {recipe.model.id} has no token for (it trains as {pieces} "
                                     "pieces, and generation does not stop there)",
                                     "name the template the model was trained with, or tokenizer for its own"))
            return found
        ends = [marker]
    if not ends:
        found.append(DataWarning(where, path, "warning: the chat template puts no end-of-turn token after assistant "
                                              f"turns (nothing like {tokenizer.eos_token!r} follows the answer): the "
                                              "model is never shown where to stop",
                                 "use a template that closes assistant turns with the end-of-sequence token"))
    elif answer_only:
        tokens = data.tokenize({"messages": probe + [{"role": "user", "content": "again"}]}, tokenizer,
                               answer_only=True, chat_template=template)
        trained = tokenizer.decode([t for t in tokens.labels if t != IGNORED], skip_special_tokens=False)
        if not any(trained.rstrip().endswith(token) for token in ends):
            found.append(DataWarning(where, path, f"warning: the chat template ends assistant turns with {ends[0]!r} "
                                                  "but leaves it out of the loss ({% generation %} closes before it): "
                                                  "the model is never trained to stop",
                                     "move {% endgeneration %} after the end-of-turn token, or set "
                                     "data.completion_only_loss: false"))
    return found


def plot(path: Path, stats: DataStats) -> None:
    """The length histogram (tokens per record, before truncation) with the cut-off marked, as a PNG
    drawn with lossplot's pure-Python primitives."""
    lengths, cut = stats.histogram, stats.max_seq_length
    canvas = bytearray(lossplot.WIDTH * lossplot.HEIGHT)
    left, right, top, bottom = lossplot.LEFT, lossplot.RIGHT, lossplot.TOP, lossplot.BOTTOM
    x_ticks, (x_lo, x_hi) = lossplot._ticks(0, max(max(lengths, default=1), cut), integer=True)
    x_lo = 0
    bins = 48
    width = (x_hi - x_lo) / bins
    counts = Counter(min(bins - 1, int((n - x_lo) / width)) for n in lengths)
    y_ticks, (_, y_hi) = lossplot._ticks(0, max(counts.values(), default=1), integer=True)

    def px(x: float) -> int:
        return round(left + (x - x_lo) / (x_hi - x_lo) * (right - left))

    def py(y: float) -> int:
        return round(bottom - y / y_hi * (bottom - top))

    for tick, label in x_ticks:
        if tick >= x_lo:
            lossplot._rect(canvas, px(tick), bottom, px(tick), bottom + 4, lossplot.AXES)
            lossplot._text(canvas, label, px(tick) - lossplot._width(label) // 2, bottom + 8)
    for tick, label in y_ticks:
        if tick >= 0:
            lossplot._rect(canvas, left, py(tick), right, py(tick), lossplot.GRID)
            lossplot._text(canvas, label, left - 8 - lossplot._width(label), py(tick) - 7)
    for b, count in counts.items():
        lossplot._rect(canvas, px(x_lo + b * width) + 1, py(count), px(x_lo + (b + 1) * width) - 1, bottom,
                       lossplot.TRAIN)
    lossplot._rect(canvas, px(cut), top, px(cut) + 1, bottom, lossplot.EVAL)
    label = f"cut-off {cut}"
    lossplot._text(canvas, label, min(px(cut) + 6, right - lossplot._width(label) - 4), top + 6)
    for x0, y0, x1, y1 in ((left, top, right, top), (left, bottom, right, bottom), (left, top, left, bottom),
                           (right, top, right, bottom)):
        lossplot._rect(canvas, x0, y0, x1, y1, lossplot.AXES)
    title = "tokens per record"
    lossplot._text(canvas, title, (left + right - lossplot._width(title)) // 2, lossplot.HEIGHT - 22)
    lossplot._text(canvas, "records", 8, 4)
    atomic.write(path, lossplot._png(canvas, lossplot.WIDTH, lossplot.HEIGHT))
