"""Pathological files: each refused quickly with a located message, nothing executed or expanded."""
from __future__ import annotations

import pytest

from recipecli.errors import InvalidRecipe
from recipecli.read.yamlload import MAX_BYTES, load_file, load_text


def problem_of(raw: bytes):
    with pytest.raises(InvalidRecipe) as info:
        load_text(raw, "f.yaml")
    (problem,) = info.value.problems
    return problem


def test_positions_of_values_and_keys():
    doc = load_text(b"a: 1\nb:\n  c: [x, y]\n", "f.yaml")
    assert doc.data == {"a": 1, "b": {"c": ["x", "y"]}}
    assert (doc.values[("b", "c", 1)].line, doc.values[("b", "c", 1)].column) == (3, 10)
    assert doc.keys[("b", "c")].line == 3


def test_exponent_without_dot_is_a_number():
    # YAML 1.1 reads 1e-4 as text; every recipe author means a number.
    assert load_text(b"lr: 1e-4\nq: '1e-4'\n", "f.yaml").data == {"lr": 1e-4, "q": "1e-4"}


def test_dates_and_yes_stay_what_they_look_like():
    data = load_text(b"revision: 2024-01-01\nflag: true\nyes: 1\n", "f.yaml").data
    assert data == {"revision": "2024-01-01", "flag": True, "yes": 1}


def test_billion_laughs_is_refused_before_expansion():
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i-1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    problem = problem_of("\n".join(lines).encode())
    assert "alias" in problem.message and "bomb" in problem.hint


def test_few_aliases_with_huge_expansion_are_refused():
    lines = ["a0: &a0 [" + ",".join(["x"] * 60) + "]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]")
    problem = problem_of("\n".join(lines).encode())
    assert "after expanding aliases" in problem.message


def test_extreme_nesting_is_refused_without_recursion_error():
    problem = problem_of(b"a: " + b"[" * 5000 + b"]" * 5000)
    assert "nested more than" in problem.message
    assert problem.location.line == 1


def test_huge_file_is_refused_by_size(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * (3 * 1024 * 1024))  # ~30 MB of comments
    with pytest.raises(InvalidRecipe) as info:
        load_file(big)
    assert f"larger than {MAX_BYTES // 1024} KiB" in info.value.problems[0].message


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(InvalidRecipe, match="file not found"):
        load_file(tmp_path / "nope.yaml")
    with pytest.raises(InvalidRecipe, match="is a directory"):
        load_file(tmp_path)


def test_utf8_bom_is_accepted():
    assert load_text("\ufeffname: café\n".encode(), "f.yaml").data == {"name": "café"}


def test_complex_key_is_refused():
    assert "plain name" in problem_of(b"? [a, b]\n: 1\n").message


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("10", 10), ("-3", -3), ("1.5", 1.5), (".5", 0.5), ("1.", 1.0), ("true", True), ("FALSE", False),
    ("null", None), ("~", None), ("", None), ("on", "on"), ("yes", "yes"), ("no", "no"), ("1_000", "1_000"),
    ("1:30", "1:30"), ("2024-01-01", "2024-01-01"), ("0", 0), ("'010'", "010"), ("!!str 010", "010"),
])
def test_plain_scalars_follow_yaml_1_2_core(text, value):
    """Defect 18: YAML 1.1 leftovers (on -> true, 1_000 -> 1000) are not what a recipe means."""
    assert load_text(f"v: {text}\n".encode(), "f.yaml").data["v"] == value


@pytest.mark.parametrize("text", ["010", "0x10", "0o10", "-07"])
def test_octal_hex_and_leading_zeros_are_refused_with_a_hint(text):
    """Defect 18: `seed: 010` was 8 and `0x10` was 16, silently."""
    problem = problem_of(f"seed: {text}\n".encode())
    assert (problem.location.line, problem.location.column) == (1, 7)
    assert text in problem.message and "decimal" in problem.hint


def test_non_finite_numbers_are_read_so_the_schema_can_refuse_them():
    data = load_text(b"a: .nan\nb: -.inf\nc: .Inf\n", "f.yaml").data
    assert data["a"] != data["a"] and data["b"] == float("-inf") and data["c"] == float("inf")


@pytest.mark.parametrize("tag", ["!!int", "!!float", "!!bool", "!!null", "!!timestamp"])
def test_scalar_tags_other_than_str_are_refused(tag):
    assert "not allowed" in problem_of(f"seed: {tag} 010\n".encode()).message


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    """Defect 10: validating a FIFO with no writer blocked forever."""
    import os

    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InvalidRecipe) as info:
        load_file(fifo)  # returns at once: a blocking open would hang the test
    assert "not a regular file" in info.value.problems[0].message


def test_a_symlink_loop_is_a_message(tmp_path):
    """Defect 9: a symlink loop used to raise RuntimeError out of Path.resolve()."""
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    with pytest.raises(InvalidRecipe) as info:
        load_file(tmp_path / "a.yaml")
    assert "cannot open" in info.value.problems[0].message
