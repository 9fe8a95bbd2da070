"""The data pipeline on the shipped demo data and on small broken files (tests/data)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from recipecli.train import data, datafiles
from recipecli.errors import DataError, ExitCode
from recipecli.read.load import load_recipe

from ..conftest import RECIPES

DATA = RECIPES / "data"
BAD = Path(__file__).parent / "data"  # one small broken file per error
N_DEMO = 256


@pytest.fixture
def recipe(make_recipe):
    """A loaded recipe training on the given (path, format) datasets, plus data-section extras."""

    def make(*datasets: tuple[str, str], **data_section):
        specs = [{"path": str(path), "format": fmt} for path, fmt in datasets]
        return load_recipe(make_recipe({"data": {"datasets": specs, **data_section}}))

    return make


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(RECIPES / "models" / "tiny-llama")


@pytest.mark.parametrize("name, fmt, columns", [
    ("tiny-alpaca.jsonl", "alpaca", ["prompt", "completion"]),
    ("tiny-alpaca.json", "alpaca", ["prompt", "completion"]),
    ("tiny-alpaca.csv", "alpaca", ["prompt", "completion"]),
    ("tiny-alpaca.parquet", "alpaca", ["prompt", "completion"]),
    ("tiny-prompt-completion.jsonl", "prompt_completion", ["prompt", "completion"]),
    ("tiny-chat.jsonl", "chat", ["messages"]),
    ("tiny-sharegpt.jsonl", "sharegpt", ["messages"]),
    ("tiny-text.jsonl", "text", ["text"]),
])
def test_every_format_and_file_type_becomes_trl_columns(recipe, name, fmt, columns):
    train, evaluation = data.load_examples(recipe((DATA / name, fmt)))
    assert train.column_names == columns
    assert len(train) == N_DEMO and evaluation is None


def test_every_alpaca_file_type_reads_the_same_examples(recipe):
    loaded = [data.load_examples(recipe((DATA / f"tiny-alpaca{s}", "alpaca")))[0].to_list()
              for s in (".jsonl", ".json", ".csv", ".parquet")]
    assert all(examples == loaded[0] for examples in loaded)


def test_alpaca_becomes_the_fixed_prompt_with_and_without_input(recipe):
    examples = data.load_examples(recipe((DATA / "tiny-alpaca.jsonl", "alpaca")))[0].to_list()
    with_input = next(e for e in examples if "### Input:" in e["prompt"])
    without = next(e for e in examples if "### Input:" not in e["prompt"])
    assert with_input["prompt"].startswith("### Instruction:\n")
    assert with_input["prompt"].endswith("### Response:\n")
    assert without["prompt"] == data.alpaca_prompt(without["prompt"].split("\n")[1])


def test_the_preamble_starts_alpaca_prompts_as_stanford_alpaca_and_axolotl_write_them(make_recipe):
    # Stanford Alpaca's released prompt (and Axolotl's alpaca type), written out here as the oracle.
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further "
                  "context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd."
                  "\n\n### Input:\n1 + 1\n\n### Response:\n")
    without = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\nAdd.\n\n### Response:\n")
    assert data.alpaca_prompt("Add.", "1 + 1", preamble=True) == with_input
    assert data.alpaca_prompt("Add.", preamble=True) == without
    spec = {"path": str(DATA / "tiny-alpaca.jsonl"), "format": "alpaca", "preamble": True}
    train, _ = data.load_examples(load_recipe(make_recipe({"data": {"datasets": [spec]}})))
    assert all(p.startswith("Below is an instruction that describes a task") for p in train["prompt"])


def test_drop_system_leaves_system_turns_out(make_recipe, tmp_path):
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello"}]}) + "\n")
    spec = {"path": str(chat), "format": "chat", "drop_system": True}
    train, _ = data.load_examples(load_recipe(make_recipe({"data": {"datasets": [spec]}})))
    assert [m["role"] for m in train[0]["messages"]] == ["user", "assistant"]


def test_sharegpt_speakers_become_chat_roles(recipe):
    chat = data.load_examples(recipe((DATA / "tiny-chat.jsonl", "chat")))[0].to_list()
    sharegpt = data.load_examples(recipe((DATA / "tiny-sharegpt.jsonl", "sharegpt")))[0].to_list()
    assert sharegpt == chat
    assert {m["role"] for e in chat for m in e["messages"]} == {"system", "user", "assistant"}


def test_max_samples_takes_the_first_records(recipe, make_recipe):
    path = make_recipe({"data": {"datasets": [{"path": str(DATA / "tiny-text.jsonl"), "format": "text",
                                               "max_samples": 5}]}})
    texts = {e["text"] for e in data.load_examples(load_recipe(path))[0]}
    first = [json.loads(line)["text"] for line in (DATA / "tiny-text.jsonl").read_text().splitlines()[:5]]
    assert texts == set(first)


def test_a_mix_is_concatenated_and_shuffled_by_the_seed(recipe):
    mix = recipe((DATA / "tiny-alpaca.jsonl", "alpaca"),
                 (DATA / "tiny-prompt-completion.jsonl", "prompt_completion"))
    first = data.load_examples(mix)[0].to_list()
    assert len(first) == 2 * N_DEMO
    assert first == data.load_examples(mix)[0].to_list()
    assert {e["prompt"][:3] for e in first[:20]} == {"###", "Q: "}  # interleaved, not one file after the other
    reseeded = dataclasses.replace(mix, training=dataclasses.replace(mix.training, seed=mix.training.seed + 1))
    assert data.load_examples(reseeded)[0].to_list() != first


def test_prompt_completion_mixed_with_chat_becomes_conversations(recipe):
    mix = recipe((DATA / "tiny-alpaca.jsonl", "alpaca"), (DATA / "tiny-sharegpt.jsonl", "sharegpt"))
    train, _ = data.load_examples(mix)
    assert train.column_names == ["messages"] and len(train) == 2 * N_DEMO
    assert data.sft_flags(mix)["assistant_only_loss"] is True


def test_text_does_not_mix_with_prompts(recipe):
    mix = recipe((DATA / "tiny-text.jsonl", "text"), (DATA / "tiny-chat.jsonl", "chat"))
    with pytest.raises(DataError, match=r"recipe.yaml:\d+:\d+: \$.data.datasets\[0\].format: .*tiny-text.jsonl \(format text\) "
                                        r"cannot be mixed with .*tiny-chat.jsonl"):
        data.load_examples(mix)


def test_val_fraction_holds_out_that_share(recipe):
    train, evaluation = data.load_examples(recipe((DATA / "tiny-alpaca.jsonl", "alpaca"), val_fraction=0.25))
    assert (len(train), len(evaluation)) == (192, 64)
    assert not {e["prompt"] + e["completion"] for e in evaluation} & {e["prompt"] + e["completion"] for e in train}


def test_val_fraction_that_leaves_nothing_to_train_on(recipe, make_recipe):
    path = make_recipe({"data": {"datasets": [{"path": str(DATA / "tiny-text.jsonl"), "format": "text",
                                               "max_samples": 1}], "val_fraction": 0.5}})
    with pytest.raises(DataError, match=r"\$.data.val_fraction: 0.5 of 1 examples leaves nothing to train on"):
        data.load_examples(load_recipe(path))


@pytest.mark.parametrize("fmt, flags", [
    ("alpaca", {"completion_only_loss": True, "assistant_only_loss": False}),
    ("prompt_completion", {"completion_only_loss": True, "assistant_only_loss": False}),
    ("chat", {"completion_only_loss": False, "assistant_only_loss": True}),
    ("sharegpt", {"completion_only_loss": False, "assistant_only_loss": True}),
    ("text", {"completion_only_loss": False, "assistant_only_loss": False}),
])
def test_answer_only_loss_maps_to_the_flag_trl_reads_for_the_format(recipe, fmt, flags):
    r = recipe((DATA / "tiny-text.jsonl", fmt), max_seq_length=64, packing=True)
    assert data.sft_flags(r) == {**flags, "max_length": 64, "packing": True}
    off = dataclasses.replace(r, data=dataclasses.replace(r.data, completion_only_loss=False))
    assert not data.sft_flags(off)["completion_only_loss"] and not data.sft_flags(off)["assistant_only_loss"]


def test_the_flags_work_in_trl_with_the_tiny_tokenizer(recipe, tokenizer):
    """What sft_flags says must be what TRL accepts: the answer, and only it, is trained."""
    from trl import SFTConfig
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    for name, fmt in (("tiny-alpaca.jsonl", "alpaca"), ("tiny-chat.jsonl", "chat")):
        flags = data.sft_flags(recipe((DATA / name, fmt)))
        SFTConfig(output_dir="unused", report_to="none", use_cpu=True, bf16=False, **flags)
    assert is_chat_template_stop_token_trained(tokenizer)
    messages = data.load_examples(recipe((DATA / "tiny-chat.jsonl", "chat")), tokenizer)[0][0]["messages"]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == messages[-1]["content"] + tokenizer.eos_token


def test_conversations_need_a_chat_template(recipe, tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(DataError, match=r"\$.model.id: .*tiny-chat.jsonl is conversational, but .* has no chat "):
        data.load_examples(recipe((DATA / "tiny-chat.jsonl", "chat")), tokenizer)


def test_answer_only_loss_needs_assistant_turns_marked_in_the_chat_template(recipe, tmp_path):
    """TRL refuses, in SFTTrainer's constructor, a template without {% generation %} it cannot patch."""
    from transformers import AutoTokenizer

    unmarked = tmp_path / "tiny-llama"
    shutil.copytree(RECIPES / "models" / "tiny-llama", unmarked)
    template = unmarked / "chat_template.jinja"
    template.write_text(template.read_text().replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    tokenizer = AutoTokenizer.from_pretrained(unmarked)
    chat = recipe((DATA / "tiny-chat.jsonl", "chat"))
    with pytest.raises(DataError, match=r"tiny-chat.jsonl is conversational.*"
                                        r"\n  hint: set data.completion_only_loss: false, or use a tokenizer"):
        data.load_examples(chat, tokenizer)
    whole = dataclasses.replace(chat, data=dataclasses.replace(chat.data, completion_only_loss=False))
    assert len(data.load_examples(whole, tokenizer)[0]) == N_DEMO


def test_a_byte_order_mark_is_not_part_of_the_data(recipe, tmp_path):
    """Excel and Notepad save UTF-8 with a BOM in front of the first header or record."""
    for name in ("tiny-alpaca.csv", "tiny-alpaca.jsonl"):
        with_bom = tmp_path / name
        with_bom.write_text((DATA / name).read_text(encoding="utf-8"), encoding="utf-8-sig")
        assert with_bom.read_bytes().startswith(b"\xef\xbb\xbf")
        loaded = data.load_examples(recipe((with_bom, "alpaca")))[0].to_list()
        assert loaded == data.load_examples(recipe((DATA / name, "alpaca")))[0].to_list()


def test_max_samples_of_a_hub_dataset_is_a_split_slice(make_recipe, tmp_path, monkeypatch):
    # datasets resolves a hub id to a folder of that name first: the hub path, without a network.
    folder = tmp_path / "org" / "set"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(10)))
    monkeypatch.chdir(tmp_path)
    path = make_recipe({"data": {"datasets": [{"path": "org/set", "format": "text", "max_samples": 3}]}})
    assert sorted(e["text"] for e in data.load_examples(load_recipe(path))[0]) == ["row 0", "row 1", "row 2"]


