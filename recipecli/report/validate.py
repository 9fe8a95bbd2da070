"""What `recipe validate` computes and prints: every problem of every file, as text or JSON.

Imports only the read stage (no torch, no model code), so validating stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ExitCode, InvalidRecipe, Problem
from ..read.load import resolve


@dataclass(frozen=True)
class Checked:
    """One file validated: its problems (best first), or the warnings of a valid file."""

    file: str
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


def validate_files(files: Sequence[str | Path]) -> list[Checked]:
    """Check each file against the schema and the rules; one bad file does not stop the others.

    Args:
        files: recipe files (a folder or a missing file is a problem of that path, not a crash).

    Returns:
        One result per file, in the order given.
    """
    results = []
    for file in files:
        try:
            results.append(Checked(str(file), (), tuple(resolve(file).warnings)))
        except InvalidRecipe as exc:
            results.append(Checked(str(file), tuple(exc.problems), ()))
    return results


def exit_code(results: Sequence[Checked]) -> ExitCode:
    """OK when every file is valid (warnings allowed), INVALID otherwise."""
    return ExitCode.OK if all(r.valid for r in results) else ExitCode.INVALID


def validate_text(results: Sequence[Checked]) -> str:
    """For people: each problem (or warning) in the one error format, 'FILE: ok', and a summary."""
    lines = []
    for result in results:
        lines += [str(p) for p in result.problems or result.warnings]
        if result.valid:
            lines.append(f"{result.file}: ok")
    invalid = sum(not r.valid for r in results)
    count = sum(len(r.problems) for r in results)
    lines.append(f"{len(results)} file{'s' * (len(results) != 1)}: {len(results) - invalid} valid, "
                 f"{invalid} invalid ({count} problem{'s' * (count != 1)})")
    return "\n".join(lines)


def validate_json(results: Sequence[Checked]) -> dict:
    """For tools: per file, every problem and warning with file, line, column, path, message, hint."""
    invalid = sum(not r.valid for r in results)
    return {
        "files": [{"file": r.file, "valid": r.valid, "problems": [p.as_dict() for p in r.problems],
                   "warnings": [w.as_dict() for w in r.warnings]} for r in results],
        "valid": len(results) - invalid,
        "invalid": invalid,
    }
