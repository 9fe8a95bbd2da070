"""What `recipe validate` reports, as data: every problem located and structured, text and JSON alike."""
from __future__ import annotations

import json

from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode
from recipecli.report.validate import exit_code, validate_files, validate_json, validate_text

FIELDS = {"file", "line", "column", "path", "message", "hint"}


def test_every_problem_of_every_file_is_kept_with_its_place(make_recipe, tmp_path):
    good = make_recipe(name="good.yaml")
    bad = make_recipe({"lora": {"r": 0}, "training": {"micro_batch_size": 0}}, name="bad.yaml")
    results = validate_files([good, bad, tmp_path])
    assert [r.valid for r in results] == [True, False, False]
    assert {p.path for p in results[1].problems} == {"$.lora.r", "$.training.micro_batch_size"}
    assert results[2].problems[0].message == "is a directory, not a recipe file"
    assert exit_code(results) == ExitCode.INVALID and exit_code(results[:1]) == ExitCode.OK


def test_json_problems_are_structured_not_strings(make_recipe, tmp_path):
    bad = make_recipe({"training": {"grad_accum": 4}, "lora": {"r": 0}})
    report = validate_json(validate_files([bad, tmp_path]))
    assert (report["valid"], report["invalid"]) == (0, 2)
    for entry in report["files"]:
        for problem in entry["problems"]:
            assert set(problem) == FIELDS and problem["file"] == entry["file"]
            assert problem["line"] >= 1 and problem["column"] >= 1 and problem["path"].startswith("$")
            assert "hint:" not in problem["message"] and problem["hint"]
    assert {p["path"] for p in report["files"][0]["problems"]} == {"$.training.grad_accum", "$.lora.r"}


def test_the_command_prints_what_the_report_builds(make_recipe):
    files = [make_recipe(name="a.yaml"), make_recipe({"lora": {"r": 0}}, name="b.yaml")]
    results = validate_files(files)
    text = CliRunner().invoke(main, ["validate", *map(str, files)])
    assert text.exit_code == ExitCode.INVALID and text.output == validate_text(results) + "\n"
    as_json = CliRunner().invoke(main, ["validate", "--format", "json", *map(str, files)])
    assert json.loads(as_json.output) == validate_json(results)


def test_warnings_of_a_valid_file_are_structured_too(make_recipe):
    report = validate_json(validate_files([make_recipe({"model": {"trust_remote_code": True}})]))
    (entry,) = report["files"]
    assert entry["valid"] and entry["problems"] == []
    (warning,) = entry["warnings"]
    assert set(warning) == FIELDS and warning["path"] == "$.model.trust_remote_code"