def test_data_files_of_a_hub_dataset_read_only_those_files(make_recipe, tmp_path, monkeypatch):
    folder = tmp_path / "org" / "set"
    (folder / "more").mkdir(parents=True)
    (folder / "train.jsonl").write_text(json.dumps({"text": "the split's own"}) + "\n")
    (folder / "more" / "picked.jsonl").write_text(json.dumps({"text": "picked"}) + "\n")
    monkeypatch.chdir(tmp_path)
    path = make_recipe({"data": {"datasets": [{"path": "org/set", "format": "text", "data_files": ["more/*.jsonl"]}]}})
    recipe = load_recipe(path)
    assert [e["text"] for e in data.load_examples(recipe)[0]] == ["picked"]
    assert datafiles.fingerprint(recipe.data.datasets[0]) == "hub:org/set:train:more/*.jsonl"


# Each error is located as an editor jumps to it (file:line:col, at the field's value where the
# record has it) and says what is really wrong.
@pytest.mark.parametrize("name, fmt, located, message", [
    ("missing_output.jsonl", "alpaca", "missing_output.jsonl:2:1: $.output",
     'missing; the record has "instruction", "input", "answer"'),
    ("null_output.jsonl", "alpaca", "null_output.jsonl:2:65: $.output", "is null"),
    ("number_output.jsonl", "alpaca", "number_output.jsonl:3:65: $.output", "must be a string, got a number 7"),
    ("not_json.jsonl", "alpaca", "not_json.jsonl:2:69", "not valid JSON: Expecting property name"),
    ("missing_brace.jsonl", "alpaca", "missing_brace.jsonl:5:69", "not valid JSON: Expecting ',' delimiter"),
    ("latin1.jsonl", "alpaca", "latin1.jsonl:2:32", "not UTF-8 (byte 0xe9)"),
    ("unknown_speaker.jsonl", "sharegpt", "unknown_speaker.jsonl:1:63: $.conversations[1].from",
     '"bot" is not a ShareGPT speaker'),
    ("unknown_role.jsonl", "chat", "unknown_role.jsonl:2:24: $.messages[0].role", '"human" is not a chat role'),
    ("no_answer.jsonl", "chat", "no_answer.jsonl:1:14: $.messages", "has no assistant turn"),
    ("content_list.jsonl", "chat", "content_list.jsonl:1:83: $.messages[1].content", "must be a string, got a list"),
    ("missing_text.csv", "text", "missing_text.csv:1:1: $.text", 'no such column; the header has "body"'),
    ("short_row.csv", "alpaca", "short_row.csv:3:1",
     "this row has 2 cells, the header has 3 columns (it lacks output)"),
    ("long_row.csv", "alpaca", "long_row.csv:3:1", "this row has 4 cells, the header has 3 columns"),
    ("multiline.csv", "alpaca", "multiline.csv:7:1", "(it lacks output)"),
    ("semicolons.csv", "alpaca", "semicolons.csv:1:1", "the file is separated by ;, not commas"),
    ("twice.csv", "alpaca", "twice.csv:1:1", "column 'output' appears twice in the header"),
    ("number_prompt.json", "prompt_completion", "number_prompt.json:3:12: $.prompt", "must be a string"),
    ("pretty.json", "prompt_completion", "pretty.json:5:19: $.completion", "must be a string, got a number 7"),
    ("string_record.json", "text", "string_record.json:1:19: $", "expected an object with fields, got a string"),
    ("missing_comma.json", "text", "missing_comma.json:3:3", "not valid JSON: Expecting ',' delimiter"),
    ("not_a_list.json", "alpaca", "not_a_list.json:1:1", "expected a JSON array of records, got an object"),
    ("empty.jsonl", "alpaca", "empty.jsonl", "no records"),
])
def test_bad_records_are_located_and_say_what_is_wrong(recipe, name, fmt, located, message):
    with pytest.raises(DataError) as error:
        data.load_examples(recipe((BAD / name, fmt)))
    first = str(error.value).splitlines()[0]
    assert f"{located}: " in first and message in first, first
    assert "\n  hint: " in str(error.value) and "Hint" not in error.value.message


