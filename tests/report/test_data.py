"""How `recipe data` prints its statistics: table, JSON, masked examples, warnings, run's one line.

Pure formatting, on statistics written out here; tests/train/test_datastats.py checks the numbers.
"""
from __future__ import annotations

import json

from recipecli.errors import Location
from recipecli.report.data import CLOSE, OPEN, TRAINED_COLOUR, data_json, data_text, masked, summary_line, warning_text
from recipecli.train.datastats import DataStats, DataWarning, Part


def _part(name="data/a.jsonl", fmt="alpaca", fingerprint="sha256:ab", **numbers) -> Part:
    base = dict(records=200, tokens=6000, lengths={"min": 10, "median": 30, "p95": 60, "p99": 90, "max": 140},
                truncated=12, lost_tokens=300, dropped={}, kept_tokens=5700, trained_tokens=1425, duplicates=2)
    return Part(name, fmt, fingerprint, **{**base, **numbers})


def _stats(**changes) -> DataStats:
    base = dict(recipe="r.yaml", max_seq_length=128, packing=False, micro_batch_size=8, accumulation=2,
                max_steps=None, epochs=3.0, datasets=[_part()], mix=_part("mix", fingerprint=None),
                train_records=180, eval_records=20, sequences=180, steps_per_epoch=12, padding_share=0.25,
                fill_ratio=None, padding_avoided=None, warnings=[],
                previews=[("data/a.jsonl:3", [("<s>### Response:\n", False), ("blue<|im_end|>", True)])])
    return DataStats(**{**base, **changes})


def test_the_table_has_a_row_per_dataset_and_the_mix_only_for_several():
    one = data_text(_stats())
    assert "data/a.jsonl  alpaca" in one and "\nmix " not in one
    header = next(line for line in one.splitlines() if line.startswith("dataset"))
    for column in ("records", "tokens", "min", "median", "p95", "p99", "max", "truncated", "lost", "dropped",
                   "trained tokens", "dupes"):
        assert column in header
    assert "1,425 of 5,700 (25%)" in one and "12 (6%)" in one
    two = data_text(_stats(datasets=[_part(), _part("data/b.jsonl", "chat")]))
    assert "data/b.jsonl  chat" in two and any(line.startswith("mix ") for line in two.splitlines())


def test_steps_split_and_padding_are_said():
    text = data_text(_stats())
    assert "train 180 records, validation 20; 180 records per epoch, 16 per step: 12 steps per epoch" in text
    assert "3 epochs = 36 steps" in text and "padding: 25% of the tokens in a micro-batch of 8" in text
    packed = data_text(_stats(packing=True, sequences=40, fill_ratio=0.93, padding_share=None, padding_avoided=1234,
                              max_steps=30, epochs=None))
    assert "40 packed sequences per epoch" in packed and "93% of the packed tokens are data" in packed
    assert "1,234 pad tokens avoided" in packed and "max_steps 30 = 2.5 epochs" in packed


def test_examples_are_marked_with_brackets_or_colour():
    plain = data_text(_stats())
    assert f"<s>### Response:\n{OPEN}blue<|im_end|>{CLOSE}" in plain and "\x1b" not in plain
    coloured = data_text(_stats(), colour=True)
    assert f"{TRAINED_COLOUR}blue<|im_end|>" in coloured and OPEN not in coloured.split("example 1")[1]


def test_control_characters_in_the_data_cannot_reach_the_terminal():
    """A record holding ESC[2J (clear screen) or an ANSI colour must not act, nor fake the highlighting."""
    shown = masked([("a\x1b[2Jb\x9b1m", False), ("ok\x07\u2028", True)], colour=True)
    assert shown.count("\x1b") == 2  # the highlighting's own colour and reset, nothing of the data
    assert "\\x1b[2J" in shown and "\\x9b" in shown and "\\x07" in shown and "\\u2028" in shown
    assert masked([("line\n\ttab", False)], colour=False) == "line\n\ttab"


def test_warnings_print_in_the_one_error_format():
    warning = DataWarning(Location("data/a.jsonl", 3, 1), "$.messages[1]", "warning: renders differently",
                          "use another template")
    assert warning_text(warning) == ("data/a.jsonl:3:1: $.messages[1]: warning: renders differently\n"
                                     "  hint: use another template")
    text = data_text(_stats(warnings=[warning]))
    assert "data/a.jsonl:3:1: $.messages[1]: warning: renders differently" in text


def test_json_holds_every_number_and_located_warnings():
    warning = DataWarning("r.yaml", "$.model.id", "warning: no end-of-turn token", "fix it")
    out = json.loads(json.dumps(data_json(_stats(warnings=[warning])), allow_nan=False))
    assert out["mix"]["lengths"]["p99"] == 90 and out["datasets"][0]["fingerprint"] == "sha256:ab"
    assert out["steps_per_epoch"] == 12 and out["eval_records"] == 20 and out["padding_share"] == 0.25
    assert out["warnings"] == [{"file": "r.yaml", "line": None, "column": None, "path": "$.model.id",
                                "message": "warning: no end-of-turn token", "hint": "fix it"}]
    assert out["examples"][0]["segments"][1] == {"text": "blue<|im_end|>", "trained": True}


def test_the_run_summary_is_one_line_with_the_key_numbers():
    line = summary_line(_stats())
    assert "\n" not in line
    assert line == ("data: 200 records (180 train, 20 eval), 6,000 tokens, 12 truncated (6.0%), "
                    "25% of tokens trained, 12 steps per epoch")
