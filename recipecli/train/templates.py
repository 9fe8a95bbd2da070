"""The named chat templates of ``data.chat_template``, as Jinja for ``apply_chat_template``.

Each is written from the model family's public prompt format, with two choices of its own:
the assistant's text and the end-of-turn marker after it sit inside ``{% generation %}``, so the
assistant mask (answer-only loss) covers exactly the answers and the marker that teaches the model
to stop; and mistral and gemma, whose formats have no system role, fold a system turn into the
next user turn (text, a blank line, then the user's text) instead of refusing the conversation.

A marker that is not a token of the model's tokenizer trains as several pieces; `recipe data`
warns of that (datastats.py) with ``END_OF_TURN``.
"""
from __future__ import annotations

import re

# Folding a system turn into the next user turn, for the formats without a system role.
_FOLD = ("{% set ns = namespace(system='') %}{% for message in messages %}"
         "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\\n\\n' %}")

TEMPLATES: dict[str, str] = {
    # ChatML (OpenAI; Qwen, Hermes): <|im_start|>role\ntext<|im_end|>\n
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    # Llama 3: <|start_header_id|>role<|end_header_id|>\n\ntext<|eot_id|>, after the BOS token.
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    # Mistral instruct: <s>[INST] question [/INST]answer</s>; the prompt ends at [/INST].
    "mistral": (
        "{{ bos_token }}" + _FOLD +
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
        "{% set ns.system = '' %}"
        "{% else %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{% endif %}{% endfor %}"),
    # Gemma (1, 2 and 3): <start_of_turn>user|model\ntext<end_of_turn>\n, after the BOS token, each
    # turn's text trimmed; Gemma 3 folds a system turn into the first user turn, as this does.
    "gemma": (
        "{{ bos_token }}" + _FOLD +
        "{% elif message['role'] == 'user' %}"
        "{{ '<start_of_turn>user\\n' + ns.system + (message['content'] | trim) + '<end_of_turn>\\n' }}"
        "{% set ns.system = '' %}"
        "{% else %}{{ '<start_of_turn>model\\n' }}"
        "{% generation %}{{ (message['content'] | trim) + '<end_of_turn>' }}{% endgeneration %}{{ '\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
    # Phi-3: <|role|>\ntext<|end|>\n
    "phi": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}{{ message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"),
}

# The marker each template closes an assistant turn with (None: the tokenizer's eos_token).
END_OF_TURN: dict[str, str | None] = {
    "chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": None, "gemma": "<end_of_turn>", "phi": "<|end|>",
}


def template(name: str) -> str:
    """The Jinja text of a named template (``data.chat_template`` other than ``tokenizer``)."""
    return TEMPLATES[name]


def end_of_turn(name: str, tokenizer) -> str:
    """The text a named template ends each assistant turn with, for this tokenizer."""
    return END_OF_TURN[name] or tokenizer.eos_token


# transformers' assistant masks come from {% generation %} blocks, whatever their whitespace trimming.
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def marks_answers(template) -> bool:
    """Whether a chat template marks the text that trains (``{% generation %}``), as answer-only loss
    needs; a template of named variants (a dict) is judged by its default one. Checked here rather
    than with TRL's helper so that conversations are prepared without importing TRL (and torch)."""
    if isinstance(template, dict):
        template = template.get("default") or ""
    return bool(template) and _GENERATION_TAG.search(template) is not None