def test_an_error_is_one_format_with_file_line_column_path_and_hint(recipe):
    with pytest.raises(DataError) as error:
        data.load_examples(recipe((BAD / "null_output.jsonl", "alpaca")))
    e = error.value
    assert (e.where.file, e.where.line, e.where.column, e.path) == (
        datafiles.display(recipe((BAD / "null_output.jsonl", "alpaca")).data.datasets[0]), 2, 65, "$.output")
    assert e.as_dict()["line"] == 2 and e.as_dict()["column"] == 65 and e.message == "is null"


def test_a_csv_row_is_placed_at_its_first_line_past_quoted_line_breaks_and_blank_rows(recipe):
    spec = recipe((BAD / "multiline.csv", "alpaca")).data.datasets[0]
    rows = itertools.islice(datafiles.records(spec), 2)
    assert [(place.line, row["instruction"]) for place, row in rows] == \
        [(2, "Write a poem\nabout numbers."), (6, "Add the numbers.")]


def test_the_records_of_a_json_array_are_placed_at_their_lines(recipe):
    spec = recipe((BAD / "pretty.json", "prompt_completion")).data.datasets[0]
    assert [(p.number, p.line, p.column) for p, _ in datafiles.records(spec)] == [(1, 2, 3), (2, 3, 3)]


