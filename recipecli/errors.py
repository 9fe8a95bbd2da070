"""Domain errors and the exit codes they map to: the one place both are defined.

The core raises these; only ``cli.py`` turns them into messages and exit codes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Exit status of every ``recipe`` command."""

    OK = 0
    INVALID = 1  # a recipe (or data file) is malformed or breaks a rule
    USAGE = 2  # wrong command line: click uses 2 as well
    DOES_NOT_FIT = 3  # a valid recipe whose estimate exceeds the GPU memory
    RUNTIME = 4  # training or a library failed while running
    INTERRUPTED = 130  # Ctrl-C / SIGTERM after a checkpoint was saved


@dataclass(frozen=True)
class Location:
    """Where a value was written: file, 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located as precisely as possible."""

    location: Location
    path: str  # JSON path such as $.lora.r, or $ for the whole document
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.location}: {self.path}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text

    def as_dict(self) -> dict:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class RecipeError(Exception):
    """Base of every error recipecli reports without a traceback."""

    exit_code = ExitCode.RUNTIME


class InvalidRecipe(RecipeError):
    """A recipe has one or more problems; all of them are carried, best first."""

    exit_code = ExitCode.INVALID

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class DataError(RecipeError):
    """Training data that cannot become examples (missing column, empty file...)."""

    exit_code = ExitCode.INVALID


class DoesNotFit(RecipeError):
    """A recipe whose memory estimate exceeds the GPU."""

    exit_code = ExitCode.DOES_NOT_FIT


class UsageError(RecipeError):
    """The command line asks for something impossible (unknown GPU name...)."""

    exit_code = ExitCode.USAGE


class UnknownModel(RecipeError):
    """No shape could be found for a model without downloading it."""

    exit_code = ExitCode.INVALID


class UnknownTargets(RecipeError):
    """LoRA target_modules that name no linear layer of the model, or one LoRA cannot adapt."""

    exit_code = ExitCode.INVALID
