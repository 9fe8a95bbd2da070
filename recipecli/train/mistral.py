"""model.tokenizer_backend mistral_common: Mistral's own tokenizer (mistral-common, tekken.json),
through transformers' MistralCommonBackend, and the answer-only masks of what it encodes.

mistral-common encodes a conversation in Mistral's instruct format in code, not with a Jinja
template: there is no ``{% generation %}`` to mark the answers, and transformers' assistant mask
comes back empty without a word. The masks are read off the encoding itself: assistant turn k's
tokens are those the conversation through it adds to the conversation before it. That is exact
where both encodings are prefixes of the whole conversation's, which is checked for every
conversation: tokenizer versions before v7 write the system prompt into the last user turn, and
consecutive turns of one role are joined, so there the earlier turns encode otherwise once later
ones follow; such a record is refused, as is one that opens with an answer.

Only `recipe run`, `recipe data`, `merge` and `generate` (train/) import this, and mistral-common
only with this backend.
"""
from __future__ import annotations

from .data import IGNORED, Tokens

# mistral-common's validation mode: "finetuning" refuses a conversation that does not end with an
# answer (a prompt to generate from, a conversation before an answer), "test" one that does; only
# "agnostic" checks every turn without a rule on the last one.
MODE = "agnostic"


class Unmaskable(ValueError):
    """A conversation whose answers' tokens cannot be told apart (see the module's docstring)."""

    def __init__(self, turn: int, why: str):
        super().__init__(f"answer {turn}: {why}")
        self.turn, self.why = turn, why


MOVES = ("mistral-common encodes the turns up to it otherwise once later turns follow (its tokenizers before v7 "
         "write the system prompt into the last user turn; it joins consecutive turns of one role)")
OPENS = "it opens the conversation, so no encoding of the turns before it tells where it starts"


def tokenize_many(batch: list[dict], tokenizer, *, answer_only: bool, chat_template=None) -> list[Tokens]:
    """data.tokenize_many for conversations (``{"messages": [...]}``) and mistral-common's tokenizer.

    Args:
        batch: the examples' columns.
        tokenizer: a MistralCommonBackend (model.load_tokenizer).
        answer_only: train each assistant turn (its text and the </s> after it) alone.
        chat_template: always None: rules.py refuses a template with this tokenizer.

    Raises:
        Unmaskable: with answer_only, an encoding of the turns before an answer that is not where
            the whole conversation's starts.
        mistral_common.exceptions.MistralCommonException: a conversation mistral-common refuses.
    """
    tokens = []
    for columns in batch:
        messages = columns["messages"]
        answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"] if answer_only else []
        if answers and answers[0] == 0:  # mistral-common encodes no empty conversation
            raise Unmaskable(0, OPENS)
        # One call: the whole conversation, then for each answer the turns before it and through it.
        whole, *spans = tokenizer.apply_chat_template(
            [messages, *(messages[:end] for k in answers for end in (k, k + 1))], tokenize=True, return_dict=False)
        labels = [IGNORED] * len(whole) if answer_only else list(whole)
        for k, before, through in zip(answers, spans[::2], spans[1::2]):
            if through[:len(before)] != before or whole[:len(through)] != through:
                raise Unmaskable(k, MOVES)
            labels[len(before):len(through)] = whole[len(before):len(through)]
        tokens.append(Tokens(list(whole), labels, len(whole)))
    return tokens


def refusals() -> tuple:
    """The errors by which tokenize_many refuses one conversation."""
    from mistral_common.exceptions import MistralCommonException

    return Unmaskable, MistralCommonException


def refusal(error: Exception) -> tuple[str, str]:
    """What to say of a conversation tokenize_many refused: (message, hint)."""
    if isinstance(error, Unmaskable):
        return (f"answer-only loss cannot tell which tokens are turn {error.turn}'s: {error.why}",
                "set data.completion_only_loss: false" + (", or leave the system turn out (drop_system: true)"
                                                          if error.why == MOVES else ", or drop the opening turn"))
    return (f"mistral-common refuses this conversation: {error}",
            "drop or mend the record: turns alternate user and assistant, after an optional system turn")