def test_a_json_array_with_a_trailing_comma_or_extra_data_is_invalid(recipe, tmp_path):
    bad = tmp_path / "bad.json"
    for text, error in (('[{"text": "a"},\n]', "bad.json:1:15: not valid JSON: Illegal trailing comma"),
                        ('[{"text": "a"}] [', "bad.json:1:17: not valid JSON: Extra data")):
        bad.write_text(text)
        assert error in _error_of(recipe((bad, "text")))


def test_a_bom_does_not_shift_the_column_of_a_bad_byte(recipe, tmp_path):
    bad = tmp_path / "bom.jsonl"
    bad.write_bytes(b'\xef\xbb\xbf{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bom.jsonl:1:14: not UTF-8 \(byte 0xe9\)\n  hint: save the file as UTF-8"):
        data.load_examples(recipe((bad, "text")))


def test_records_without_lines_are_numbered(recipe, tmp_path, monkeypatch):
    """Parquet files and hub datasets have no lines: the file (or id) and the record number."""
    import pyarrow
    import pyarrow.parquet

    table = tmp_path / "t.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": ["one", None, "three"]}), table)
    spec = recipe((table, "text"))
    assert _error_of(spec).startswith(f"{datafiles.display(spec.data.datasets[0])}: $.text: record 2: is null")
    for rows, error in (('{"text": "a"}\n{"body": "b"}\n', "org/set: $.text: record 2: is null or missing"),
                        ('{"body": "a"}\n', 'org/set: $.text: record 1: missing; the record has "body"')):
        folder = tmp_path / "org" / "set"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text(rows)
        monkeypatch.chdir(tmp_path)  # datasets resolves a hub id to a folder of that name first
        assert _error_of(recipe(("org/set", "text"))).startswith(error)


