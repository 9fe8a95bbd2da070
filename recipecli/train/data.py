"""Training data: read every dataset of a recipe (datafiles.py reads the files), check each record,
and turn the mix into the columns TRL's SFTTrainer reads.

Runs before any model is loaded, so a typo on line 9,000 of a data file costs a second, not a
download. Every problem names the file, the record and the field.

TRL 1.16 understands three layouts, and every dataset of a mix must end up in the same one:

=================  ===================  =========================================================
recipe format      columns for TRL      answer-only loss comes from
=================  ===================  =========================================================
alpaca             prompt, completion   ``completion_only_loss`` (prompt tokens masked)
prompt_completion  prompt, completion   ``completion_only_loss``
chat, sharegpt     messages             ``assistant_only_loss`` (``{% generation %}`` in template)
text               text                 nothing: every token is trained
tokenized          input_ids, labels    the data's own labels (-100 where a token has no loss)
=================  ===================  =========================================================

A mix of prompt/completion and conversational datasets becomes conversational (the prompt is
the user turn, the completion the assistant turn); plain text mixes with neither.

Each dataset is read through its ``Reader``: the format's field names, or the data's own where
``fields`` renames them, and for conversations the role each name of the data means (``roles``) and
a turn's reasoning (``fields.thinking``), handed to the template under the key it reads it from.
Conversations are rendered with ``data.chat_template``: the tokenizer's own, or a named one of
templates.py, already marked for answer-only loss; mistral-common's tokenizer
(``model.tokenizer_backend``) encodes them itself, and mistral.py masks the answers.

``recipe run`` and ``recipe data`` share one pipeline, ``prepare``: read -> mix and split ->
``tokenize`` -> ``truncate`` -> drop what has no trained token left. The trainer gets its result
already tokenized (input_ids and labels), so TRL only packs and pads it, and the statistics
``recipe data`` prints are the numbers of the very sequences that train. ``tokenize`` does what
TRL 1.16's ``SFTTrainer._prepare_dataset`` does to an untokenized dataset (end-of-sequence token,
template, completion or assistant mask); tests/train/test_datastats.py compares the two, label by
label, for every format.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
from dataclasses import dataclass
from typing import Optional

from ..errors import DataError
from ..read.recipe import (ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT, Format,
                           Recipe)
from . import datafiles, templates
from .datafiles import Place, kind


_LAYOUT: dict[str, str] = {
    "alpaca": "prompt_completion",
    "prompt_completion": "prompt_completion",
    "chat": "messages",
    "sharegpt": "messages",
    "text": "text",
    "tokenized": "tokens",
}


def alpaca_prompt(instruction: str, input: str = "", preamble: bool = False) -> str:
    """The fixed prompt an alpaca record is trained (and should be queried) with.

    Args:
        instruction: the task.
        input: optional context; empty leaves the Input section out.
        preamble: start with Stanford Alpaca's one-line preamble (``data.datasets[].preamble``).

    Returns:
        The prompt, ending where the response starts.
    """
    if input:
        return (ALPACA_PREAMBLE_WITH_INPUT if preamble else "") + ALPACA_PROMPT_WITH_INPUT.format(
            instruction=instruction, input=input)
    return (ALPACA_PREAMBLE if preamble else "") + ALPACA_PROMPT.format(instruction=instruction)


# Formats that train alone: why none mixes with another, and what to do instead.
_ALONE = {
    "tokenized": ("its tokens were made by a tokenizer and template recipe does not see",
                  "train them in separate recipes, or give the tokenized data as records of another format"),
    "text": ("plain text has no prompt or roles to line up with",
             "train them in separate recipes, or convert the text data to prompt_completion"),
}


def layout(recipe: Recipe) -> str:
    """Columns the recipe's mix becomes: ``prompt_completion``, ``messages``, ``text`` or ``tokens``
    (input_ids and labels); ``messages`` with mistral-common's tokenizer (model.tokenizer_backend)
    for every layout but ``tokens``.

    Raises:
        DataError: plain text mixed with datasets that have prompts or roles; token ids mixed with
            records of any other format.
    """
    datasets = recipe.data.datasets
    layouts = {_LAYOUT[d.format] for d in datasets}
    for fmt, (why, hint) in _ALONE.items():
        if _LAYOUT[fmt] in layouts and len(layouts) > 1:
            i = next(i for i, d in enumerate(datasets) if d.format == fmt)
            other = next(d for d in datasets if d.format != fmt)
            raise DataError(f"{datafiles.display(datasets[i])} (format {fmt}) cannot be mixed with "
                            f"{datafiles.display(other)} (format {other.format}): {why}", hint,
                            where=recipe.locate(("data", "datasets", i, "format")),
                            path=f"$.data.datasets[{i}].format")
    if "tokens" in layouts:
        return "tokens"  # ids are ids, whichever tokenizer backend the recipe names
    # mistral-common encodes conversations only: a prompt is a user turn, its completion the answer.
    if "messages" in layouts or mistral_common(recipe):
        return "messages"
    return layouts.pop()


def mistral_common(recipe: Recipe) -> bool:
    """Whether the tokenizer is mistral-common's (model.tokenizer_backend), which encodes
    conversations itself, with no chat template (mistral.py)."""
    return recipe.model.tokenizer_backend == "mistral_common"


def sft_flags(recipe: Recipe) -> dict:
    """SFTConfig arguments that follow from the data section, so the runner does not re-derive them.

    Returns:
        ``completion_only_loss`` / ``assistant_only_loss`` (answer-only loss mapped onto the flag TRL
        reads for this layout; TRL rejects the other one), ``max_length`` and ``packing``.
    """
    columns = layout(recipe)
    answer_only = recipe.data.completion_only_loss
    return {
        "completion_only_loss": answer_only and columns == "prompt_completion",
        "assistant_only_loss": answer_only and columns == "messages",
        "max_length": recipe.data.max_seq_length,
        "packing": recipe.data.packing,
    }


@dataclass(slots=True)  # not frozen: built once per record (see datafiles.Place)
class Example:
    """One checked record in the columns TRL reads, and where it came from."""

    columns: dict  # prompt/completion, messages, text, or input_ids/labels
    dataset: int  # its dataset's index in data.datasets
    place: Place  # for messages about the record: file, line, record number


def load_examples(recipe: Recipe, tokenizer=None):
    """Read, check, convert, mix and split the recipe's datasets.

    Args:
        recipe: a loaded recipe.
        tokenizer: the model's tokenizer, when already loaded: conversational data needs its chat
            template, and this fails early when it has none.

    Returns:
        ``(train, eval)`` as ``datasets.Dataset``; eval is None without ``data.val_fraction``.

    Raises:
        DataError: a file that is missing or unreadable, a hub dataset that cannot be downloaded,
            a record with a missing or mistyped field, an empty dataset, a tokenizer without chat
            template for conversational data, or too few examples to hold some out.
    """
    from datasets import Dataset as HFDataset

    train, evals = split(recipe, read_examples(recipe, tokenizer))
    return (HFDataset.from_list([e.columns for e in train]),
            None if evals is None else HFDataset.from_list([e.columns for e in evals]))


def read_examples(recipe: Recipe, tokenizer=None) -> list[Example]:
    """Every record of every dataset, checked and converted, in file order (``load_examples``'
    first half, without the datasets library).

    Raises:
        DataError: as ``load_examples``.
    """
    columns = layout(recipe)
    if columns == "messages" and tokenizer is not None and not mistral_common(recipe):
        _check_chat_template(recipe, tokenizer)
        _check_thinking_is_read(recipe, tokenizer)
    examples = []
    for index, spec in enumerate(recipe.data.datasets):
        before = len(examples)
        read = reader(spec, index)
        if spec.format == "tokenized" and tokenizer is not None:
            read = dataclasses.replace(read, vocab=len(tokenizer))
        for place, record in itertools.islice(datafiles.records(spec), spec.max_samples):
            example = _convert(read, record, place)
            example = _as_messages(example) if columns == "messages" and "prompt" in example else example
            examples.append(Example(example, index, place))
        if len(examples) == before:
            raise DataError("no records", "check the file, or the split and subset of a hub dataset",
                            where=datafiles.display(spec))
    return examples


def split(recipe: Recipe, examples: list) -> tuple[list, Optional[list]]:
    """Shuffle the mix with the recipe's seed and hold out ``data.val_fraction`` of it.

    Returns:
        ``(train, eval)``; eval is None without ``data.val_fraction``.

    Raises:
        DataError: the fraction leaves nothing to train on.
    """
    examples = list(examples)
    # The order of a mix is part of the run: it follows the recipe's seed, nothing else.
    random.Random(recipe.training.seed).shuffle(examples)
    if recipe.data.val_fraction is None:
        return examples, None
    n_eval = max(1, round(len(examples) * recipe.data.val_fraction))
    if n_eval >= len(examples):
        raise DataError(f"{recipe.data.val_fraction} of {len(examples)} examples leaves nothing to train on",
                        "lower data.val_fraction or add data", where=recipe.locate(("data", "val_fraction")), path="$.data.val_fraction")
    return examples[n_eval:], examples[:n_eval]


IGNORED = -100  # the label of a token that carries no loss (PyTorch's cross-entropy ignore_index)
PACKING_STRATEGY = "bfd"  # TRL's default, named so that `recipe data` packs as the trainer does
_BATCH = 1000  # examples tokenized per call


@dataclass(slots=True)
class Tokens:
    """One example as the trainer gets it."""

    input_ids: list[int]
    labels: list[int]  # the token where it carries the loss, else IGNORED
    length: int  # tokens before truncation
    prompt_merged: bool = False  # the prompt's last tokens merged with the completion's first


@dataclass(slots=True)
class Prepared:
    """An example, its tokens, and why it is left out of training ("" when it is not)."""

    example: Example
    tokens: Tokens
    dropped: str = ""


def trainer_flags(recipe: Recipe) -> dict:
    """SFTConfig's data arguments for the examples ``prepare`` tokenized: the masks are in the
    labels already, so TRL must not look for prompt columns or assistant masks again."""
    return {"completion_only_loss": False, "assistant_only_loss": False, "max_length": recipe.data.max_seq_length,
            "packing": recipe.data.packing, "packing_strategy": PACKING_STRATEGY}


# A minimal conversation, for what a template renders around an answer.
PROBE = ({"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"})


def recipe_template(recipe: Recipe) -> Optional[str]:
    """The Jinja text the recipe gives for conversations (named, or its own with ``jinja``); None
    when the tokenizer's own template renders them, or nothing is conversational."""
    if layout(recipe) != "messages":
        return None
    if recipe.data.chat_template == "jinja":
        return recipe.data.chat_template_jinja
    return templates.template(recipe.data.chat_template) if recipe.data.chat_template in templates.TEMPLATES else None


