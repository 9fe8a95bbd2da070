"""`recipe convert`, top to bottom: read the source, translate it, check the result with the
project's own loader, write it whole (or return it for stdout).

cli.py parses options and echoes what these return; nothing here prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from ..errors import InvalidRecipe, Problem, RecipeError, UsageError
from ..read import codec, load
from ..read.recipe import Recipe
from ..read.yamlload import MAX_BYTES, load_file
from . import report
from .translate import Unconverted, from_axolotl, header_values, to_axolotl


class NotConvertedKeys(InvalidRecipe):
    """Keys without a counterpart, and no --lossy: nothing is written (exit code 1)."""

    def __init__(self, items: list[Unconverted], target: str):
        self.items, self.target = items, target
        super().__init__([Problem(i.location, "", f"key '{i.key}': not converted: {i.why}", i.hint) for i in items])

    def __str__(self) -> str:
        n = len(self.items)
        return (super().__str__() + f"\n{n} key{'s' if n > 1 else ''} not converted: nothing written"
                f"\n  hint: --lossy writes the {self.target} without them, listed in a comment at its top")


@dataclass
class Converted:
    """What a conversion produced: the text, where it went, and what to tell the user."""

    text: str
    written: Optional[Path]  # None: the text goes to stdout
    recipe: Optional[Recipe]  # the converted recipe, loaded and checked (from Axolotl only)
    messages: list[str] = field(default_factory=list)  # dropped keys (--lossy) and notes, for stderr


def from_axolotl_file(src: str, output: Optional[str], lossy: bool) -> Converted:
    """An Axolotl config file as a checked recipe.

    Raises:
        InvalidRecipe: the source is not a readable YAML mapping (located, as for a recipe), the
            converted recipe does not validate (located at the Axolotl key each value came from),
            or keys were not converted without ``lossy`` (NotConvertedKeys).
        UsageError: ``output`` exists or cannot be written.
    """
    out = Path(output) if output else None
    if out is not None:
        report.refuse_existing(out)
    doc = load_file(src)
    with open(src, "rb") as f:  # a regular file of at most MAX_BYTES: load_file checked both
        conv = from_axolotl(doc, header_values(f.read(MAX_BYTES).decode("utf-8", "replace")),
                            out.parent if out else None)
    if conv.unconverted and not lossy:
        raise NotConvertedKeys(conv.unconverted, "recipe")
    lines = [f"Converted from the Axolotl config {src} by `recipe convert --from axolotl"
             + (" --lossy`." if conv.unconverted else "`.")]
    if conv.empty:
        lines.append("Empty in the source (Axolotl's default, as here): " + ", ".join(conv.empty))
    text = report.header(lines, conv.unconverted) + codec.dump(conv.document)
    with report.staged(out, ".yaml") as staged:
        staged.write_text(text, encoding="utf-8")
        try:
            recipe = load.load_recipe(staged)
        except InvalidRecipe as e:
            raise report.relocated(e, conv.origin, src) from None
        if out is not None:
            report.publish(staged, out)
    messages = [report.unconverted_text(u, dropped=True) for u in conv.unconverted]
    return Converted(text, out, recipe, messages + [f"note: {n}" for n in conv.notes])


def to_axolotl_file(src: str, output: Optional[str], lossy: bool) -> Converted:
    """A recipe (extends resolved) as an Axolotl config.

    Raises:
        InvalidRecipe: the recipe is invalid or abstract, or has fields Axolotl cannot hold without
            ``lossy`` (NotConvertedKeys).
        UsageError: ``output`` exists or cannot be written.
    """
    out = Path(output) if output else None
    if out is not None:
        report.refuse_existing(out)
    resolved = load.resolve(src)
    recipe = load.to_recipe(resolved)
    extends_at = resolved.keys.get(("extends",))
    conv = to_axolotl(codec.to_document(recipe), resolved.locate, extends_at)
    if conv.unconverted and not lossy:
        raise NotConvertedKeys(conv.unconverted, "Axolotl config")
    text = report.axolotl_yaml(conv.document, recipe.name, recipe.description, src,
                               codec.to_document(recipe).get("distributed"))
    if conv.unconverted:
        text = report.header([], conv.unconverted) + text
    if out is not None:
        with report.staged(out, ".yml") as staged:
            staged.write_text(text, encoding="utf-8")
            report.publish(staged, out)
    messages = [report.unconverted_text(u, dropped=True) for u in conv.unconverted]
    return Converted(text, out, None, messages + [f"note: {n}" for n in conv.notes])


@dataclass(frozen=True)
class Folder:
    """A folder converted file by file: what each became, and what was passed over."""

    sources: list[Path]  # the configs found, in the order converted
    skipped: list[tuple[Path, str]]  # symbolic links and files that are not regular, with why


def folder_sources(src: Path, out: Path, suffixes: tuple[str, ...]) -> Folder:
    """The files of ``src`` and its sub-folders that end in ``suffixes``, found before anything is
    written, so that an OUT inside SRC never feeds its own results back; links are not followed.

    Raises:
        UsageError: OUT is not a folder it can fill (a file, a link), or SRC holds no such file.
    """
    if os.path.islink(out) or (out.exists() and not out.is_dir()):
        raise UsageError(f"{out} is {'a link' if os.path.islink(out) else 'a file'}; a folder converts into a "
                         "folder", "name a new folder, or an existing one", where="-o")
    if not out.exists() and not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist", "create it first, or write elsewhere", where="-o")
    found, skipped, results = [], [], out.resolve()
    for folder, subfolders, files in os.walk(src):  # followlinks=False: a linked folder is not entered
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if (here / d).resolve() != results)
        for name in sorted(files):
            path = here / name
            if not name.endswith(suffixes):
                continue
            if path.is_symlink() or not path.is_file():
                skipped.append((path, f"{'a link' if path.is_symlink() else 'not a regular file'}: not converted"))
            else:
                found.append(path)
    if not found:
        raise UsageError(f"{src} holds no {' or '.join(suffixes)} file", "give a config file, or the folder "
                         "that holds them", where=str(src))
    return Folder(found, skipped)


def convert_folder(src: str, output: str, lossy: bool, to_axolotl: bool
                   ) -> Iterator[tuple[Path, Union[Converted, RecipeError]]]:
    """Each config of a folder (and its sub-folders) converted into the same place under ``output``,
    one whole file each, never over an existing one; a file that does not convert is reported and the
    others go on. Yields each source with what it became, or the error that stopped it."""
    root, out = Path(src), Path(output)
    folder = folder_sources(root, out, (".yaml", ".yml") if to_axolotl else (".yml", ".yaml"))
    inside = out.resolve()
    convert: Callable[[str, str, bool], Converted] = to_axolotl_file if to_axolotl else from_axolotl_file
    for path in folder.sources:
        target = (out / path.relative_to(root)).with_suffix(".yml" if to_axolotl else ".yaml")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(inside):  # a link inside OUT: never followed
                raise UsageError(f"{target.parent} leads out of {out} (a link): {target.name} not written",
                                 "remove the link, or convert into a new folder", where="-o")
            yield path, convert(str(path), str(target), lossy)
        except RecipeError as e:
            yield path, e
        except OSError as e:  # a sub-folder that cannot be made (a file in its place, no permission)
            yield path, UsageError(f"cannot write {target}: {e.strerror}", where="-o")
    for path, why in folder.skipped:
        yield path, UsageError(why, "convert the file it names, or copy it here", where=str(path))
