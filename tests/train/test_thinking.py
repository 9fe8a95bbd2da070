"""A conversation turn's reasoning (data.datasets[].fields.thinking, template_thinking_key): read from
the data's key, handed to the chat template under its own, rendered and trained as the answer is."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import DataError
from recipecli.read.load import load_recipe
from recipecli.train import data

from ..conftest import RECIPES

TINY = RECIPES / "models" / "tiny-llama"
WHY = "seven has no divisor but one and itself"
# gpt-oss reads message.thinking; the answer, reasoning included, is marked for answer-only loss.
READS_THINKING = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}{% if m['role'] == 'assistant' %}{% generation %}"
    "{% if m.thinking is defined %}{{ '<think>' + m.thinking + '</think>' }}{% endif %}"
    "{{ m['content'] + eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
# Qwen3 and DeepSeek-R1 read message.reasoning_content.
READS_REASONING_CONTENT = READS_THINKING.replace("m.thinking", "m.reasoning_content")


def _conversation(**reasoning) -> dict:
    return {"messages": [{"role": "user", "content": "Is 7 prime?"},
                         {"role": "assistant", "content": "Yes.", **reasoning}]}


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


@pytest.fixture
def thinking(make_recipe, tmp_path):
    """A recipe on the given records (one a line of t.jsonl), the dataset's extra keys, the data section's."""

    def make(records: list, template: str = READS_THINKING, **dataset):
        path = tmp_path / "t.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return load_recipe(make_recipe({"model": {"id": str(TINY)}, "method": "lora", "quantization": None,
                                        "data": {"chat_template": "jinja", "chat_template_jinja": template,
                                                 "datasets": [{"path": str(path), "format": "chat", **dataset}]}}))

    return make


def _trained_text(prepared, tokenizer) -> str:
    return tokenizer.decode([t for t in prepared.tokens.labels if t != data.IGNORED])


def test_a_turn_s_reasoning_is_rendered_where_the_template_reads_it_and_trained(thinking, tokenizer):
    r = thinking([_conversation(thinking=WHY)], fields={"thinking": "thinking"}, template_thinking_key="thinking")
    (example,) = data.read_examples(r, tokenizer)
    assert example.columns["messages"][1] == {"role": "assistant", "content": "Yes.", "thinking": WHY}
    (prepared,), _ = data.prepare(r, tokenizer)
    assert WHY in tokenizer.decode(prepared.tokens.input_ids)
    trained = _trained_text(prepared, tokenizer)
    assert WHY in trained and "Yes." in trained and "Is 7 prime?" not in trained  # the answer's part, not the prompt's


def test_without_fields_thinking_the_reasoning_is_not_read(thinking, tokenizer):
    r = thinking([_conversation(thinking=WHY)])
    (example,) = data.read_examples(r, tokenizer)
    assert example.columns["messages"][1] == {"role": "assistant", "content": "Yes."}
    (prepared,), _ = data.prepare(r, tokenizer)
    assert WHY not in tokenizer.decode(prepared.tokens.input_ids)


def test_the_template_key_defaults_to_reasoning_content(thinking, tokenizer):
    """The data's key need not be the template's: Multilingual-Thinking's thinking, Qwen3's reasoning_content."""
    r = thinking([_conversation(thought=WHY)], READS_REASONING_CONTENT, fields={"thinking": "thought"})
    (prepared,), _ = data.prepare(r, tokenizer)
    assert prepared.example.columns["messages"][1] == {"role": "assistant", "content": "Yes.", "reasoning_content": WHY}
    assert WHY in _trained_text(prepared, tokenizer)


def test_a_turn_without_reasoning_has_none_and_an_empty_one_is_kept_as_written(thinking, tokenizer):
    records = [_conversation(), _conversation(thinking=None), _conversation(thinking="")]
    r = thinking(records, fields={"thinking": "thinking"}, template_thinking_key="thinking")
    turns = [e.columns["messages"][1] for e in data.read_examples(r, tokenizer)]
    assert turns == [{"role": "assistant", "content": "Yes."}] * 2 + [
        {"role": "assistant", "content": "Yes.", "thinking": ""}]
    train, _ = data.prepare(r, tokenizer)
    rendered = sorted(tokenizer.decode(p.tokens.input_ids) for p in train)
    assert ["<think></think>" in text for text in rendered].count(True) == 1


@pytest.mark.parametrize("value, got", [(7, "a number 7"), (["step one", "step two"], 'a list ["step one"'),
                                        ({"text": "x"}, "an object")])
def test_reasoning_that_is_not_text_is_located_at_its_record_and_turn(thinking, tokenizer, value, got):
    records = [_conversation(thinking=WHY), _conversation(thinking=value)]
    r = thinking(records, fields={"thinking": "thinking"}, template_thinking_key="thinking")
    with pytest.raises(DataError) as error:
        data.read_examples(r, tokenizer)
    first = str(error.value).splitlines()[0]
    line = json.dumps(records[1])
    column = line.index('"thinking": ') + len('"thinking": ') + 1  # at the value
    assert first.startswith(f"{r.data.datasets[0].path}:2:{column}: $.messages[1].thinking: must be a string"), first
    assert got in first


@pytest.mark.parametrize("template_section", [
    {"chat_template": "chatml", "chat_template_jinja": None},  # recipe's named templates read role and content
    {"chat_template_jinja": READS_REASONING_CONTENT},  # another key than the recipe's
], ids=["named", "jinja"])
def test_reasoning_a_template_never_reads_is_refused_at_the_key(thinking, tokenizer, make_recipe, template_section):
    r = thinking([_conversation(thinking=WHY)], fields={"thinking": "thinking"}, template_thinking_key="thinking")
    path = make_recipe({"model": {"id": str(TINY)}, "method": "lora", "quantization": None, "data": {
        "chat_template": "jinja", **template_section,
        "datasets": [{"path": r.data.datasets[0].path, "format": "chat", "fields": {"thinking": "thinking"},
                      "template_thinking_key": "thinking"}]}}, name="other.yaml")
    with pytest.raises(DataError, match="never reads 'thinking': the reasoning in fields.thinking") as error:
        data.prepare(load_recipe(path), tokenizer)
    assert error.value.path == "$.data.datasets[0].template_thinking_key"
    assert error.value.where.file == str(path) and error.value.where.line > 1


def test_recipe_data_shows_the_reasoning_it_trains(thinking, offline):
    r = thinking([_conversation(thinking=WHY)], fields={"thinking": "thinking"}, template_thinking_key="thinking")
    shown = CliRunner().invoke(main, ["data", str(r.source), "--show", "1"])
    assert shown.exit_code == 0, shown.output
    assert WHY in shown.output
