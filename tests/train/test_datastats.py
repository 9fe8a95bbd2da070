"""`recipe data`'s numbers, loss-mask preview and warnings, on the tiny model and its shipped data.

The preview is checked against TRL itself: a real SFTTrainer is built on the *untokenized*
examples (TRL's own preparation) and its collator's labels must mark exactly the tokens the
preview highlights; the trainer `recipe run` builds from the tokenized examples must collate the
same. Nothing of transformers, trl or datasets is mocked.
"""
from __future__ import annotations

import json
import struct
import zlib

import pytest

from recipecli.errors import DataError
from recipecli.read.load import load_recipe
from recipecli.train import data, datastats, lossplot, templates

from ..conftest import RECIPES, heavy_imports

DATA = RECIPES / "data"
TINY = RECIPES / "models" / "tiny-llama"
TEMPLATE = (TINY / "chat_template.jinja").read_text()

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY)


@pytest.fixture
def recipe(make_recipe):
    def make(*datasets, training=None, **data_section):
        # A dataset is (path, format), or (path, format, {fields, roles...}) for the data's own names.
        specs = [{"path": str(d[0]), "format": d[1], **(d[2] if len(d) > 2 else {})} for d in datasets]
        doc = {"model": {"id": str(TINY)}, "method": "lora", "quantization": None,
               "data": {"datasets": specs, **data_section}, "training": {"max_steps": 10, **(training or {})}}
        return load_recipe(make_recipe(doc))

    return make


def _trainer(recipe, model, tokenizer, train_set, flags, tmp_path):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                     per_device_train_batch_size=recipe.training.micro_batch_size, **flags)
    return SFTTrainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer)


MIXES = {
    "alpaca": [(DATA / "tiny-alpaca.jsonl", "alpaca")],
    "alpaca-csv": [(DATA / "tiny-alpaca.csv", "alpaca")],
    "prompt_completion": [(DATA / "tiny-prompt-completion.jsonl", "prompt_completion")],
    "chat": [(DATA / "tiny-chat.jsonl", "chat")],
    "sharegpt": [(DATA / "tiny-sharegpt.jsonl", "sharegpt")],
    "text": [(DATA / "tiny-text.jsonl", "text")],
    "alpaca+chat": [(DATA / "tiny-alpaca.jsonl", "alpaca"), (DATA / "tiny-chat.jsonl", "chat")],
}