def training_template(recipe: Recipe, tokenizer) -> Optional[str]:
    """The chat template conversations are tokenized with: the recipe's (``recipe_template``;
    _check_chat_template saw it marked for answer-only loss); else None for the tokenizer's own, or
    TRL's training version of it when answer-only loss needs ``{% generation %}`` marks it lacks."""
    own = recipe_template(recipe)
    if own is not None or layout(recipe) != "messages" or not sft_flags(recipe)["assistant_only_loss"] \
            or mistral_common(recipe):  # no template: mistral.py masks the answers
        return own
    if templates.marks_answers(tokenizer.chat_template):
        return None
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tokenizer)


def set_special_tokens(recipe: Recipe, tokenizer) -> None:
    """Set ``data.special_tokens`` on the tokenizer, before anything is tokenized, and check ``data.tokens``.

    Raises:
        DataError: a text is not one token of this tokenizer (recipe adds no tokens: a new one
            would need a new embedding row, which the base model does not have). Nothing is set then.
    """
    named = recipe.data.special_tokens.named() if recipe.data.special_tokens else {}
    vocab = tokenizer.get_vocab()
    for name, text in named.items():
        if text not in vocab:
            raise DataError(f"{name} {text!r} is not a token of {recipe.model.id}'s tokenizer",
                            f"name one of its tokens (its own is {getattr(tokenizer, name)!r}), or leave "
                            f"data.special_tokens.{name} out",
                            where=recipe.locate(("data", "special_tokens", name)),
                            path=f"$.data.special_tokens.{name}")
    for i, text in enumerate(recipe.data.tokens or ()):
        if text not in vocab:
            raise DataError(f"{text!r} is not a token of {recipe.model.id}'s tokenizer, and recipe adds none",
                            "use a tokenizer that has it (e.g. the model's chat/instruct variant), or remove it",
                            where=recipe.locate(("data", "tokens", i)), path=f"$.data.tokens[{i}]")
    for name, text in named.items():
        setattr(tokenizer, name, text)


