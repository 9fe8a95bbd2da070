"""What `recipe convert` prints and writes: the not-converted report, the --lossy comment block,
the converted file (whole, never over an existing one) and fit-check's one-line verdict.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import InvalidRecipe, Problem, RecipeError, UsageError, format_error
from ..fit.gpu_catalog import Gpu
from ..read.codec import block_yaml, comment
from .translate import Unconverted


def unconverted_text(item: Unconverted, dropped: bool = False) -> str:
    """``SRC:line:col: key 'x': not converted: why`` and its hint, in the one error format."""
    verb = "not converted, dropped (--lossy)" if dropped else "not converted"
    return format_error(item.location, None, f"key '{item.key}': {verb}: {item.why}", item.hint)


def shown_value(value, width: int = 120) -> str:
    """A value on one line, as JSON writes it (newlines escaped), cut to ``width``."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def header(lines: Sequence[str], dropped: Sequence[Unconverted]) -> str:
    """The comment block at the top of a converted file: where it came from, and under --lossy,
    every key that was dropped with its value and line."""
    out = [comment(line) for line in lines]
    if dropped:
        out.append(comment("NOT CONVERTED (--lossy): these keys of the source were dropped; the file does not do them."))
        out += [comment(f"  line {d.location.line}: {d.key}: {shown_value(d.value)} -- {d.why}") for d in dropped]
    return "\n".join(out) + "\n" if out else ""


def axolotl_yaml(doc: dict, name: str, description: Optional[str], source: str,
                 distributed: Optional[dict] = None) -> str:
    """An Axolotl config as YAML, headed by the recipe's name and description (read back by
    ``--from axolotl``; Axolotl has no key for them)."""
    lines = [f"Axolotl config converted from {source} by `recipe convert --to axolotl`.",
             f"recipe name: {json.dumps(name)}"]
    if description is not None:
        lines.append(f"recipe description: {json.dumps(description, ensure_ascii=False)}")
    if distributed is not None:  # how many processes and machines: the launcher's, not the config's
        lines.append(f"recipe distributed: {json.dumps(distributed)}")
    return header(lines, ()) + block_yaml(doc)


def relocated(error: InvalidRecipe, origin: dict, source: str) -> InvalidRecipe:
    """Problems of the converted recipe, placed at the Axolotl key each value came from."""
    problems = []
    for p in error.problems:
        path = p.path
        while path not in origin and len(path) > 1:
            path = path[:max(path.rfind("."), path.rfind("["))] or "$"
        where = origin.get(path)
        location = where if where is not None else type(p.location)(source, 1, 1)
        problems.append(Problem(location, p.path, f"{p.message} (in the converted recipe)", p.hint))
    return InvalidRecipe(problems)


@contextmanager
def staged(destination: Optional[Path], suffix: str) -> Iterator[Path]:
    """A temporary file beside ``destination`` (so relative paths in it resolve as they will there),
    or in a temporary folder when the result goes to stdout; removed afterwards."""
    if destination is None:
        with tempfile.TemporaryDirectory(prefix="recipe-convert-") as folder:
            yield Path(folder) / f"converted{suffix}"
        return
    fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def refuse_existing(destination: Path) -> None:
    """Refuse before any work when -o names a file that exists, or a folder that does not.

    Raises:
        UsageError: it exists (never overwritten), or its folder is missing.
    """
    if destination.is_dir():
        raise UsageError(f"{destination} is a folder; a file converts into a file", f"name the file, e.g. "
                         f"{destination / 'converted.yaml'}", where="-o")
    if os.path.lexists(destination):
        raise UsageError(f"{destination} exists; convert never overwrites a file",
                         "choose a new file name, or remove the old one first", where="-o")
    if not destination.parent.is_dir():
        raise UsageError(f"folder {destination.parent} does not exist", "create it first, or write elsewhere",
                         where="-o")


def publish(staged_file: Path, destination: Path) -> None:
    """Give the staged file its name, whole, only if no file has that name (a hard link is atomic
    and fails on an existing name, even one created since the check).

    Raises:
        UsageError: the name exists by now, or the folder is not writable.
    """
    try:
        os.link(staged_file, destination)
    except FileExistsError:
        refuse_existing(destination)
        raise
    except OSError as e:
        raise UsageError(f"cannot write {destination}: {e.strerror}",
                         "name a new file in an existing, writable folder", where="-o") from e


def verdict_line(recipe, gpu: Optional[Gpu]) -> str:
    """fit-check's one-line verdict for the card given (--vram or --gpu), or else this machine's first GPU."""
    from ..fit import hardware
    from ..fit.verdict import check
    from ..report.fit import verdict_text
    from ..units import gib

    try:
        if gpu is None:
            found = hardware.probe().gpus
            if not found:
                return ("fit-check: no GPU detected; check a card with: recipe fit-check RECIPE --gpu NAME "
                        "(e.g. --gpu rtx2080)")
            gpu = found[0]
        verdict = check(recipe, gpu)
    except RecipeError as e:  # an architecture not found offline, a LoRA target the model lacks
        return f"fit-check: no estimate: {e.message}"
    return (f"fit-check on {gpu.name}: {verdict_text(verdict)}, estimate {gib(verdict.estimate.device_bytes)} "
            f"of {gib(verdict.vram_bytes)}")