@pytest.mark.parametrize("answer_only", [True, False], ids=["answer-only", "whole"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_the_preview_marks_exactly_the_tokens_the_collator_trains(recipe, model, tokenizer, tmp_path, mix,
                                                                  answer_only):
    """At max_seq_length 24 some records are cut and some lose every trained token: TRL drops
    those, and so must the statistics."""
    r = recipe(*MIXES[mix], max_seq_length=24, completion_only_loss=answer_only)
    raw, _ = data.load_examples(r, tokenizer)
    native = _trainer(r, model, tokenizer, raw, data.sft_flags(r), tmp_path)  # TRL tokenizes
    train, evals = data.prepare(r, tokenizer)
    ours = _trainer(r, model, tokenizer, data.datasets(r, train, evals)[0], data.trainer_flags(r), tmp_path)
    kept = [p for p in train if not p.dropped]
    assert len(native.train_dataset) == len(kept) == len(ours.train_dataset)
    stats = datastats.summarize(r, tokenizer, train, evals, show=len(kept))
    for i, (prepared, (where, segments)) in enumerate(zip(kept, stats.previews)):
        expected = native.data_collator([native.train_dataset[i]])
        collated = ours.data_collator([ours.train_dataset[i]])
        ids, labels = expected["input_ids"][0].tolist(), expected["labels"][0].tolist()
        assert collated["input_ids"][0].tolist() == ids and collated["labels"][0].tolist() == labels
        assert prepared.tokens.input_ids == ids and prepared.tokens.labels == labels
        trained = [t for t, label in zip(ids, labels) if label != -100]
        assert "".join(text for text, on in segments if on) == tokenizer.decode(trained)
        assert "".join(text for text, _ in segments) == tokenizer.decode(ids)
    if answer_only and mix != "text":
        assert 0 < stats.mix.trained_tokens < stats.mix.kept_tokens
    else:
        assert stats.mix.trained_tokens == stats.mix.kept_tokens


@pytest.mark.parametrize("mix", ["alpaca", "chat", "text"])
def test_packed_sequences_are_what_the_trainer_packs(recipe, model, tokenizer, tmp_path, mix):
    r = recipe(*MIXES[mix], max_seq_length=64, packing=True,
               training={"micro_batch_size": 4, "gradient_accumulation_steps": 1})
    raw, _ = data.load_examples(r, tokenizer)
    native = _trainer(r, model, tokenizer, raw, data.sft_flags(r), tmp_path)
    train, evals = data.prepare(r, tokenizer)
    ours = _trainer(r, model, tokenizer, data.datasets(r, train, evals)[0], data.trainer_flags(r), tmp_path)
    assert native.train_dataset[:]["labels"] == ours.train_dataset[:]["labels"]
    stats = datastats.summarize(r, tokenizer, train, evals)
    assert stats.sequences == len(native.train_dataset)
    packed_tokens = sum(len(ids) for ids in native.train_dataset[:]["input_ids"])
    assert stats.fill_ratio == pytest.approx(packed_tokens / (stats.sequences * 64))
    assert stats.padding_share is None and stats.padding_avoided > 0
    assert stats.steps_per_epoch == -(-stats.sequences // 4)


@pytest.mark.parametrize("mix", ["alpaca", "text"])
def test_a_recipe_s_eos_token_ends_what_trains_as_in_trl(recipe, model, tmp_path, mix):
    from transformers import AutoTokenizer

    from recipecli.train.tiny import TURN

    tokenizer = AutoTokenizer.from_pretrained(TINY)  # prepare() sets the recipe's tokens on it
    r = recipe(*MIXES[mix], max_seq_length=512, special_tokens={"eos_token": TURN})
    train, evals = data.prepare(r, tokenizer)
    assert tokenizer.eos_token == TURN
    native = _trainer(r, model, tokenizer, data.load_examples(r, tokenizer)[0], data.sft_flags(r), tmp_path)
    ids = native.train_dataset[:]["input_ids"]
    assert [p.tokens.input_ids for p in train] == ids
    assert {row[-1] for row in ids} == {tokenizer.convert_tokens_to_ids(TURN)}


def test_counts_follow_the_tokenizer(recipe, tokenizer, tmp_path):
    """Lengths, truncation, lost tokens and duplicates, computed here from the tokenizer alone."""
    texts = [json.loads(line)["text"] for line in (DATA / "tiny-text.jsonl").read_text().splitlines()]
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + texts[:3]))
    r = recipe((doubled, "text"), max_seq_length=30, val_fraction=0.25,
               training={"micro_batch_size": 4, "gradient_accumulation_steps": 3})
    stats = datastats.collect(r, tokenizer)
    lengths = sorted(len(tokenizer(text=t + tokenizer.eos_token)["input_ids"]) for t in texts + texts[:3])
    mix = stats.mix
    assert (mix.records, mix.tokens, mix.duplicates) == (len(lengths), sum(lengths), 3)
    assert mix.lengths["min"] == lengths[0] and mix.lengths["max"] == lengths[-1]
    assert mix.lengths["median"] == lengths[(len(lengths) + 1) // 2 - 1]
    assert mix.truncated == sum(n > 30 for n in lengths) > 0
    assert mix.lost_tokens == sum(n - 30 for n in lengths if n > 30)
    assert mix.kept_tokens == mix.trained_tokens == sum(min(n, 30) for n in lengths)
    assert stats.eval_records == round(len(lengths) * 0.25) and stats.train_records == len(lengths) - stats.eval_records
    assert stats.steps_per_epoch == -(-(-(-stats.train_records // 4)) // 3)
    assert stats.datasets[0].fingerprint.startswith("sha256:") and stats.mix.fingerprint is None
    assert 0 < stats.padding_share < 1
    # two DDP processes share the sequences: each runs half the micro-batches
    from dataclasses import replace

    from recipecli.read.recipe import Distributed

    two = replace(r, distributed=Distributed("ddp", 2, 1, None, 29500, None, None, None))
    assert datastats.collect(two, tokenizer).steps_per_epoch == -(-(-(-(-(-stats.train_records // 2)) // 4)) // 3)


def test_a_mix_is_counted_per_dataset_and_in_total(recipe, tokenizer):
    stats = datastats.collect(recipe(*MIXES["alpaca+chat"]), tokenizer)
    assert [p.format for p in stats.datasets] == ["alpaca", "chat"]
    assert [p.records for p in stats.datasets] == [256, 256] and stats.mix.records == 512
    assert stats.mix.tokens == sum(p.tokens for p in stats.datasets)
    assert stats.mix.trained_tokens == sum(p.trained_tokens for p in stats.datasets)


def test_the_demo_data_warns_of_nothing(recipe, tokenizer):
    for mix in MIXES.values():
        assert datastats.collect(recipe(*mix), tokenizer).warnings == [], mix


def _messages(stats):
    return [w.message for w in stats.warnings]


def test_more_than_5_percent_truncated_is_a_warning_at_max_seq_length(recipe, tokenizer):
    stats = datastats.collect(recipe(*MIXES["alpaca"], max_seq_length=28), tokenizer)
    (warning,) = [w for w in stats.warnings if "longer than max_seq_length" in w.message]
    assert warning.path == "$.data.max_seq_length" and warning.where.line > 0
    assert f"{stats.mix.truncated} of 256 records" in warning.message and "p99 is" in warning.hint


def test_records_left_without_trained_tokens_are_dropped_with_a_located_warning(recipe, tokenizer):
    stats = datastats.collect(recipe(*MIXES["alpaca"], max_seq_length=16), tokenizer)
    (warning,) = [w for w in stats.warnings if "no trained token" in w.message]
    assert warning.where.file.endswith("data/tiny-alpaca.jsonl") and warning.where.line > 0
    assert stats.mix.dropped == {"nothing trained is left within max_seq_length": 256 - stats.train_records}
    assert stats.train_records < 256


def _with_template(tokenizer, template: str):
    import copy

    changed = copy.deepcopy(tokenizer)
    changed.chat_template = template
    return changed


def test_a_template_that_renders_earlier_turns_differently_is_a_warning(recipe, tokenizer, tmp_path):
    """The Qwen3 pattern: earlier assistant turns are rendered otherwise than the last one."""
    chat = tmp_path / "turns.jsonl"
    turns = [{"role": "user", "content": "Add the numbers.\n1 + 1"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "Add the numbers.\n2 + 2"}, {"role": "assistant", "content": "4"}]
    chat.write_text(json.dumps({"messages": turns}) + "\n")
    drifting = TEMPLATE.replace("{% generation %}{{ message['content'] }}",
                                "{% generation %}{% if loop.last %}{{ message['content'] }}{% endif %}")
    stats = datastats.collect(recipe((chat, "chat")), _with_template(tokenizer, drifting))
    (warning,) = [w for w in stats.warnings if "turn by turn" in w.message]
    assert (warning.where.file, warning.where.line, warning.path) == (str(chat), 1, "$.messages[1]")
    assert datastats.collect(recipe((chat, "chat")), tokenizer).warnings == []


def test_a_template_with_no_end_of_turn_token_after_answers_is_a_warning(recipe, tokenizer):
    silent = TEMPLATE.replace("{{ message['content'] }}<|im_end|>{% endgeneration %}",
                              "{{ message['content'] }}{% endgeneration %}")
    assert silent != TEMPLATE
    stats = datastats.collect(recipe(*MIXES["chat"]), _with_template(tokenizer, silent))
    (warning,) = [w for w in stats.warnings if "no end-of-turn token" in w.message]
    assert warning.path == "$.model.id"


def test_an_end_of_turn_token_outside_the_loss_is_a_warning(recipe, tokenizer):
    untrained = TEMPLATE.replace("<|im_end|>{% endgeneration %}", "{% endgeneration %}<|im_end|>")
    assert untrained != TEMPLATE
    stats = datastats.collect(recipe(*MIXES["chat"]), _with_template(tokenizer, untrained))
    assert any("leaves it out of the loss" in m for m in _messages(stats))
    whole = datastats.collect(recipe(*MIXES["chat"], completion_only_loss=False), _with_template(tokenizer, untrained))
    assert not any("out of the loss" in m for m in _messages(whole))  # every token trains then


def test_a_prompt_whose_last_token_merges_with_the_completion_is_a_warning(recipe, tokenizer, tmp_path):
    cut = tmp_path / "cut.jsonl"
    cut.write_text(json.dumps({"prompt": "Reverse the words.\nred gre", "completion": "en blue"}) + "\n")
    prepared = data.tokenize({"prompt": "Reverse the words.\nred gre", "completion": "en blue"}, tokenizer,
                             answer_only=True)
    assert prepared.prompt_merged  # the tiny tokenizer has one token for "green"
    stats = datastats.collect(recipe((cut, "prompt_completion")), tokenizer)
    (warning,) = [w for w in stats.warnings if "merges" in w.message]
    assert (warning.where.file, warning.where.line) == (str(cut), 1)


def test_the_plot_is_a_png_with_the_cut_off_marked(recipe, tokenizer, tmp_path):
    stats = datastats.collect(recipe(*MIXES["alpaca"], max_seq_length=30), tokenizer)
    png = tmp_path / "lengths.png"
    datastats.plot(png, stats)
    raw = png.read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", raw[16:24])
    idat = raw.index(b"IDAT")
    rows = zlib.decompress(raw[idat + 4:idat + 4 + struct.unpack(">I", raw[idat - 4:idat])[0]])
    pixels = [rows[y * (width + 1) + 1:(y + 1) * (width + 1)] for y in range(height)]
    cut_columns = {x for x in range(width) if pixels[lossplot.BOTTOM - 20][x] == lossplot.EVAL}
    bars = {x for x in range(width) if pixels[lossplot.BOTTOM - 2][x] == lossplot.TRAIN}
    assert cut_columns and bars
    # Records longer than the cut-off draw bars right of it, since this cut truncates some.
    assert stats.mix.truncated and max(bars) > min(cut_columns) > min(bars)


def test_the_tokenizer_of_recipe_data_is_the_one_recipe_run_loads(recipe, tokenizer):
    """Loaded without AutoTokenizer (and torch) for the tiny model: same class, same examples."""
    for mix in ("alpaca", "chat"):
        r = recipe(*MIXES[mix])
        light = datastats.load_tokenizer(r)
        assert type(light) is type(tokenizer)
        ours, theirs = data.prepare(r, light)[0], data.prepare(r, tokenizer)[0]
        assert [p.tokens for p in ours] == [p.tokens for p in theirs]


@pytest.mark.parametrize("delta", [[], ["--set", f"data.datasets=[{{path: {DATA / 'tiny-chat.jsonl'}, format: chat}}]"],
                                   ["--set", f"data.datasets=[{{path: {DATA / 'tiny-chat.jsonl'}, format: chat}}]",
                                    "--set", "data.chat_template=chatml"]], ids=["alpaca", "chat", "named-template"])
def test_recipe_data_imports_no_torch(delta):
    # Conversations too: a template that marks its answers needs no TRL to check (templates.marks_answers).
    assert not {"torch", "trl", "datasets", "peft"} & set(heavy_imports(["data", "recipes/tiny-demo.yaml", "--show", "1",
                                                                         *delta]))


def test_recipe_data_loads_model_tokenizer_s_folder_without_torch(tokenizer_elsewhere):
    weights, tokenizer = tokenizer_elsewhere  # the weights' folder has no tokenizer: exit 0 means it read the other
    assert not {"torch", "trl", "datasets", "peft"} & set(heavy_imports(
        ["data", "recipes/tiny-demo.yaml", "--set", f"model.id={weights}", "--set", f"model.tokenizer={tokenizer}"]))


def test_marked_templates_are_found_as_trl_finds_them():
    from trl.chat_template_utils import has_generation_markers

    for template in [*templates.TEMPLATES.values(), TEMPLATE, "{% for m in messages %}{{ m }}{% endfor %}",
                     "{%- generation -%}x{%- endgeneration -%}", "{%generation%}x{%endgeneration%}", ""]:
        assert templates.marks_answers(template) == (bool(template) and has_generation_markers(template)), template
    assert templates.marks_answers({"default": TEMPLATE, "tool_use": ""}) and not templates.marks_answers(None)


# issue 10: datasets that name their fields and roles their own way, and the named chat templates.
CHAT_NAMES = {"fields": {"messages": "dialog", "role": "speaker", "content": "text"},
              "roles": {"user": ["customer"], "assistant": ["agent"]}}
ALPACA_NAMES = {"fields": {"instruction": "question", "input": "context", "output": "answer"}}


def _renamed(tmp_path, source, keys: dict, roles: dict = {}):
    """The shipped file with its keys (at any depth) and role names renamed, as another tool writes it."""
    def rename(value):
        if isinstance(value, dict):
            return {keys.get(k, k): roles.get(v, v) if k == "role" else rename(v) for k, v in value.items()}
        return [rename(v) for v in value] if isinstance(value, list) else value

    out = tmp_path / f"renamed-{source.name}"
    out.write_text("".join(json.dumps(rename(json.loads(line))) + "\n" for line in source.read_text().splitlines()))
    return out


@pytest.fixture
def renamed(tmp_path):
    return {
        "chat": (_renamed(tmp_path, DATA / "tiny-chat.jsonl", {"messages": "dialog", "role": "speaker",
                                                                "content": "text"},
                          {"user": "customer", "assistant": "agent"}), "chat", CHAT_NAMES),
        "alpaca": (_renamed(tmp_path, DATA / "tiny-alpaca.jsonl", {"instruction": "question", "input": "context",
                                                                     "output": "answer"}), "alpaca", ALPACA_NAMES),
    }


def _same_as_trl(r, model, tokenizer, tmp_path, native_tokenizer=None):
    """The examples `recipe run` trains are what TRL's SFTTrainer makes of the same records, label by label."""
    native_tokenizer = native_tokenizer or tokenizer
    raw, _ = data.load_examples(r, native_tokenizer)
    native = _trainer(r, model, native_tokenizer, raw, data.sft_flags(r), tmp_path)
    train, evals = data.prepare(r, tokenizer)
    kept = [p for p in train if not p.dropped]
    assert len(native.train_dataset) == len(kept)
    stats = datastats.summarize(r, tokenizer, train, evals, show=len(kept))
    for i, (prepared, (_, segments)) in enumerate(zip(kept, stats.previews)):
        expected = native.data_collator([native.train_dataset[i]])
        ids, labels = expected["input_ids"][0].tolist(), expected["labels"][0].tolist()
        assert prepared.tokens.input_ids == ids and prepared.tokens.labels == labels
        assert "".join(text for text, on in segments if on) == tokenizer.decode(
            [t for t, label in zip(ids, labels) if label != -100])
    return train, stats


@pytest.mark.parametrize("kind", ["chat", "alpaca"])
def test_renamed_fields_and_roles_train_as_the_shipped_data_and_as_trl_does(recipe, model, tokenizer, tmp_path,
                                                                            renamed, kind):
    r = recipe(renamed[kind], max_seq_length=48)
    train, stats = _same_as_trl(r, model, tokenizer, tmp_path)
    shipped, _ = data.prepare(recipe(MIXES[kind][0], max_seq_length=48), tokenizer)
    assert [p.tokens for p in train] == [p.tokens for p in shipped]  # the same examples, read by other names
    assert 0 < stats.mix.trained_tokens < stats.mix.kept_tokens and stats.warnings == []


def _conversation():
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add the numbers.\n1 + 1"},
            {"role": "assistant", "content": "2"}, {"role": "user", "content": "And 2 + 2?"},
            {"role": "assistant", "content": "It is 4."}]


@pytest.mark.parametrize("name", sorted(templates.TEMPLATES))
def test_a_named_template_trains_exactly_the_answers_and_their_end_of_turn(recipe, tokenizer, tmp_path, name):
    chat = tmp_path / "turns.jsonl"
    chat.write_text(json.dumps({"messages": _conversation()}) + "\n")
    r = recipe((chat, "chat"), chat_template=name)
    ((prepared,), _) = data.prepare(r, tokenizer)
    trained = tokenizer.decode([t for t in prepared.tokens.labels if t != -100], skip_special_tokens=False)
    end = templates.end_of_turn(name, tokenizer)
    assert trained == "2" + end + "It is 4." + end
    whole = tokenizer.decode(prepared.tokens.input_ids, skip_special_tokens=False)
    assert "Be brief." in whole and whole != tokenizer.apply_chat_template(_conversation(), tokenize=False)
    assert data.recipe_template(r) == templates.template(name)
    stats = datastats.collect(r, tokenizer)
    # chatml and mistral end turns with tokens of the tiny tokenizer; the others' markers are no tokens of it.
    if name in ("chatml", "mistral"):
        assert stats.warnings == []
    else:
        (warning,) = stats.warnings
        assert warning.path == "$.data.chat_template" and "has no token for" in warning.message
        assert not any("turn by turn" in w.message for w in stats.warnings)


@pytest.mark.parametrize("name", ["chatml", "mistral", "gemma"])
def test_a_named_template_trains_as_trl_does_with_that_template(recipe, model, tokenizer, tmp_path, renamed, name):
    """TRL is given the template as the tokenizer's own; `recipe run` gets it by name."""
    r = recipe(renamed["chat"], max_seq_length=48, chat_template=name)
    _same_as_trl(r, model, tokenizer, tmp_path, native_tokenizer=_with_template(tokenizer, templates.template(name)))


# A recipe's own template: Phi-style markers, which the tiny tokenizer does not have as tokens.
JINJA = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' }}{% if m['role'] == 'assistant' %}"
         "{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def test_a_jinja_template_trains_as_trl_does_with_it(recipe, model, tokenizer, tmp_path, renamed):
    r = recipe(renamed["chat"], max_seq_length=48, chat_template="jinja", chat_template_jinja=JINJA)
    assert data.recipe_template(r) == JINJA
    train, stats = _same_as_trl(r, model, tokenizer, tmp_path, native_tokenizer=_with_template(tokenizer, JINJA))
    assert tokenizer.decode(train[0].tokens.input_ids).startswith("<|system|>")
    assert stats.warnings == []


@pytest.mark.parametrize("text, answer_only, words", [
    ("{% for m in messages %}{{ m['content'] }}", True, r"not a Jinja template \(its line 1\)"),
    ("{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}", True, "does not mark assistant turns"),
])
def test_a_jinja_template_that_cannot_train_is_refused_at_its_field(recipe, tokenizer, text, answer_only, words):
    r = recipe(*MIXES["chat"], chat_template="jinja", chat_template_jinja=text, completion_only_loss=answer_only)
    with pytest.raises(DataError, match=words) as info:
        data.prepare(r, tokenizer)
    assert info.value.path == "$.data.chat_template_jinja" and ":" in str(info.value.where)


def test_an_unmarked_jinja_template_trains_every_token_without_answer_only_loss(recipe, tokenizer):
    r = recipe(*MIXES["chat"], chat_template="jinja", completion_only_loss=False,
               chat_template_jinja="{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}")
    ((first, *_), _) = data.prepare(r, tokenizer)
    assert first.tokens.labels == first.tokens.input_ids


def test_a_record_the_template_refuses_is_located(recipe, tokenizer, tmp_path):
    chat = tmp_path / "turns.jsonl"
    good = {"messages": _conversation()[1:3]}
    chat.write_text("\n".join(json.dumps(r) for r in (good, good, {"messages": _conversation()})) + "\n")
    refuse = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role here') }}{% endif %}"
    r = recipe((chat, "chat"), chat_template="jinja", chat_template_jinja=refuse + JINJA)
    with pytest.raises(DataError, match="the chat template refuses this conversation: no system role here") as info:
        data.prepare(r, tokenizer)
    assert str(info.value.where).endswith("turns.jsonl:3:1")


def test_a_tokenizer_without_a_template_trains_conversations_with_a_named_one(recipe, tokenizer):
    bare = _with_template(tokenizer, None)
    r = recipe(*MIXES["chat"], chat_template="chatml")
    assert data.prepare(r, bare)[0][0].tokens == data.prepare(r, tokenizer)[0][0].tokens  # chatml is the tiny's own
    with pytest.raises(DataError, match="name one with data.chat_template"):
        data.prepare(recipe(*MIXES["chat"]), bare)