def tokenize(columns: dict, tokenizer, *, answer_only: bool, chat_template: Optional[str] = None) -> Tokens:
    """One example's tokens and labels, as TRL's SFTTrainer prepares an untokenized example.

    Args:
        columns: prompt/completion, messages or text (``Example.columns``).
        tokenizer: the model's tokenizer.
        answer_only: train only the completion, or the assistant turns (``data.completion_only_loss``).
        chat_template: for conversations, from ``training_template``.

    Returns:
        The whole sequence, not yet truncated.
    """
    return tokenize_many([columns], tokenizer, answer_only=answer_only, chat_template=chat_template)[0]


def tokenize_many(batch: list[dict], tokenizer, *, answer_only: bool, chat_template: Optional[str] = None
                  ) -> list[Tokens]:
    """``tokenize`` for examples of one layout at once: the same tokenizer calls, given lists, so the
    tokenizer encodes them in parallel (TRL makes them one example at a time; the result is the same)."""
    if not batch:
        return []
    if "input_ids" in batch[0]:  # tokenized already: checked where they were read
        return [Tokens(list(c["input_ids"]), list(c["labels"]), len(c["input_ids"])) for c in batch]
    if "messages" in batch[0]:
        out = tokenizer.apply_chat_template([c["messages"] for c in batch], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=answer_only, chat_template=chat_template,
                                            tools=None)
        masks = out.get("assistant_masks") if answer_only else None
        if masks is None:
            return [Tokens(list(ids), list(ids), len(ids)) for ids in out["input_ids"]]
        return [Tokens(list(ids), [t if m else IGNORED for t, m in zip(ids, mask)], len(ids))
                for ids, mask in zip(out["input_ids"], masks)]
    eos = tokenizer.eos_token

    def ended(text: str) -> str:  # an end-of-sequence token to stop at, once
        return text if text.endswith(eos) else text + eos

    if "text" in batch[0]:  # plain text: every token trained
        return [Tokens(ids, list(ids), len(ids))
                for ids in tokenizer(text=[ended(c["text"]) for c in batch])["input_ids"]]
    prompts = tokenizer(text=[c["prompt"] for c in batch])["input_ids"]
    wholes = tokenizer(text=[c["prompt"] + ended(c["completion"]) for c in batch])["input_ids"]
    tokens = []
    for prompt_ids, ids in zip(prompts, wholes):
        # The completion starts where the two tokenizations part: a token may merge across the boundary.
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids)))
        labels = [IGNORED] * start + ids[start:] if answer_only else list(ids)
        tokens.append(Tokens(ids, labels, len(ids), prompt_merged=start < len(prompt_ids)))
    return tokens


