"""What `recipe fit-check` computes and prints, as plain functions returning data or text.

cli.py only parses options and echoes; everything here can be called and tested directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import yaml

from ..errors import InvalidRecipe, Location, RecipeError, UsageError
from ..fit import verdict as fit_verdict
from ..fit.gpu_catalog import Gpu, card, gpu_from_vram
from ..fit.hardware import probe
from ..fit.suggest import Suggestion, suggest
from ..fit.verdict import BAND, Verdict
from ..read import codec, load, paths
from ..read.load import Resolved, deep_merge
from ..read.recipe import Recipe
from ..units import GIB, gib

BAR_WIDTH = 40  # characters standing for the whole card in -v breakdowns


@dataclass(frozen=True)
class Row:
    """One recipe checked against one GPU."""

    file: str
    resolved: Resolved
    recipe: Recipe
    verdict: Verdict
    suggestion: Optional[Suggestion]  # only for recipes that do not fit, or fit only tightly


@dataclass(frozen=True)
class Failure:
    """A recipe that could not be checked (invalid, unknown model...)."""

    file: str
    error: RecipeError


def check_files(files: Sequence[str | Path], gpu: Gpu, num_gpus: int = 1, parallelism: str = "none",
                skip_abstract: bool = False) -> tuple[list[Row], list[Failure]]:
    """Load, estimate and judge each recipe file; one bad file does not stop the others.

    Args:
        files: recipe files.
        gpu: the card of every process.
        num_gpus, parallelism: see :func:`fit.verdict.setup_for`.
        skip_abstract: leave out abstract bases silently (for the shipped recipes) instead of
            reporting them as failures.

    Returns:
        A row per checked recipe (with a suggestion for those that do not fit) and a failure
        per file that could not be checked, each in the order given.
    """
    rows: list[Row] = []
    failures: list[Failure] = []
    for file in files:
        try:
            # Read once: a second read could see another file (edited meanwhile, or a pipe).
            resolved = load.resolve(file)
            if skip_abstract and resolved.abstract:
                continue
            recipe = recipe_of(resolved)  # raises for an abstract base: it cannot run
            verdict = fit_verdict.check(recipe, gpu, num_gpus, parallelism)
            # tight too: the change that fits with the whole band, when there is one
            suggestion = None if verdict.status == "fits" else suggest(recipe, gpu, num_gpus, parallelism)
        except RecipeError as exc:
            failures.append(Failure(str(file), exc))
            continue
        rows.append(Row(str(file), resolved, recipe, verdict, suggestion))
    return rows, failures


def recipe_of(resolved: Resolved) -> Recipe:
    """The typed recipe of a resolved document: the one place report/ builds one.

    Raises:
        InvalidRecipe: it is an abstract base, which cannot run.
    """
    return load.to_recipe(resolved)


def parallelism_for(num_gpus: int, parallelism: Optional[str]) -> str:
    """The strategy fit-check assumes: the one given, else ddp for several GPUs, none for one.

    Raises:
        UsageError: a strategy for several GPUs with only one (it would change nothing silently).
    """
    if parallelism is None:
        return "ddp" if num_gpus > 1 else "none"
    if num_gpus == 1 and parallelism != "none":
        raise UsageError(f"{parallelism} spreads training over several GPUs, but --gpus is 1",
                         hint=f"add the number of GPUs, e.g. --gpus 4 --parallelism {parallelism}, "
                              "or leave --parallelism out for one GPU", where="--parallelism")
    return parallelism


def scope_text(num_gpus: int, parallelism: str) -> str:
    """'per GPU, 4 GPUs, zero3' for several GPUs; empty for one, where the figure is the card's."""
    return f"per GPU, {num_gpus} GPUs, {parallelism}" if num_gpus > 1 else ""


def _scope_of(verdict: Verdict) -> str:
    return scope_text(verdict.setup.num_gpus, verdict.setup.parallelism)


