"""What a reference in a recipe means: hub id or local path, and where a local one lies."""
from __future__ import annotations

from pathlib import Path

import pytest

from recipecli.read import paths


@pytest.mark.parametrize("text, hub", [
    ("org/name", True), ("gpt2", True), ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", True), ("a/b/c", False),
    ("", False), (" ", False), ("org/na me", False), ("org/../x", False), ("org--a/b", False), ("-a/b", False),
    ("a/b.", False), ("a" * 96, True), ("a" * 97, False), ("org/name;rm -rf /", False),
])
def test_hub_ids(text, hub):
    assert paths.is_hub_id(text) is hub


@pytest.mark.parametrize("reference, local", [
    ("org/name", False), ("./model", True), ("../m", True), ("/abs/m", True), ("~/m", True),
    ("data.jsonl", True), ("sub/data.parquet", True), ("tatsu-lab/alpaca", False),
])
def test_data_file_references(reference, local):
    assert paths.is_data_file(reference) is local


def test_absolute_expands_home_and_normalizes_without_touching_the_disk(tmp_path):
    assert paths.absolute("~/x", tmp_path) == Path.home() / "x"
    assert paths.absolute("a/../b", tmp_path) == tmp_path / "b"
    assert paths.absolute("/etc/x", tmp_path) == Path("/etc/x")


def test_a_relative_directory_is_made_absolute_against_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("x", Path("sub")) == tmp_path / "sub" / "x"


def test_a_bare_folder_name_is_local_only_when_the_folder_exists(tmp_path):
    """Defect 13: models/tiny-llama (no ./) that exists is that folder, not a hub id."""
    assert paths.model_folder("models/tiny", tmp_path) is None
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert paths.model_folder("models/tiny", tmp_path) == tmp_path / "models" / "tiny"
    assert paths.model_folder("./missing", tmp_path) == tmp_path / "missing"  # written as a path: local
