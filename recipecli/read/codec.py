"""The one translation between a recipe document (the YAML mapping) and a ``Recipe``.

    normalize: merged document -> defaults filled (schema), local paths absolute (paths.py)
    from_document: normalized document -> Recipe       (walks the dataclasses' fields)
    to_document: Recipe -> document                    (the same walk, backwards)
    dump: document -> YAML text, sections in the schema's order

``load``, ``show``, ``diff``, the run folder's recipe.yaml and ``--resume``'s comparison all go
through here, so they cannot disagree. The dataclasses in recipe.py mirror the schema field for
field, which is what lets both directions be derived instead of written: a new field touches
the schema and one dataclass. Invariants (tests/read/test_codec.py): ``to_document`` of a loaded
recipe validates, and load -> to_document -> load is the identity.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Callable, Union

import yaml

from . import paths
from ..errors import Location
from .recipe import Recipe
from .schema import fill_defaults, schema

DirectoryOf = Callable[[tuple], Path]  # the folder a value's relative paths resolve against


def normalize(raw: dict, directory_of: DirectoryOf, *, abstract: bool = False) -> dict:
    """A merged, checked document with every default filled and every local path absolute.

    Args:
        raw: the merged document as written (extends and overrides applied).
        directory_of: for a value's path, the folder its relative paths resolve against (the
            recipe or base file that wrote it; the current directory for --set overrides).
        abstract: a base that cannot run: no run folder is derived for it.

    Returns:
        A new document; ``raw`` is untouched.
    """
    doc = fill_defaults(raw)
    model = doc.get("model", {})
    for field in ("id", "tokenizer"):  # both a hub id or a local folder, by one rule
        if isinstance(model.get(field), str):
            folder = paths.model_folder(model[field], directory_of(("model", field)))
            if folder is not None:
                model[field] = str(folder)
    for i, dataset in enumerate(doc.get("data", {}).get("datasets", [])):
        if paths.is_data_file(dataset.get("path", "")):
            dataset["path"] = str(paths.absolute(dataset["path"], directory_of(("data", "datasets", i, "path"))))
    output = doc.get("output", {})
    if "dir" in output:
        output["dir"] = str(paths.absolute(output["dir"], Path.cwd()))
    elif not abstract and "name" in doc:
        output["dir"] = str(paths.absolute(f"runs/{doc['name']}", Path.cwd()))
    return doc


def from_document(doc: dict, source: Path, locate=None) -> Recipe:
    """The typed recipe of a normalized document (see :func:`normalize`).

    Args:
        doc: the normalized document.
        source: the recipe file it was read from.
        locate: where each value was written (``load.Resolved.locate``); None places every value
            at the file's start (a document built in code).
    """
    return Recipe(**_build_fields(Recipe, doc), source=Path(source), locate=locate or _AtStart(str(source)))


class _AtStart:
    """A locate for a recipe whose positions are unknown: the start of its file."""

    def __init__(self, file: str):
        self.file = file

    def __call__(self, path: tuple, key: bool = False) -> Location:
        return Location(self.file, 1, 1)


def to_document(recipe: Recipe) -> dict:
    """The document of a recipe, as ``normalize`` would give it: runnable again anywhere on this
    machine, since local paths are absolute; absent optional values are left out, not null."""
    return _unbuild(recipe)


def dump(doc: dict, header: str = "") -> str:
    """YAML text of a document, sections and fields in the schema's order, headed by comments."""
    comments = "".join(comment(line) + "\n" for line in header.split("\n"))
    return comments + block_yaml(ordered(doc))


def _printable(character: str) -> bool:
    """YAML's printable characters (spec 5.1), less the line breaks PyYAML also breaks lines at."""
    return character == "\t" or " " <= character <= "~" or "\xa0" <= character <= "\ud7ff" and \
        character not in "\u2028\u2029" or "\ue000" <= character <= "\ufffd" or character >= "\U00010000"


def comment(line: str) -> str:
    """A YAML comment line holding ``line``: a character YAML would refuse in a file, or read as a
    line break (a file name, a description), written as its \\uXXXX escape, as JSON writes it."""
    return "# " + "".join(c if _printable(c) else f"\\u{ord(c):04x}" for c in line)


class _BlockDumper(yaml.SafeDumper):
    """Safe YAML whose text of several lines (a chat template) is a literal block, as people write it."""


def _text(dumper: yaml.SafeDumper, value: str):
    # PyYAML falls back to quoting where a block cannot hold the text (trailing spaces, tabs...).
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _text)


def block_yaml(doc: dict) -> str:
    """A document as YAML in the given key order, block style, text of several lines as blocks."""
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def ordered(value, node: dict | None = None):
    """A document with its keys in the order the schema lists them (unknown keys last)."""
    node = schema() if node is None else node
    if isinstance(value, dict):
        props = node.get("properties", {})
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: ordered(value[k], props.get(k, {})) for k in keys}
    if isinstance(value, list):
        return [ordered(v, node.get("items", {})) for v in value]
    return value


def flatten(value, prefix: str = "") -> dict:
    """Mappings become dotted paths ({"training.max_steps": 6}); lists stay whole values (they
    replace, they do not merge). An empty mapping holds no value: ``logging: {}`` and a
    ``logging.wandb`` section differ by the wandb fields alone."""
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


@lru_cache(maxsize=None)
def _fields(cls) -> tuple[tuple[str, object], ...]:
    """(name, type) of the fields of a recipe dataclass that a document holds."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("document", True))


def _build(kind, value):
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        # Optional[X] takes X; target_modules (a shorthand, a list or a pattern) takes the option of
        # the value's kind: the tuple for a list, the dataclass for a mapping, else the scalar.
        wanted = next((k for k in options if _kind_of(k) == _kind_of_value(value)), None)
        return _build(wanted or options[0], value)
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        return tuple(_build(item, v) for v in value)
    if dataclasses.is_dataclass(kind):
        return kind(**_build_fields(kind, value))
    return value


def _kind_of(kind) -> str:
    if typing.get_origin(kind) is tuple:
        return "list"
    return "mapping" if dataclasses.is_dataclass(kind) else "scalar"


def _kind_of_value(value) -> str:
    return "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else "scalar"


def _build_fields(kind, value: dict) -> dict:
    return {name: _build(hint, value.get(name)) for name, hint in _fields(kind)}


def _unbuild(value):
    if dataclasses.is_dataclass(value):
        out = {}
        for name, _ in _fields(type(value)):
            sub = _unbuild(getattr(value, name))
            if sub is not None:
                out[name] = sub
        return out
    if isinstance(value, tuple):
        return [_unbuild(v) for v in value]
    return value