def _template_refusal(error: Exception) -> tuple[str, str]:
    return (f"the chat template refuses this conversation: {error}",
            "drop or mend the record, or use a template that accepts it (data.chat_template)")


def _encoder(recipe: Recipe):
    """(tokenize_many, the errors by which it refuses one record, what to say of one) for the
    recipe's tokenizer: transformers' with its chat template, or mistral-common's (mistral.py); token
    ids are taken as they are whichever it is."""
    if mistral_common(recipe) and layout(recipe) != "tokens":
        from . import mistral

        return mistral.tokenize_many, mistral.refusals(), mistral.refusal
    from jinja2 import TemplateError  # a template's raise_exception: roles that do not alternate...

    return tokenize_many, (TemplateError,), _template_refusal


def _tokenized(chunk: list[Example], tokenizer, encoder, **how) -> list[Tokens]:
    """The chunk encoded by ``encoder`` (``_encoder``); a record it refuses is a DataError there."""
    encode, refused, refusal = encoder
    try:
        return encode([e.columns for e in chunk], tokenizer, **how)
    except refused:
        for example in chunk:  # which one: the error said why, not where
            try:
                encode([example.columns], tokenizer, **how)
            except refused as e:
                raise example.place.error(*refusal(e)) from e
        raise


def truncate(tokens: Tokens, max_length: int) -> Tokens:
    """Keep the first ``max_length`` tokens (TRL's keep_start, and what its packing keeps)."""
    if tokens.length <= max_length:
        return tokens
    return Tokens(tokens.input_ids[:max_length], tokens.labels[:max_length], tokens.length, tokens.prompt_merged)