def target_gpu(vram: Optional[float], name: Optional[str]) -> Gpu:
    """The card to check against: --vram, --gpu, or else the first GPU of this machine.

    Raises:
        UsageError: both options, an unknown card name, or no option and no GPU detected.
    """
    if vram is not None and name is not None:
        raise UsageError("give --vram or --gpu, not both", where="--gpu",
                         hint="--gpu names a card of the catalog, --vram gives the memory of any card; keep one")
    if name is not None:
        return card(name)
    if vram is not None:
        return gpu_from_vram(vram)
    found = probe()
    if not found.gpus:
        raise UsageError(f"no GPU detected ({found.note})",
                         hint="name the card to check against with --gpu NAME (e.g. --gpu rtx2080) "
                              "or give its memory with --vram GIB (e.g. --vram 8)")
    return found.gpus[0]


def params(n: int) -> str:
    """6738415616 -> 6.7B, 124439808 -> 124M."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}" if n < 100 * size else f"{n / size:.0f}{unit}"
    return str(n)


def gpu_line(gpu: Gpu) -> str:
    """'RTX 2080: 8.00 GiB, compute capability 7.5'."""
    free = f" ({gib(gpu.free_bytes)} free)" if gpu.free_bytes is not None else ""
    return f"{gpu.name}: {gib(gpu.total_bytes)}{free}, compute capability {gpu.capability_text}"


def verdict_text(verdict: Verdict) -> str:
    share = verdict.estimate.device_bytes / verdict.vram_bytes
    return {"fits": "fits", "tight": "tight", "does_not_fit": "DOES NOT FIT"}[verdict.status] + f" ({share:.0%})"


def estimate_text(verdict: Verdict) -> str:
    """The device estimate and its band: '7.10 GiB (6.25–7.95 GiB)'."""
    low, high = verdict.band_bytes
    return f"{gib(verdict.estimate.device_bytes)} ({low / GIB:.2f}–{high / GIB:.2f} GiB)"


def band_legend() -> str:
    """What the band and the verdicts mean, once under the table."""
    return (f"estimate: what nvidia-smi will show at the peak, and the band the measured peak is expected in "
            f"(±{BAND:.0%}); fits: the whole band fits the card; tight: only the estimate does")


def format_table(rows: Sequence[Row]) -> str:
    """Aligned table: recipe, model, base model parameters, method, estimate, VRAM, verdict."""
    head = ("recipe", "model", "params", "method", "estimate", "VRAM", "verdict")
    # The model as written (./models/x), not the absolute path the loaded recipe holds.
    body = [(r.recipe.name, r.resolved.raw["model"]["id"], params(r.verdict.estimate.base_params), r.recipe.method,
             estimate_text(r.verdict), gib(r.verdict.vram_bytes), verdict_text(r.verdict)) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {2, 4, 5}  # numbers align right
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                     for line in [head, *body])


def format_breakdown(verdict: Verdict) -> str:
    """Each memory component with a bar scaled to the card, and how it was counted."""
    lines = [f"  {part.name:<16}{gib(part.bytes):>10}  {_bar(part.bytes, verdict.vram_bytes)}  {part.explanation}"
             for part in sorted(verdict.estimate.components, key=lambda c: -c.bytes) if part.bytes]
    lines.append(f"  {'total':<16}{gib(verdict.estimate.device_bytes):>10}  "
                 f"{_bar(verdict.estimate.device_bytes, verdict.vram_bytes)}| {verdict.gpu.name} "
                 f"{gib(verdict.vram_bytes)}, headroom {gib(verdict.headroom_bytes)}")
    est = verdict.estimate
    setting = "expandable_segments:True" if est.expandable_segments else "fixed segments"
    lines.append(f"  {'':<16}allocated {gib(est.allocated_bytes)} (max_memory_allocated), reserved "
                 f"{gib(est.reserved_bytes)} (max_memory_reserved, {setting}), on the card "
                 f"{estimate_text(verdict)}, what nvidia-smi shows")
    return "\n".join(lines)


def _bar(part: int, whole: int) -> str:
    """BAR_WIDTH characters stand for the card; a part larger than the card ends in '>'."""
    filled = round(part * BAR_WIDTH / whole)
    return ("#" * (BAR_WIDTH - 1) + ">") if filled > BAR_WIDTH else ("#" * filled).ljust(BAR_WIDTH)


def format_verdict(recipe: Recipe, verdict: Verdict) -> str:
    """The verdict and its breakdown, as `recipe fit-check -v` prints them for each recipe."""
    scope = _scope_of(verdict)
    return f"{recipe.name}: {verdict_text(verdict)}{f' {scope}' if scope else ''}\n{format_breakdown(verdict)}"


def format_suggestion(recipe: Recipe, verdict: Verdict, suggestion: Optional[Suggestion]) -> str:
    """Why a recipe does not fit, and the change that makes it fit, with the patch as YAML.

    Args:
        recipe: the recipe that does not fit.
        verdict: its verdict on the card.
        suggestion: what :func:`suggest.suggest` found; None when nothing fits.

    Returns:
        A paragraph for people (what `recipe fit-check` and a refused `recipe run` print).
    """
    scope = _scope_of(verdict)
    need = (f"{recipe.name} needs {estimate_text(verdict)}{f' ({scope})' if scope else ''}, "
            f"{verdict.gpu.name} has {gib(verdict.vram_bytes)}.")
    if suggestion is None:
        return (f"{need} No combination of the memory knobs makes it fit: use a smaller model or a card "
                "with more memory.")
    after = suggestion.verdict
    share = after.estimate.device_bytes / after.vram_bytes
    how = ("fits tightly (only the estimate fits, not its whole band: no change found fits with margin)"
           if after.status == "tight" else "fits")
    return (f"{need} It {how} at {estimate_text(after)} ({share:.0%}) with:\n{changes_and_patch(suggestion)}")


def changes_and_patch(suggestion: Suggestion) -> str:
    """The changes of a suggestion, one per line, and the patch as YAML to paste into the recipe."""
    changes = "\n".join(f"  - {c}" for c in suggestion.changes)
    patch = yaml.safe_dump(suggestion.patch, sort_keys=False).rstrip()
    return f"{changes}\n  patch:\n" + "\n".join("    " + line for line in patch.splitlines())


def notes_of(rows: Sequence[Row]) -> list[str]:
    """Every distinct note, in order of first appearance."""
    return list(dict.fromkeys(note for row in rows for note in row.verdict.notes))


def format_fit_check(rows: Sequence[Row], gpu: Gpu, verbose: bool = False, num_gpus: int = 1,
                     parallelism: str = "none") -> str:
    """The whole fit-check report for people: card, table, breakdowns (-v), suggestions, notes.

    With several GPUs the card line says the estimates are per GPU, and under which strategy.
    """
    scope = scope_text(num_gpus, parallelism)
    parts = [gpu_line(gpu) + (f"; estimates {scope}" if scope else ""), format_table(rows) + "\n" + band_legend()]
    if verbose:
        parts += [format_verdict(r.recipe, r.verdict) for r in rows]
    parts += [format_suggestion(r.recipe, r.verdict, r.suggestion) for r in rows
              if not r.verdict.fits or (r.verdict.status == "tight" and r.suggestion is not None)]
    notes = notes_of(rows)
    if notes:
        parts.append("\n".join(f"note: {n}" for n in notes))
    return "\n\n".join(parts)


def failure_text(failure: Failure) -> str:
    """A file that could not be checked; located problems already name their file."""
    if isinstance(failure.error.where, Location):
        return str(failure.error)
    return f"{failure.file}: {failure.error}"


def failure_json(failure: Failure) -> dict:
    """A file that could not be checked, for tools: every problem with its place, path and hint."""
    error = failure.error
    problems = [p.as_dict() for p in (error.problems if isinstance(error, InvalidRecipe) else [error])]
    for problem in problems:
        problem["file"] = problem["file"] or failure.file
    return {"file": failure.file, "exit_code": int(error.exit_code), "problems": problems}


def fit_json(rows: Sequence[Row], failures: Sequence[Failure], gpu: Gpu, num_gpus: int = 1,
             parallelism: str = "none") -> dict:
    """The fit-check result for tools: GPU, one entry per recipe, and the files that failed.

    Byte figures are per GPU; ``num_gpus`` and ``parallelism`` say how many and how they share.
    """
    def entry(row: Row) -> dict:
        est, sug = row.verdict.estimate, row.suggestion
        return {
            "file": row.file, "name": row.recipe.name, "model": row.recipe.model.id, "method": row.recipe.method,
            "status": row.verdict.status, "allocated_bytes": est.allocated_bytes, "reserved_bytes": est.reserved_bytes,
            "device_bytes": est.device_bytes, "device_bytes_low": row.verdict.band_bytes[0],
            "device_bytes_high": row.verdict.band_bytes[1], "band_fraction": BAND,
            "expandable_segments": est.expandable_segments, "vram_bytes": row.verdict.vram_bytes,
            "headroom_bytes": row.verdict.headroom_bytes, "base_params": est.base_params,
            "trainable_params": est.trainable_params, "notes": list(row.verdict.notes),
            "components": [{"name": c.name, "bytes": c.bytes, "explanation": c.explanation} for c in est.components],
            "suggestion": None if sug is None else {
                "changes": list(sug.changes), "patch": sug.patch, "status": sug.verdict.status,
                "device_bytes": sug.verdict.estimate.device_bytes,
                "device_bytes_high": sug.verdict.band_bytes[1]},
        }
    return {
        "gpu": {"name": gpu.name, "total_bytes": gpu.total_bytes, "free_bytes": gpu.free_bytes,
                "compute_capability": gpu.capability_text},
        "num_gpus": num_gpus, "parallelism": parallelism,
        "recipes": [entry(r) for r in rows],
        "errors": [failure_json(f) for f in failures],
    }


def fitted_yaml(row: Row, dest: Path) -> str:
    """The recipe with its suggestion applied, as a self-contained file to be written at dest.

    Extends are merged in (the base may not be reachable from dest) and local paths are
    rewritten relative to dest, so the file runs where it is written.

    Raises:
        ValueError: the row has no suggestion (it fits as it is, or nothing fits): a caller bug.
    """
    if row.suggestion is None:
        raise ValueError(f"{row.file} has no suggestion to apply: only a recipe that does not fit, "
                         "and has a change that fits, is fitted")
    doc = deep_merge(row.resolved.raw, row.suggestion.patch)
    doc.pop("abstract", None)
    recipe = row.recipe
    # What was written decides (the loaded recipe holds every local path absolute already):
    # a relative path is rewritten, an absolute or ~ path and a hub id are kept as they are.
    if recipe.model.local_path is not None and not paths.expanded(doc["model"]["id"]).is_absolute():
        doc["model"]["id"] = _relative(recipe.model.local_path, dest)
    for written, dataset in zip(doc["data"]["datasets"], recipe.data.datasets):
        if dataset.is_local and not paths.expanded(written["path"]).is_absolute():
            written["path"] = _relative(dataset.local_path, dest)
    header = (f"{recipe.source} fitted to {row.verdict.gpu.name} by recipe fit-check:\n"
              + "".join(f"  {c}\n" for c in row.suggestion.changes))
    return codec.dump(doc, header)


def _relative(target: Path, dest: Path) -> str:
    rel = os.path.relpath(target, dest.resolve().parent)
    return rel if rel.startswith("..") else f"./{rel}"