def test_a_data_path_that_is_a_pipe_or_folder_is_refused_without_blocking(recipe, tmp_path):
    # Made after the recipe is loaded: the read stage checks that a regular file is there.
    names = ("fifo.jsonl", "folder.jsonl", "gone.jsonl")
    for name in names:
        (tmp_path / name).write_text('{"text": "a"}\n')
    fifo, folder, gone = (recipe((tmp_path / name, "text")) for name in names)
    for name in names:
        (tmp_path / name).unlink()
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    errors = []
    # Opening a FIFO for reading waits for a writer forever: run it aside and give it seconds.
    worker = threading.Thread(target=lambda: errors.append(_error_of(fifo)), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert "fifo.jsonl: is not a regular file" in errors[0]
    assert "folder.jsonl: is a folder" in _error_of(folder)
    assert "gone.jsonl: file not found" in _error_of(gone)
    with pytest.raises(DataError, match="gone.jsonl: file not found"):
        datafiles.fingerprint(gone.data.datasets[0])


def _error_of(recipe) -> str:
    with pytest.raises(DataError) as error:
        data.load_examples(recipe)
    return str(error.value)


def test_recipe_run_prints_data_errors_located_before_any_model_loads(make_recipe, tmp_path, offline):
    from click.testing import CliRunner

    from recipecli.cli import main

    out = tmp_path / "run"
    path = make_recipe({"model": {"id": str(RECIPES / "models" / "tiny-llama")},
                        "data": {"datasets": [{"path": str(BAD / "latin1.jsonl"), "format": "alpaca"}]},
                        "output": {"dir": str(out)}})
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == ExitCode.INVALID, result.output
    assert "latin1.jsonl:2:32: not UTF-8 (byte 0xe9)\n  hint: save the file as UTF-8" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_hub_dataset_that_cannot_be_downloaded(recipe, monkeypatch):
    import datasets
    import huggingface_hub

    # Offline, as the tests always are: fail at once instead of retrying a network that is not there.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="^nobody/no-such-set: could not download hub dataset"):
        data.load_examples(recipe(("nobody/no-such-set", "alpaca")))


def test_fingerprint_is_the_file_content_or_the_hub_coordinates(recipe, tmp_path):
    local = recipe((DATA / "tiny-alpaca.jsonl", "alpaca")).data.datasets[0]
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(local.local_path.read_bytes())
    assert datafiles.fingerprint(local) == datafiles.fingerprint(dataclasses.replace(local, path=str(copy)))
    assert datafiles.fingerprint(local).startswith("sha256:") and len(datafiles.fingerprint(local)) == 7 + 64
    copy.write_bytes(copy.read_bytes() + b"\n")
    assert datafiles.fingerprint(local) != datafiles.fingerprint(dataclasses.replace(local, path=str(copy)))
    hub = recipe(("org/set", "chat")).data.datasets[0]
    assert datafiles.fingerprint(hub) == "hub:org/set:train"


def test_files_that_exhaust_a_parser_are_located_errors(recipe, tmp_path):
    """Found in review: 100,000 nested '[' raised RecursionError, a 200,000-character CSV cell
    csv.Error, both as tracebacks out of `recipe run`."""
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "deep.json").write_text("[" + "[" * 100_000 + "]" * 100_000 + "]\n")
    (tmp_path / "big.csv").write_text('text\n"' + "a" * 200_000 + '"\n')
    assert "deep.jsonl: nested too deeply to read" in _error_of(recipe((tmp_path / "deep.jsonl", "text")))
    assert "deep.json: nested too deeply to read" in _error_of(recipe((tmp_path / "deep.json", "text")))
    assert "big.csv: not readable as CSV: field larger than field limit" in _error_of(
        recipe((tmp_path / "big.csv", "text")))


