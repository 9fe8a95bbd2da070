"""model.tokenizer_backend mistral_common end to end on the CPU: a tiny tekken tokenizer written
here (the 256 bytes, a few merges, Mistral's control tokens), a tiny Llama sized to it, trained by
the real stack through transformers' MistralCommonBackend. The trained tokens are checked against
mistral-common's own pieces: each answer's text encoded alone, then </s>, after [/INST]."""
from __future__ import annotations

import base64
import json
import re

import pytest
import yaml

from recipecli.errors import DataError
from recipecli.read.load import load_recipe
from recipecli.train import after, data, datastats, runfolder
from recipecli.train.data import IGNORED
from recipecli.train.model import load_tokenizer
from recipecli.train.runner import run

pytest.importorskip("mistral_common")  # the `mistral` extra

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache

# Tekken's pre-tokenizer pattern, as Mistral's tekken.json files give it.
PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
           r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
MERGES = [b"th", b"the", b" the", b"in", b"an", b"er"]

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say the word."},
     {"role": "assistant", "content": "the"}, {"role": "user", "content": "Again."},
     {"role": "assistant", "content": "the the"}],
    [{"role": "user", "content": "Name an answer."}, {"role": "assistant", "content": "An answer, then."}],
    [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "In there."},
     {"role": "user", "content": "And then?"}],  # ends with a question: nothing after the last answer trains
]


def write_tekken(folder, version: str = "v7"):
    """A tekken.json mistral-common reads: byte-level ranks 0-255, a few merges, its control tokens."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    vocab = [bytes([i]) for i in range(256)] + MERGES
    specials = [dict(t) for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    folder.mkdir(exist_ok=True)
    (folder / "tekken.json").write_text(json.dumps({
        "config": {"pattern": PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab) + len(specials),
                   "default_num_special_tokens": len(specials), "version": version},
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(b).decode(), "token_str": b.decode("utf-8", "replace")}
                  for i, b in enumerate(vocab)],
        "special_tokens": specials}))
    return folder


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    """A model folder as Mistral releases them: weights, config and tekken.json, no tokenizer.json."""
    from transformers import AutoTokenizer

    from recipecli.train import tiny

    folder = write_tekken(tmp_path_factory.mktemp("tiny-mistral"))
    tokenizer = AutoTokenizer.from_pretrained(folder, mistral_format=True)
    tiny.build_model(tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture
def mistral(make_recipe, tmp_path, tiny_mistral):
    """A lora recipe on the tiny model with mistral-common's tokenizer, conversations in tmp_path."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS * 4))

    def make(delta: dict | None = None, name: str = "recipe.yaml"):
        base = {"recipe_version": 1, "name": "mistral", "method": "lora", "lora": {"r": 4, "alpha": 8},
                "model": {"id": str(tiny_mistral), "tokenizer_backend": "mistral_common"},
                "data": {"datasets": [{"path": str(chats), "format": "chat"}], "max_seq_length": 256},
                "training": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1,
                             "save_steps": 100, "gradient_checkpointing": False},
                "output": {"dir": str(tmp_path / "run")}}
        return load_recipe(make_recipe(delta, name=name, base=base))

    return make


def _expected(messages: list[dict], folder) -> tuple[list[int], list[list[int]]]:
    """mistral-common's own encoding of a conversation, and each answer's trained tokens computed
    apart: its text encoded alone, then </s>."""
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tokenizer = MistralTokenizer.from_file(str(folder / "tekken.json"), mode=ValidationMode.agnostic)
    whole = tokenizer.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
    text = tokenizer.instruct_tokenizer.tokenizer
    answers = [text.encode(m["content"], bos=False, eos=False) + [text.eos_id] for m in messages
               if m["role"] == "assistant"]
    return whole, answers


def _trained_runs(tokens) -> list[tuple[int, list[int]]]:
    """(where it starts, its tokens) of each stretch of trained labels."""
    runs: list = []
    for i, label in enumerate(tokens.labels):
        if label == IGNORED:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == i:
            runs[-1][1].append(label)
        else:
            runs.append((i, [label]))
    return runs


def test_answer_only_loss_trains_each_answer_and_its_end_as_mistral_common_encodes_them(mistral, tiny_mistral):
    recipe = mistral()
    tokenizer = load_tokenizer(recipe)
    assert type(tokenizer).__name__ == "MistralCommonBackend"
    inst_end = tokenizer.convert_tokens_to_ids("[/INST]")
    train, _ = data.prepare(recipe, tokenizer)
    for prepared in train:
        messages = prepared.example.columns["messages"]
        whole, answers = _expected(messages, tiny_mistral)
        runs = _trained_runs(prepared.tokens)
        assert prepared.tokens.input_ids == whole
        assert [tokens for _, tokens in runs] == answers
        assert all(whole[start - 1] == inst_end for start, _ in runs)
    stats = datastats.collect(recipe, datastats.load_tokenizer(recipe), show=1)  # recipe data
    assert stats.mix.trained_tokens == sum(len(tokens) for p in train
                                           for tokens in _expected(p.example.columns["messages"], tiny_mistral)[1])
    assert not stats.warnings and stats.previews
    everything = data.prepare(mistral({"data": {"completion_only_loss": False}}, "all.yaml"), tokenizer)[0]
    assert all(p.tokens.labels == p.tokens.input_ids for p in everything)


