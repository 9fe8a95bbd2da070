"""From a recipe file to a typed Recipe: extends, overrides, schema, rules, then the codec.

    load_file (each file) -> merge over its extends chain -> apply --set overrides
    -> schema check -> rules -> codec (defaults, absolute paths, Recipe dataclass)

Every problem found on the way is collected and raised together in one InvalidRecipe.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InvalidRecipe, Location, Problem
from . import codec, paths, rules, schema
from .recipe import Recipe
from .yamlload import Document, load_file, load_text

MAX_EXTENDS = 8  # a chain deeper than this is a mistake, not a design
BASE_SUFFIXES = (".yaml", ".yml")
OVERRIDE = "--set"  # the file name of values given on the command line


@dataclass(frozen=True)
class Resolved:
    """A merged, checked document and where each of its values came from."""

    file: Path
    raw: dict  # merged as written, before defaults
    values: dict
    keys: dict

    def locate(self, path: tuple, key: bool = False) -> Location:
        """Where the value (or key) at path was written; the nearest written parent otherwise."""
        table = self.keys if key else self.values
        while path not in table and path:
            path = path[:-1]
            table = self.values
        return table.get(path, Location(str(self.file), 1, 1))

    def directory_of(self, path: tuple) -> Path:
        """The folder relative paths in the value at path resolve against: the file that wrote
        it, or the current directory for a --set override (where the person typing it stands)."""
        written = self.locate(path).file
        return Path.cwd() if written.startswith(OVERRIDE + " ") else Path(written).absolute().parent

    @property
    def warnings(self) -> list[Problem]:
        return rules.warnings(self.raw, self.locate)

    @property
    def abstract(self) -> bool:
        return self.raw.get("abstract", False) is True

    def document(self) -> dict:
        """The document with defaults filled and local paths absolute (``codec.normalize``)."""
        return codec.normalize(self.raw, self.directory_of, abstract=self.abstract)


def resolve(path: str | Path, overrides: Sequence[str] = ()) -> Resolved:
    """Load, merge and check a recipe file.

    Args:
        path: the recipe file.
        overrides: ``dotted.key=value`` strings applied over the file, checked like it.

    Returns:
        The checked document.

    Raises:
        InvalidRecipe: every problem found, the most relevant first.
    """
    doc = _load_chain(Path(path), ())
    for override in overrides:
        doc = _merge(doc, _override_document(override))
    resolved = Resolved(Path(path), doc.data, doc.values, doc.keys)
    problems = schema.check(resolved.raw, resolved.locate, partial=resolved.abstract)
    if not problems:
        problems = rules.check(resolved.raw, resolved.locate, resolved.directory_of)
    if problems:
        raise InvalidRecipe(problems)
    return resolved


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """A runnable Recipe from a file (see :func:`resolve`).

    Raises:
        InvalidRecipe: the file has problems, or it is an abstract base.
    """
    return to_recipe(resolve(path, overrides))


def to_recipe(resolved: Resolved) -> Recipe:
    """The typed Recipe of a checked document.

    Raises:
        InvalidRecipe: it is an abstract base, which cannot run.
    """
    if resolved.abstract:
        raise InvalidRecipe([Problem(resolved.locate(("abstract",)), "$.abstract",
                                     "this recipe is an abstract base and cannot be run",
                                     "write a recipe that extends it and run that")])
    return codec.from_document(resolved.document(), resolved.file, resolved.locate)


def _load_chain(path: Path, seen: tuple[Path, ...]) -> Document:
    doc = load_file(path)
    base_ref = doc.data.get("extends")
    if base_ref is None:
        return doc
    where = doc.values[("extends",)]
    if not isinstance(base_ref, str):
        return doc  # the schema reports the wrong type with its location
    if not base_ref.strip():
        raise InvalidRecipe([Problem(where, "$.extends", "extends is empty",
                                     "name a base recipe file, e.g. extends: base/qlora-8gb.yaml, or remove the line")])
    if not base_ref.endswith(BASE_SUFFIXES):
        raise InvalidRecipe([Problem(where, "$.extends", f"a base must be a recipe file (.yaml or .yml): {base_ref}",
                                     "extends names another recipe, e.g. base/qlora-8gb.yaml")])
    base_path = Path(os.path.realpath(paths.absolute(base_ref, path.absolute().parent)))
    chain = seen + (Path(os.path.realpath(path)),)
    if base_path in chain:
        cycle = " -> ".join(p.name for p in chain + (base_path,))
        raise InvalidRecipe([Problem(where, "$.extends", f"extends cycle: {cycle}",
                                     "a base must not extend, directly or not, the recipe that extends it")])
    if len(chain) > MAX_EXTENDS:
        raise InvalidRecipe([Problem(where, "$.extends", f"more than {MAX_EXTENDS} levels of extends",
                                     "flatten the chain of bases")])
    if not os.path.lexists(base_path):  # a dangling or looping link is load_file's to explain
        raise InvalidRecipe([Problem(where, "$.extends", f"base recipe not found: {base_path}",
                                     "extends is a path relative to this file, e.g. base/qlora.yaml")])
    try:
        base = _load_chain(base_path, chain)
    except InvalidRecipe as exc:
        problems = [Problem(p.location, p.path, p.message + f" (in the base of {path})", p.hint)
                    for p in exc.problems]
        raise InvalidRecipe(problems) from None
    if "recipe_version" not in base.data:
        # Not a recipe: say so without a word of its content (it may be a token or key file).
        raise InvalidRecipe([Problem(where, "$.extends", f"{base_path} is not a recipe (it has no recipe_version)",
                                     "extends names a recipe file with recipe_version: 1")])
    base.data.pop("abstract", None)  # being a base is not inherited
    child = Document(doc.file, {k: v for k, v in doc.data.items() if k != "extends"}, doc.values, doc.keys)
    return _merge(base, child)


def _merge(base: Document, child: Document) -> Document:
    """Deep merge: mappings merge key by key, lists and scalars replace; positions follow."""
    return Document(child.file, deep_merge(base.data, child.data),
                    {**base.values, **child.values}, {**base.keys, **child.keys})


def deep_merge(base: dict, over: dict) -> dict:
    """A new mapping: ``over`` on top of ``base``; nested mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _override_document(text: str) -> Document:
    """``training.learning_rate=1e-4`` as a one-value document located at '--set N'."""
    # The override names its own place in messages: one printable line, whatever was typed (a shell
    # passes bytes that are not UTF-8 as lone surrogates, which are shown escaped, never encoded).
    name = f"{OVERRIDE} " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InvalidRecipe([Problem(Location(name, 1, 1), "$", "an override that is not UTF-8 text",
                                     "type the value as UTF-8 (check the terminal's encoding)")])
    dotted, sep, value = text.partition("=")
    keys = dotted.strip().split(".")
    if not sep or not all(keys):
        raise InvalidRecipe([Problem(Location(name, 1, 1), "$", "an override is dotted.key=value",
                                     "e.g. --set training.learning_rate=1e-4")])
    if "\n" in value or "\r" in value:
        raise InvalidRecipe([Problem(Location(name, 1, len(dotted) + 2), "$." + dotted.strip(),
                                     "an override value is one line",
                                     "write lists and mappings in flow style, e.g. --set lora.target_modules=[q_proj,v_proj]")])
    parsed = load_text(f"v: {value}".encode(), name).data["v"] if value.strip() else ""
    data: dict = parsed
    for key in reversed(keys):
        data = {key: data}
    place = Location(name, 1, len(dotted) + 2)
    paths = [tuple(keys[:i]) for i in range(1, len(keys) + 1)]
    values = {p: place for p in paths} | _descendants(parsed, tuple(keys), place)
    return Document(name, data, values, {p: Location(name, 1, 1) for p in paths})


def _descendants(value, path: tuple, place: Location) -> dict:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {}
    out = {}
    for key, sub in items:
        out[path + (key,)] = place
        out.update(_descendants(sub, path + (key,), place))
    return out
