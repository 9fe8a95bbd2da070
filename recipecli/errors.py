"""Domain errors, the exit codes they map to, and the one format every error is printed in.

The core raises these; only ``cli.py`` turns them into messages and exit codes. Every error,
a recipe problem, a data problem, a usage or runtime error alike, prints as

    file:line:col: $.path: message
      hint: what to do

where the location, the path and the hint are left out when there is none (a usage error is
located at the option it names, e.g. ``--gpu: unknown GPU 'x'``), so editors jump to the place.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union


class ExitCode(enum.IntEnum):
    """Exit status of every ``recipe`` command."""

    OK = 0
    INVALID = 1  # a recipe (or data file) is malformed or breaks a rule
    USAGE = 2  # wrong command line: click uses 2 as well
    DOES_NOT_FIT = 3  # a valid recipe whose estimate exceeds the GPU memory
    RUNTIME = 4  # training or a library failed while running
    INTERRUPTED = 130  # Ctrl-C / SIGTERM: in training after a checkpoint is saved, before it with nothing saved


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
        return format_error(self.location, self.path, self.message, self.hint)

    def as_dict(self) -> dict:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


def json_path(path: tuple) -> str:
    """Render ("data", "datasets", 0, "path") as $.data.datasets[0].path."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def format_error(where: Union[Location, str, None], path: Optional[str], message: str, hint: str = "") -> str:
    """The one error format: ``where: $.path: message`` and an indented ``hint:`` line."""
    head = ": ".join(str(part) for part in (where, path) if part)
    text = f"{head}: {message}" if head else message
    return f"{text}\n  hint: {hint}" if hint else text


class RecipeError(Exception):
    """Base of every error recipecli reports without a traceback.

    Args:
        message: what is wrong, one sentence, no hint in it.
        hint: what to do about it; empty when there is nothing to suggest.
        where: the file location (``Location``), a file or folder, or the option (``--gpu``)
            the error is about; None when it is about nothing in particular.
        path: the JSON path of the field or record part concerned (``$.lora.r``, ``$.output``).
    """

    exit_code = ExitCode.RUNTIME

    def __init__(self, message: str, hint: str = "", where: Union[Location, str, None] = None,
                 path: Optional[str] = None):
        self.message, self.hint, self.where, self.path = message, hint, where, path
        super().__init__(message)

    def __str__(self) -> str:
        return format_error(self.where, self.path, self.message, self.hint)

    def as_dict(self) -> dict:
        """For ``--format json``: the same fields as a recipe problem."""
        where = self.where
        located = isinstance(where, Location)
        return {"file": where.file if located else (str(where) if where else None),
                "line": where.line if located else None, "column": where.column if located else None,
                "path": self.path, "message": self.message, "hint": self.hint}


class InvalidRecipe(RecipeError):
    """A recipe has one or more problems; all of them are carried, best first."""

    exit_code = ExitCode.INVALID

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        first = problems[0]
        super().__init__(first.message, first.hint, first.location, first.path)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class DataError(RecipeError):
    """Training data that cannot become examples (missing column, empty file...)."""

    exit_code = ExitCode.INVALID


class DoesNotFit(RecipeError):
    """A recipe whose memory estimate exceeds the GPU."""

    exit_code = ExitCode.DOES_NOT_FIT


class UsageError(RecipeError):
    """The command line asks for something impossible (unknown GPU name...)."""

    exit_code = ExitCode.USAGE


class Interrupted(RecipeError):
    """Ctrl-C or SIGTERM before training started: nothing was saved, the run folder is as it was."""

    exit_code = ExitCode.INTERRUPTED


class UnknownModel(RecipeError):
    """No shape could be found for a model without downloading it."""

    exit_code = ExitCode.INVALID


class NotModeled(UnknownModel):
    """A valid setting whose memory the estimate does not model (lora.use_dora): fit-check refuses
    to answer rather than under-estimate. An UnknownModel, so every caller that goes on without an
    estimate (``recipe run`` trains without a fit check) treats it the same way."""


class UnknownTargets(RecipeError):
    """LoRA target_modules that name no linear layer of the model, or one LoRA cannot adapt."""

    exit_code = ExitCode.INVALID