def test_a_tokenizer_before_v7_that_moves_the_system_prompt_is_refused_at_the_record(mistral, tmp_path):
    recipe = mistral({"model": {"tokenizer": str(write_tekken(tmp_path / "v3", "v3"))}})
    with pytest.raises(DataError, match=r"chats.jsonl:\d+:1: .*turn 2's: mistral-common encodes the turns up to it") \
            as refused:
        data.prepare(recipe, load_tokenizer(recipe))
    assert "completion_only_loss: false" in str(refused.value)
    plain = mistral({"model": {"tokenizer": str(tmp_path / "v3")}, "data": {"completion_only_loss": False}}, "p.yaml")
    assert data.prepare(plain, load_tokenizer(plain))[0]


@pytest.mark.parametrize("turns, words", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}],
     "mistral-common refuses this conversation: Invalid assistant message"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
      {"role": "assistant", "content": "c"}], "answer-only loss cannot tell which tokens are turn 1's: mistral-common encodes the turns up to it"),
    ([{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi."},
      {"role": "assistant", "content": "the"}], "answer-only loss cannot tell which tokens are turn 0's: it opens the conversation"),
], ids=["refused-by-mistral-common", "two-answers-joined", "opening-answer"])
def test_a_conversation_that_cannot_train_is_located(mistral, tmp_path, turns, words):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": CONVERSATIONS[1]}) + "\n" +
                                        json.dumps({"messages": turns}) + "\n")
    recipe = mistral({"data": {"datasets": [{"path": str(tmp_path / "bad.jsonl"), "format": "chat"}]}})
    with pytest.raises(DataError, match=re.escape(f"bad.jsonl:2:1: $: {words}")):
        data.prepare(recipe, load_tokenizer(recipe))


def test_without_the_field_a_mistral_model_s_tekken_json_is_read_by_transformers_own_tokenizer(mistral, tmp_path):
    from transformers import MistralConfig

    folder = write_tekken(tmp_path / "mistral-like")
    # model_type mistral with a tekken.json: transformers itself would pick mistral-common where it is installed
    MistralConfig(vocab_size=282).save_pretrained(folder)
    recipe = mistral({"model": {"tokenizer_backend": None, "tokenizer": str(folder)}})
    assert type(load_tokenizer(recipe)).__name__ == "TokenizersBackend"


@pytest.mark.slow
def test_a_run_trains_the_answers_and_generate_and_merge_read_the_saved_tekken_json(mistral, tmp_path):
    alpaca = tmp_path / "qa.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Say the word.", "output": "the"}) + "\n")
    recipe = mistral({"data": {"datasets": [{"path": str(tmp_path / "chats.jsonl"), "format": "chat"},
                                            {"path": str(alpaca), "format": "alpaca"}]}})
    result = run(recipe, gpus=())
    assert result.steps == 3 and (result.saved / "tekken.json").is_file()
    expected = sum(len(tokens) for c in CONVERSATIONS * 4 for tokens in _expected(c, recipe.model.local_path)[1])
    expected += len(_expected([{"role": "user", "content": data.alpaca_prompt("Say the word.")},
                               {"role": "assistant", "content": "the"}], recipe.model.local_path)[1][0])
    record = yaml.safe_load((result.run_dir / runfolder.RUN).read_text())
    assert record["data"]["trained_tokens"] == expected
    assert isinstance(after.generate(result.run_dir, "Say the word.", 4, gpus=()), str)
    assert (after.merge(result.run_dir, gpus=()) / "tekken.json").is_file()


def test_token_ids_train_as_they_are_with_mistral_common_s_tokenizer(mistral, tmp_path):
    # ids are ids: mistral-common encodes conversations, and is not asked to encode these
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(json.dumps({"input_ids": [1, 40, 41, 2], "labels": [-100, 40, 41, 2]}) + "\n")
    recipe = mistral({"data": {"datasets": [{"path": str(tokens), "format": "tokenized"}]}})
    (prepared,), _ = data.prepare(recipe, load_tokenizer(recipe))
    assert (prepared.tokens.input_ids, prepared.tokens.labels) == ([1, 40, 41, 2], [-100, 40, 41, 2])
