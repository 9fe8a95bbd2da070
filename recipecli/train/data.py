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
=================  ===================  =========================================================

A mix of prompt/completion and conversational datasets becomes conversational (the prompt is
the user turn, the completion the assistant turn); plain text mixes with neither.
"""
from __future__ import annotations

import itertools
import random

from ..errors import DataError
from ..read.recipe import Format, Recipe
from . import datafiles

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"

_LAYOUT: dict[str, str] = {
    "alpaca": "prompt_completion",
    "prompt_completion": "prompt_completion",
    "chat": "messages",
    "sharegpt": "messages",
    "text": "text",
}
_CHAT_ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant"}


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The fixed prompt an alpaca record is trained (and should be queried) with.

    Args:
        instruction: the task.
        input: optional context; empty leaves the Input section out.

    Returns:
        The prompt, ending where the response starts.
    """
    if input:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT.format(instruction=instruction)


def layout(recipe: Recipe) -> str:
    """Columns the recipe's mix becomes: ``prompt_completion``, ``messages`` or ``text``.

    Raises:
        DataError: plain text mixed with datasets that have prompts or roles.
    """
    layouts = {_LAYOUT[d.format] for d in recipe.data.datasets}
    if "text" in layouts and len(layouts) > 1:
        text = next(d.path for d in recipe.data.datasets if d.format == "text")
        other = next(d.path for d in recipe.data.datasets if d.format != "text")
        raise DataError(
            f"{text} (format text) cannot be mixed with {other}: plain text has no prompt or roles to line up "
            "with. Hint: train them in separate recipes, or convert the text data to prompt_completion."
        )
    return "messages" if "messages" in layouts else layouts.pop()


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

    columns = layout(recipe)
    if columns == "messages" and tokenizer is not None:
        _check_chat_template(recipe, tokenizer)
    examples = []
    for spec in recipe.data.datasets:
        where = datafiles.where(spec)
        before = len(examples)
        for record_no, record in itertools.islice(datafiles.records(spec), spec.max_samples):
            example = _convert(spec.format, record, f"{where}{record_no}")
            examples.append(_as_messages(example) if columns == "messages" and "prompt" in example else example)
        if len(examples) == before:
            raise DataError(f"{datafiles.display(spec)} has no records. "
                            "Hint: check the file, or the split and subset of a hub dataset.")
    # The order of a mix is part of the run: it follows the recipe's seed, nothing else.
    random.Random(recipe.training.seed).shuffle(examples)
    if recipe.data.val_fraction is None:
        return HFDataset.from_list(examples), None
    n_eval = max(1, round(len(examples) * recipe.data.val_fraction))
    if n_eval >= len(examples):
        raise DataError(
            f"data.val_fraction {recipe.data.val_fraction} of {len(examples)} examples leaves nothing to train on. "
            "Hint: lower val_fraction or add data."
        )
    return HFDataset.from_list(examples[n_eval:]), HFDataset.from_list(examples[:n_eval])


def _check_chat_template(recipe: Recipe, tokenizer) -> None:
    """Refuse a chat template that TRL cannot train conversational data with.

    Answer-only loss on conversations needs ``{% generation %}`` markers in the template; TRL
    patches a known list of templates and raises in SFTTrainer's constructor for any other one.
    The same check, with TRL's own helpers, here: before the model loads, naming the knob.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    conversational = next(d.path for d in recipe.data.datasets if _LAYOUT[d.format] == "messages")
    if not tokenizer.chat_template:
        raise DataError(
            f"{conversational} is conversational, but the tokenizer of {recipe.model.id} has no chat template. "
            "Hint: use a chat/instruct variant of the model, or data in format alpaca or prompt_completion."
        )
    if not sft_flags(recipe)["assistant_only_loss"] or has_generation_markers(tokenizer.chat_template):
        return
    try:
        get_training_chat_template(tokenizer)
    except ValueError as e:  # TRL has no training version of this template
        raise DataError(
            f"{conversational} is conversational and data.completion_only_loss is true, but the chat template "
            f"of {recipe.model.id} does not mark assistant turns ({{% generation %}}) and TRL cannot patch it. "
            "Hint: set data.completion_only_loss: false, or use a tokenizer whose chat template marks "
            "assistant turns."
        ) from e


def _convert(format: Format, record: object, where: str) -> dict:
    """One raw record to TRL columns; ``where`` names it in errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(record).__name__}.")
    if format == "alpaca":
        instruction = _text(record, "instruction", where)
        output = _text(record, "output", where)
        context = _text(record, "input", where, required=False)
        return {"prompt": alpaca_prompt(instruction, context), "completion": output}
    if format == "prompt_completion":
        return {"prompt": _text(record, "prompt", where), "completion": _text(record, "completion", where)}
    if format == "text":
        return {"text": _text(record, "text", where)}
    field, turn = ("messages", _chat_turn) if format == "chat" else ("conversations", _sharegpt_turn)
    turns = record.get(field)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of turns, got {turns!r:.60}.")
    messages = [turn(t, f"{where}: {field}[{i}]") for i, t in enumerate(turns)]
    # Nothing to learn from a conversation without an answer, and TRL stops on it mid-epoch.
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field '{field}' has no assistant turn. Hint: drop the record.")
    return {"messages": messages}


def _text(record: dict, field: str, where: str, required: bool = True) -> str:
    value = record.get(field)
    if value is None and not required:
        return ""
    if value is None:
        present = ", ".join(sorted(map(str, record))) or "none"
        raise DataError(f"{where}: field '{field}' is missing (fields present: {present}). "
                        "Hint: check the dataset's format in the recipe.")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__} {value!r:.40}. "
                        "Hint: quote it in the file.")
    return value


def _chat_turn(turn: object, where: str) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"{where}: expected {{role, content}}, got {turn!r:.60}.")
    role = _text(turn, "role", where)
    if role not in _CHAT_ROLES:
        raise DataError(f"{where}: field 'role' is {role!r}; expected one of {', '.join(_CHAT_ROLES)}.")
    return {"role": role, "content": _text(turn, "content", where)}


def _sharegpt_turn(turn: object, where: str) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"{where}: expected {{from, value}}, got {turn!r:.60}.")
    speaker = _text(turn, "from", where)
    if speaker not in _SHAREGPT_ROLES:
        raise DataError(f"{where}: field 'from' is {speaker!r}; "
                        f"expected one of {', '.join(_SHAREGPT_ROLES)}.")
    return {"role": _SHAREGPT_ROLES[speaker], "content": _text(turn, "value", where)}


def _as_messages(example: dict) -> dict:
    return {"messages": [{"role": "user", "content": example["prompt"]},
                         {"role": "assistant", "content": example["completion"]}]}