def prepare(recipe: Recipe, tokenizer) -> tuple[list[Prepared], Optional[list[Prepared]]]:
    """The recipe's examples as they train: read, mixed, split, tokenized, truncated; an example
    left without a trained token is kept with the reason it is dropped (it would add no loss).

    Returns:
        ``(train, eval)``; eval is None without ``data.val_fraction``.

    Raises:
        DataError: as ``load_examples``, or a special token the tokenizer lacks (set on it here,
            before anything is tokenized, for `recipe run` and `recipe data` alike).
    """
    set_special_tokens(recipe, tokenizer)
    train, evals = split(recipe, read_examples(recipe, tokenizer))
    template = training_template(recipe, tokenizer)
    answer_only = recipe.data.completion_only_loss and layout(recipe) != "text"
    max_length = recipe.data.max_seq_length
    encoder = _encoder(recipe)

    def one(example: Example, full: Tokens) -> Prepared:
        kept = truncate(full, max_length)
        if any(label != IGNORED for label in kept.labels):
            return Prepared(example, kept)
        why = "nothing trained is left within max_seq_length" if full is not kept and any(
            label != IGNORED for label in full.labels) else "the template marks no token to train"
        return Prepared(example, kept, why)

    def each(examples: list[Example]) -> list[Prepared]:
        prepared = []
        for i in range(0, len(examples), _BATCH):
            chunk = examples[i:i + _BATCH]
            tokens = _tokenized(chunk, tokenizer, encoder, answer_only=answer_only, chat_template=template)
            prepared += [one(e, t) for e, t in zip(chunk, tokens)]
        return prepared

    return each(train), None if evals is None else each(evals)


def datasets(recipe: Recipe, train: list[Prepared], evals: Optional[list[Prepared]]):
    """The trained examples of ``prepare`` as the ``datasets.Dataset`` columns SFTTrainer takes
    (input_ids, labels), with ``trainer_flags``.

    Raises:
        DataError: no example has a token left to train.
    """
    from datasets import Dataset as HFDataset

    def columns(prepared: list[Prepared]):
        kept = [p.tokens for p in prepared if not p.dropped]
        return HFDataset.from_dict({"input_ids": [t.input_ids for t in kept], "labels": [t.labels for t in kept]})

    if all(p.dropped for p in train):
        raise DataError(f"none of the {len(train)} training examples has a token left to train: {train[0].dropped}",
                        "raise data.max_seq_length, or check the chat template with recipe data",
                        where=recipe.locate(("data", "max_seq_length")), path="$.data.max_seq_length")
    # An eval split left with nothing to train would fail in evaluate(): none then, as without one.
    return columns(train), None if evals is None or all(p.dropped for p in evals) else columns(evals)


def _check_chat_template(recipe: Recipe, tokenizer) -> None:
    """Refuse a chat template that TRL cannot train conversational data with.

    Answer-only loss on conversations needs ``{% generation %}`` markers in the template; TRL
    patches a known list of templates and raises in SFTTrainer's constructor for any other one.
    The same check here, before the model loads, naming the knob (TRL is imported only for a
    template without markers, to see whether it can patch it).
    """
    if recipe.data.chat_template == "jinja":
        return _check_jinja(recipe, tokenizer)
    if recipe.data.chat_template in templates.TEMPLATES:
        return  # the named template is used, marked for answer-only loss
    conversational = next(datafiles.display(d) for d in recipe.data.datasets if _LAYOUT[d.format] == "messages")
    if not tokenizer.chat_template:
        raise DataError(f"{conversational} is conversational, but the tokenizer of {recipe.model.id} has no "
                        "chat template", "use a chat/instruct variant of the model, or data in format alpaca "
                        "or prompt_completion, or name one with data.chat_template (e.g. chatml)",
                        where=recipe.locate(("model", "id")), path="$.model.id")
    if not sft_flags(recipe)["assistant_only_loss"] or templates.marks_answers(tokenizer.chat_template):
        return
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except ValueError as e:  # TRL has no training version of this template
        raise DataError(
            f"{conversational} is conversational and answer-only loss is on, but the chat template of "
            f"{recipe.model.id} does not mark assistant turns ({{% generation %}}) and TRL cannot patch it",
            "set data.completion_only_loss: false, or use a tokenizer whose chat template marks assistant turns",
            where=recipe.locate(("data", "completion_only_loss")), path="$.data.completion_only_loss") from e