# issue 10: data that names its fields and roles its own way (data.datasets[].fields and roles)
@pytest.fixture
def named(make_recipe):
    def make(path, fmt, **names):
        return load_recipe(make_recipe({"data": {"datasets": [{"path": str(path), "format": fmt, **names}]}}))
    return make


def test_renamed_fields_and_roles_read_as_the_format_s_own(named, tmp_path):
    dialog = tmp_path / "dialog.jsonl"
    dialog.write_text(json.dumps({"turns": [{"who": "customer", "says": "hi"}, {"who": "bot", "says": "hello"},
                                            {"who": "rules", "says": "be kind"}]}) + "\n")
    r = named(dialog, "chat", fields={"messages": "turns", "role": "who", "content": "says"},
              roles={"user": ["customer"], "assistant": ["bot"], "system": ["rules"]})
    (example,) = data.read_examples(r)
    assert example.columns == {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                            {"role": "system", "content": "be kind"}]}
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWhat is 1 + 1?,2\n")
    (alpaca,) = data.read_examples(named(qa, "alpaca", fields={"instruction": "question", "output": "answer"}))
    assert alpaca.columns == {"prompt": data.alpaca_prompt("What is 1 + 1?"), "completion": "2"}
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"body": "a note"}\n')
    (text,) = data.read_examples(named(notes, "text", fields={"text": "body"}))
    assert text.columns == {"text": "a note"}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"q": "a", "a": "b"}\n')
    (pc,) = data.read_examples(named(pairs, "prompt_completion", fields={"prompt": "q", "completion": "a"}))
    assert pc.columns == {"prompt": "a", "completion": "b"}


def test_a_role_written_in_roles_replaces_the_format_s_names_for_it(named, tmp_path):
    """sharegpt reads human and gpt; roles: {assistant: [bot]} makes bot the only assistant name."""
    talk = tmp_path / "talk.jsonl"
    talk.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]})
                    + "\n")
    with pytest.raises(DataError) as error:
        data.read_examples(named(talk, "sharegpt", roles={"assistant": ["bot"]}))
    assert str(error.value).startswith(f"{talk}:1:63: $.conversations[1].from: ")
    assert "data.datasets[0].roles" in error.value.hint