def _check_thinking_is_read(recipe: Recipe, tokenizer) -> None:
    """Refuse reasoning (fields.thinking) that the chat template never reads: a template that does
    not name its key anywhere in its text renders no turn's reasoning, and it would be lost without a word."""
    own = recipe_template(recipe)
    text = own if own is not None else str(tokenizer.chat_template or "")
    for i, spec in enumerate(recipe.data.datasets):
        if spec.thinking is None or spec.template_thinking_key in text:
            continue
        which = f"chat_template {recipe.data.chat_template}" if own is not None else \
            f"the chat template of {recipe.model.tokenizer_source}"
        raise DataError(f"{which} never reads {spec.template_thinking_key!r}: the reasoning in fields.thinking "
                        f"({spec.thinking}) would be left out of every turn",
                        "set template_thinking_key to the key the template reads a turn's reasoning from "
                        "(reasoning_content for Qwen3 and DeepSeek-R1, thinking for gpt-oss), or use a template "
                        "that renders it",
                        where=recipe.locate(("data", "datasets", i, "template_thinking_key")),
                        path=f"$.data.datasets[{i}].template_thinking_key")


# Each format's own field names; data.datasets[].fields renames them (the keys are rules.FIELDS_OF_FORMAT).
_OWN_FIELDS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "chat": {"messages": "messages", "role": "role", "content": "content"},
    "sharegpt": {"messages": "conversations", "role": "from", "content": "value"},
    "text": {"text": "text"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "tokenized": {},
}
# Each conversational format's own role names; data.datasets[].roles replaces them role by role.
_OWN_ROLES = {
    "chat": {"system": ("system",), "user": ("user",), "assistant": ("assistant",)},
    "sharegpt": {"system": ("system",), "user": ("human", "user"), "assistant": ("gpt", "assistant")},
}


@dataclass(frozen=True)
class Reader:
    """How one dataset's records are read: its format, its names for the fields, and for
    conversations which role each name of the data means."""

    format: Format
    names: dict  # field the format reads -> its name in the data
    roles: dict  # role name in the data -> system, user or assistant
    knob: str  # data.datasets[i], for hints that name the recipe field to change
    renamed: frozenset = frozenset()  # fields whose name the recipe gives
    preamble: bool = False  # alpaca: Stanford Alpaca's preamble starts each prompt
    drop_system: bool = False  # conversations: system turns are left out
    thinking: Optional[str] = None  # conversations: a turn's key for its reasoning (fields.thinking)
    thinking_key: Optional[str] = None  # ... and the key the chat template reads it from
    vocab: Optional[int] = None  # tokenized: the tokenizer's size, which every id must be below

    def needs(self) -> str:
        """What the format reads, in the data's names, for the hint of an error about a record."""
        n, fmt = self.names, self.format
        if fmt == "alpaca":
            return f"format alpaca reads {n['instruction']}, {n['output']} and optionally {n['input']}"
        if fmt == "prompt_completion":
            return f"format prompt_completion reads {n['prompt']} and {n['completion']}"
        if fmt == "text":
            return f"format text reads {n['text']}"
        if fmt == "tokenized":
            return "format tokenized reads input_ids and optionally labels and attention_mask"
        return f"format {fmt} reads {n['messages']}: a list of {{{n['role']}, {n['content']}}}"


def reader(spec, index: int = 0) -> Reader:
    """The Reader of ``data.datasets[index]``."""
    names = dict(_OWN_FIELDS[spec.format])
    renamed = set()
    if spec.fields is not None:
        for field in names:
            if getattr(spec.fields, field) is not None:
                names[field] = getattr(spec.fields, field)
                renamed.add(field)
    roles = {}
    if spec.format in _OWN_ROLES:
        given = spec.roles
        for role, own in _OWN_ROLES[spec.format].items():
            mine = getattr(given, role) if given is not None else None
            roles.update({name: role for name in (own if mine is None else mine)})
    return Reader(spec.format, names, roles, f"data.datasets[{index}]", frozenset(renamed), spec.preamble,
                  spec.drop_system, spec.thinking, spec.template_thinking_key)


def _convert(read: Reader, record: object, place: Place) -> dict:
    """One raw record to TRL columns; errors are raised at ``place``."""
    if not isinstance(record, dict):
        raise place.error(f"expected an object with fields, got {kind(record)}",
                          f"every record is an object; {read.needs()}")
    n, fmt = read.names, read.format
    if fmt == "alpaca":
        instruction = _text(record, n["instruction"], place, read)
        output = _text(record, n["output"], place, read)
        context = _text(record, n["input"], place, read, required=False)
        return {"prompt": alpaca_prompt(instruction, context, read.preamble), "completion": output}
    if fmt == "prompt_completion":
        return {"prompt": _text(record, n["prompt"], place, read),
                "completion": _text(record, n["completion"], place, read)}
    if fmt == "text":
        return {"text": _text(record, n["text"], place, read)}
    if fmt == "tokenized":
        return _token_columns(record, place, read)
    field = n["messages"]
    turns = _present(record, (field,), place, read)
    if not isinstance(turns, list) or not turns:
        raise place.error(f"must be a non-empty list of turns, got {kind(turns)} {shown(turns)}", read.needs(),
                          (field,))
    messages = [_turn(t, place, (field, i), read) for i, t in enumerate(turns)]
    if read.drop_system:
        messages = [m for m in messages if m["role"] != "system"]
    # Nothing to learn from a conversation without an answer, and TRL stops on it mid-epoch.
    if not any(m["role"] == "assistant" for m in messages):
        raise place.error("has no assistant turn", "drop the record: it has no answer to learn", (field,))
    return {"messages": messages}


def _token_columns(record: dict, place: Place, read: Reader) -> dict:
    """A tokenized record's input_ids and labels (every token's own id where it has none), checked:
    ids the tokenizer has, one label per token (an id, or IGNORED), no padding."""
    ids = _ids(record, "input_ids", place, read)
    if not ids:
        raise place.error("is empty", "drop the record: it has no token", ("input_ids",))
    labels = list(ids) if record.get("labels") is None else _ids(record, "labels", place, read, ignored=True)
    mask = record.get("attention_mask")
    for name, values in (("labels", labels), ("attention_mask", mask)):
        if values is not None and (not isinstance(values, list) or len(values) != len(ids)):
            raise place.error(f"has {len(values) if isinstance(values, list) else kind(values)} for "
                              f"{len(ids)} input_ids", "give one per token", (name,))
    padded = next((k for k, v in enumerate(mask or ()) if v is not True and v != 1 or isinstance(v, float)), None)
    if padded is not None:
        raise place.error(f"is {shown(mask[padded])} at token {padded}: a padded record (or not a mask)",
                          "remove the padding tokens with their labels and attention_mask entries: recipe pads "
                          "batches itself", ("attention_mask",))
    return {"input_ids": ids, "labels": labels}


def _ids(record: dict, field: str, place: Place, read: Reader, ignored: bool = False) -> list[int]:
    """A list of token ids (and IGNORED where ``ignored``) below the tokenizer's size."""
    values = _present(record, (field,), place, read)
    if not isinstance(values, list):
        raise place.error(f"must be a list of token ids, got {kind(values)} {shown(values)}", read.needs(), (field,))
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise place.error(f"{shown(v)} at token {k} is not a token id (a whole number)",
                              "write token ids as whole numbers" + (f", and {IGNORED} where a token carries no loss"
                                                                     if ignored else ""), (field,))
        if (v < 0 and not (ignored and v == IGNORED)) or (read.vocab is not None and v >= read.vocab):
            raise place.error(f"{v} at token {k} is not an id of the model's tokenizer (0 to {read.vocab - 1})"
                              if read.vocab is not None else f"{v} at token {k} is not a token id",
                              "tokenize the data with the model's tokenizer (model.tokenizer)", (field,))
    return values