@pytest.mark.parametrize("record, names, located, words", [
    ({"dialog": [{"speaker": "user", "text": "hi"}]}, {"fields": {"messages": "dialog", "content": "text"}},
     "1:13: $.dialog[0].role", 'missing; the record has "speaker", "text"'),
    ({"messages": [{"role": "user", "content": "hi"}]}, {"fields": {"messages": "dialog"}},
     "1:1: $.dialog", 'missing; the record has "messages"'),
    ({"dialog": [{"speaker": "agent", "text": "hi"}]}, {"fields": {"messages": "dialog", "role": "speaker",
                                                                   "content": "text"}},
     "1:25: $.dialog[0].speaker", '"agent" is not a chat role'),
    ({"question": "q", "answer": 7}, {"fields": {"instruction": "question", "output": "answer"}},
     "1:29: $.answer", "must be a string, got a number 7"),
])
def test_a_record_without_a_renamed_field_is_located_at_it(named, tmp_path, record, names, located, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    fmt = "alpaca" if "question" in record else "chat"
    with pytest.raises(DataError) as error:
        data.read_examples(named(bad, fmt, **names))
    first = str(error.value).splitlines()[0]
    assert first.startswith(f"{bad}:{located}: ") and words in first, first


def test_a_missing_field_names_the_recipe_field_that_renames_it(named, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "response": "a"}\n')
    with pytest.raises(DataError) as error:
        data.read_examples(named(bad, "alpaca", fields={"instruction": "question"}))
    assert error.value.path == "$.output"
    assert "format alpaca reads question, output and optionally input" in error.value.hint
    assert "data.datasets[0].fields.output" in error.value.hint


def _tokenized_file(tmp_path, *records) -> Path:
    path = tmp_path / "tokens.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_token_ids_train_as_they_are_with_their_labels(recipe, tokenizer, tmp_path):
    # Axolotl's dataset without a type: the ids go to the trainer untouched, -100 labels carry no
    # loss, a record without labels trains every token; no end-of-sequence token is added
    path = _tokenized_file(tmp_path, {"input_ids": [1, 50, 60, 2], "labels": [-100, -100, 60, 2],
                                      "attention_mask": [1, 1, 1, 1]},
                           {"input_ids": [1, 70, 80]})
    r = recipe((path, "tokenized"), completion_only_loss=True)
    assert data.layout(r) == "tokens" and data.recipe_template(r) is None
    train, _ = data.prepare(r, tokenizer)
    got = sorted((p.tokens.input_ids, p.tokens.labels) for p in train)
    assert got == [([1, 50, 60, 2], [-100, -100, 60, 2]), ([1, 70, 80], [1, 70, 80])]
    columns, _ = data.datasets(r, train, None)
    assert sorted(columns["input_ids"]) == [[1, 50, 60, 2], [1, 70, 80]]


@pytest.mark.parametrize("record, located, message", [
    ({"input_ids": [1, 2.0, 3]}, "$.input_ids", "2.0 at token 1 is not a token id"),
    ({"input_ids": [1, True]}, "$.input_ids", "true at token 1 is not a token id"),
    ({"input_ids": [1, 512]}, "$.input_ids", "512 at token 1 is not an id of the model's tokenizer (0 to 511)"),
    ({"input_ids": [1, -100]}, "$.input_ids", "-100 at token 1 is not an id of the model's tokenizer"),
    ({"input_ids": []}, "$.input_ids", "is empty"),
    ({"input_ids": "1 2 3"}, "$.input_ids", "must be a list of token ids, got a string"),
    ({"ids": [1, 2]}, "$.input_ids", 'missing; the record has "ids"'),
    ({"input_ids": [1, 2], "labels": [2]}, "$.labels", "has 1 for 2 input_ids"),
    ({"input_ids": [1, 2], "labels": [-5, 2]}, "$.labels", "-5 at token 0 is not an id"),
    ({"input_ids": [1, 2], "attention_mask": [1, 0]}, "$.attention_mask", "is 0 at token 1: a padded record"),
    ({"input_ids": [1, 2], "attention_mask": [1, 1.0]}, "$.attention_mask", "is 1.0 at token 1"),
    ({"input_ids": [1, 2], "attention_mask": "11"}, "$.attention_mask", "has a string for 2 input_ids"),
])
def test_bad_token_records_are_located_and_say_what_is_wrong(recipe, tokenizer, tmp_path, record, located, message):
    path = _tokenized_file(tmp_path, {"input_ids": [1, 2, 3]}, record)
    with pytest.raises(DataError) as error:
        data.read_examples(recipe((path, "tokenized")), tokenizer)
    first = str(error.value).splitlines()[0]
    assert "tokens.jsonl:2:" in first and f": {located}: " in first and message in first, first
    assert "\n  hint: " in str(error.value)


def test_token_ids_mix_with_no_other_format(recipe, tmp_path):
    path = _tokenized_file(tmp_path, {"input_ids": [1, 2, 3]})
    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(DataError) as error:
        data.layout(recipe((text, "text"), (path, "tokenized")))
    assert error.value.path == "$.data.datasets[1].format" and "cannot be mixed" in error.value.message