def _present(record: dict, parts: tuple, place: Place, read: Reader) -> object:
    """The value of the field ``parts[-1]`` of ``record``; an error that says why when it has none."""
    field = parts[-1]
    if field not in record:
        fields = ", ".join(json.dumps(str(k)) for k in record) or "no fields"
        hint = f"{read.needs()}; is {read.format} the format of this file?"
        own = next((f for f, name in read.names.items() if name == field), None)
        if own is not None:
            # The recipe field that names it: renaming is the fix when the data says it otherwise.
            hint += f" Or name its field with {read.knob}.fields.{own}"
        if place.header_line is not None:
            raise place.header_error(f"no such column; the header has {fields}", hint, parts)
        raise place.error(f"missing; the record has {fields}", hint, parts)
    if record[field] is None:
        # A table (parquet, a hub dataset) has every column in every row: null may mean missing.
        raise place.error("is null" if place.line else "is null or missing", "give it a value, or drop the record",
                          parts)
    return record[field]


def _text(record: dict, field: str, place: Place, read: Reader, required: bool = True,
          parts: tuple = ()) -> str:
    parts = (*parts, field)
    if not required and record.get(field) is None:
        return ""
    value = _present(record, parts, place, read)
    if not isinstance(value, str):
        hint = ("write text, not a list of parts: join the parts into one string" if isinstance(value, (list, dict))
                else f"quote it in the file: \"{shown(value)}\"")
        raise place.error(f"must be a string, got {kind(value)} {shown(value)}", hint, parts)
    return value


def shown(value: object, width: int = 60) -> str:
    """A value as JSON writes it (true, null, "text"), cut to ``width`` characters."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= width else text[:width - 3] + "..."


def _turn(turn: object, place: Place, parts: tuple, read: Reader) -> dict:
    n = read.names
    if not isinstance(turn, dict):
        raise place.error(f"expected a turn {{{n['role']}, {n['content']}}}, got {kind(turn)} {shown(turn)}",
                          read.needs(), parts)
    name = _text(turn, n["role"], place, read, parts=parts)
    if name not in read.roles:
        what = "a chat role" if read.format == "chat" else "a ShareGPT speaker"
        hint = f"{what} is one of {', '.join(read.roles)}"
        if read.format == "chat" and name in _OWN_ROLES["sharegpt"]["user"] + _OWN_ROLES["sharegpt"]["assistant"]:
            hint += "; ShareGPT data ({from: human, value}) is format sharegpt"
        hint += f"; other names are given with {read.knob}.roles, e.g. {{assistant: [{name}]}}"
        raise place.error(f"{shown(name)} is not {what}", hint, (*parts, n["role"]))
    message = {"role": read.roles[name], "content": _text(turn, n["content"], place, read, parts=parts)}
    # A turn's reasoning goes where the chat template reads it; null or absent: this turn has none
    # (Axolotl's field_thinking / template_thinking_key, which copy it the same way).
    if read.thinking is not None and turn.get(read.thinking) is not None:
        message[read.thinking_key] = _text(turn, read.thinking, place, read, parts=parts)
    return message


def _as_messages(example: dict) -> dict:
    return {"messages": [{"role": "user", "content": example["prompt"]},
                         {"role": "assistant", "content": example["completion"]}]}


def _check_jinja(recipe: Recipe, tokenizer) -> None:
    """The recipe's own template: Jinja that compiles, marked for answer-only loss when that is on."""
    from jinja2 import TemplateError, TemplateSyntaxError

    text, where = recipe.data.chat_template_jinja, recipe.locate(("data", "chat_template_jinja"))
    try:  # compiling comes first: a syntax error shows whatever is rendered
        tokenizer.apply_chat_template(list(PROBE), chat_template=text, tokenize=False)
    except TemplateSyntaxError as e:
        raise DataError(f"chat_template_jinja is not a Jinja template (its line {e.lineno}): {e.message}",
                        "fix the template, or name one with data.chat_template (e.g. chatml)",
                        where=where, path="$.data.chat_template_jinja") from e
    except TemplateError:
        pass  # the template refuses this conversation (raise_exception): the data's own decide
    if sft_flags(recipe)["assistant_only_loss"] and not templates.marks_answers(text):
        raise DataError("answer-only loss is on, but chat_template_jinja does not mark assistant turns "
                        "({% generation %})",
                        "wrap each assistant turn's text and end-of-turn marker in {% generation %}...{% "
                        "endgeneration %}, or set data.completion_only_loss: false",
                        where=where, path="$.data.chat_template_jinja")
