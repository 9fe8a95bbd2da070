"""The walk over axolotl.py's table, in both directions.

    from_axolotl: Axolotl document (with positions) -> recipe document + what was not converted
    to_axolotl:   resolved recipe document            -> Axolotl mapping + what Axolotl cannot hold

Every key of the source is either read by its row or becomes an ``Unconverted`` at its line; the
caller decides whether that stops the conversion (it does, unless --lossy).
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import Location, json_path
from ..read import paths
from ..read.codec import flatten
from ..read.yamlload import Document
from . import axolotl
from .axolotl import ABSENT, DATASET_ROWS, TOP_ROWS, UNSUPPORTED, NotConverted, get, row_for
from .axolotl_keys import NO_COUNTERPART

# Where the recipe's name and description travel in an Axolotl file, which has no key for them:
# comment lines `--to axolotl` writes and `--from axolotl` reads back (values as JSON strings).
HEADER = re.compile(r'# recipe (name|description|distributed): (".*"|\{.*\})\s*$')
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Unconverted:
    """A key (or recipe field) that was not converted, where it was written, and why."""

    location: Location
    key: str  # as the source spells it: lora_r, datasets[0].type, training.warmup_ratio
    value: Any
    why: str
    hint: str = ""


@dataclass
class Conversion:
    document: dict  # the converted document (a recipe, or an Axolotl config)
    unconverted: list[Unconverted] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # keys written without a value (Axolotl's default)
    origin: dict = field(default_factory=dict)  # recipe JSON path -> Location of the key it came from


def header_values(text: str) -> dict:
    """name and description from the comment lines at the top of an Axolotl file."""
    found = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = HEADER.match(line)
        if match:
            try:
                value = json.loads(match.group(2))
            except ValueError:
                continue
            if isinstance(value, str if match.group(1) != "distributed" else dict):
                found[match.group(1)] = value
    return found


def recipe_name(stem: str) -> str:
    """A recipe name from a file name: the characters a name allows, starting with one that may start it."""
    name = _NAME_CHARS.sub("-", stem).lstrip("._-")[:100]
    return name or "converted"


def from_axolotl(doc: Document, header: dict, out_dir: Optional[Path]) -> Conversion:
    """The recipe document an Axolotl config becomes.

    Args:
        doc: the Axolotl file, loaded by read.yamlload (safe, bounded, with positions).
        header: name/description from the file's comments (:func:`header_values`).
        out_dir: the folder the recipe will be written to, to write local paths relative to it;
            None writes them absolute (the recipe goes to stdout).
    """
    cfg = doc.data
    source = Path(doc.file)
    conv = Conversion({"recipe_version": 1, "name": header.get("name") or recipe_name(source.stem),
                       "description": header.get("description") if "name" in header
                       else f"Converted from the Axolotl config {source.name}"})
    if conv.document["description"] is None:
        del conv.document["description"]
    if isinstance(header.get("distributed"), dict):  # the launch, as --to axolotl wrote it
        conv.document["distributed"] = dict(header["distributed"])
    for key, value in cfg.items():
        where = doc.keys[(key,)]
        if value is None:
            conv.empty.append(key)
            continue
        row = row_for(key, TOP_ROWS)
        if row is None:
            if key in UNSUPPORTED and axolotl.unsupported(key, value) is None:
                continue  # switched off: what recipe does
            why, hint = axolotl.unsupported(key, value) or _unknown(key)
            conv.unconverted.append(Unconverted(where, key, value, why, hint))
            continue
        _apply(conv, row, value, cfg, where, key, (), doc.values[(key,)])
    if isinstance(cfg.get("datasets"), list):
        entries = [_dataset(conv, doc, i, entry) for i, entry in enumerate(cfg["datasets"])]
        # An entry whose type was not converted cannot be read at all: --lossy leaves it out.
        conv.document.setdefault("data", {})["datasets"] = [e for e in entries if "format" in e]
    elif cfg.get("datasets") is not None:
        conv.unconverted.append(Unconverted(doc.values[("datasets",)], "datasets", cfg["datasets"],
                                            "expected a list of datasets", "datasets: [{path: ..., type: ...}]"))
    _defaults(conv, doc)
    entries = cfg.get("datasets") if isinstance(cfg.get("datasets"), list) else []
    types = {e.get("type") for e in entries if isinstance(e, dict) and isinstance(e.get("type"), str)}
    conv.notes += [note for kind, note in axolotl.TYPE_NOTES.items() if kind in types]
    _local_paths(conv.document, out_dir)
    conv.unconverted.sort(key=lambda u: (u.location.line, u.location.column))  # in file order
    return conv


def _apply(conv: Conversion, row, value, context: dict, where: Location, key: str, prefix: tuple,
           value_at: Location) -> dict:
    try:
        updates = row.read(value, context)
    except NotConverted as e:
        conv.unconverted.append(Unconverted(where, key, value, e.why, e.hint))
        return {}
    if axolotl.NOTE in updates:  # converted to what recipe has closest, said where
        updates = dict(updates)
        conv.notes.append(f"{where}: key '{key}': {updates.pop(axolotl.NOTE)}")
    for dotted, new in updates.items():
        # A dotted name is a field of the document (a dataset's legacy `conversation` names the
        # template every conversation renders with); a plain one, a field of the dataset entry.
        document_field = not prefix or "." in dotted
        path = tuple(dotted.split(".")) if document_field else prefix + (dotted,)
        if not document_field:  # a dataset entry: its fields are set by the caller
            conv.origin[json_path(path)] = value_at
            continue
        before = get(conv.document, dotted)
        if before is not ABSENT and before != new:  # two keys that say otherwise (flash_attention and sdp_attention)
            first = conv.origin[json_path(path)]
            conv.unconverted.append(Unconverted(where, key, value, f"makes {dotted} {new!r}, but line {first.line} "
                                                f"made it {before!r}", "keep one of the two keys"))
            continue
        _set(conv.document, path, new)
        conv.origin[json_path(path)] = value_at
    return updates


def _dataset(conv: Conversion, doc: Document, i: int, entry) -> dict:
    where = doc.values[("datasets", i)]
    if not isinstance(entry, dict):
        conv.unconverted.append(Unconverted(where, f"datasets[{i}]", entry, "a dataset is a mapping",
                                            "write {path: ..., type: ...}"))
        return {}
    out: dict = {}
    if "type" not in entry:  # read as a type of none: Axolotl's pre-tokenized data
        out.update(_apply(conv, row_for("type", DATASET_ROWS), None, entry, where, f"datasets[{i}].type",
                          ("data", "datasets", i), where))
    for key, value in entry.items():
        name = f"datasets[{i}].{key}"
        key_at, value_at = doc.keys[("datasets", i, key)], doc.values[("datasets", i, key)]
        row = row_for(key, DATASET_ROWS)
        if row is None:
            known = [r.key for r in DATASET_ROWS]
            close = difflib.get_close_matches(key, known, n=1)
            conv.unconverted.append(Unconverted(key_at, name, value, "no recipe field for this dataset key",
                                                f"did you mean '{close[0]}'?" if close else ""))
            continue
        if value is None and key != "type":
            conv.empty.append(name)
            continue
        for dotted, new in _apply(conv, row, value, entry, key_at, name, ("data", "datasets", i), value_at).items():
            if "." in dotted:
                continue  # a field of the document, set by _apply
            if isinstance(new, dict) and isinstance(out.get(dotted), dict):
                out[dotted] = {**out[dotted], **new}  # fields read by several keys (field_messages, mappings)
            else:
                out[dotted] = new
    return out


def _defaults(conv: Conversion, doc: Document) -> None:
    """Axolotl's defaults where they differ from the recipe's, and what an adapter needs."""
    recipe, cfg = conv.document, doc.data
    recipe.setdefault("method", "full")
    lora = recipe["method"] in ("lora", "qlora")
    for dotted, value in axolotl.DEFAULTS.items():
        if dotted.startswith("lora.") and not lora:
            continue
        path = tuple(dotted.split("."))
        other = axolotl.UNLESS.get(dotted)
        if _get(recipe, path) is ABSENT and (other is None or _get(recipe, tuple(other.split("."))) is ABSENT):
            _set(recipe, path, value)
            conv.origin[json_path(path)] = Location(doc.file, 1, 1)
    if lora:
        where = doc.keys[("adapter",)]
        for key, hint in axolotl.ADAPTER_NEEDS.items():
            if cfg.get(key) is None and not (key == "lora_target_modules" and cfg.get("lora_target_linear") is True):
                conv.unconverted.append(Unconverted(where, "adapter", cfg["adapter"],
                                                    f"{key} is not set and Axolotl's default is peft's, per model", hint))


def _local_paths(recipe: dict, out_dir: Optional[Path]) -> None:
    """Axolotl reads local paths relative to where it runs; a recipe, relative to itself."""
    model = recipe.get("model", {})
    for name in ("id", "tokenizer"):
        if isinstance(model.get(name), str) and paths.model_folder(model[name], Path.cwd()) is not None:
            model[name] = _relative(paths.model_folder(model[name], Path.cwd()), out_dir, "./")
    for dataset in recipe.get("data", {}).get("datasets", []):
        if isinstance(dataset.get("path"), str) and paths.is_data_file(dataset["path"]):
            dataset["path"] = _relative(paths.absolute(dataset["path"], Path.cwd()), out_dir, "")


def _relative(path: Path, out_dir: Optional[Path], prefix: str) -> str:
    if out_dir is None:
        return str(path)
    relative = os.path.relpath(path, out_dir.absolute())
    return relative if relative.startswith("..") else prefix + relative


def to_axolotl(doc: dict, locate, extends_at: Optional[Location]) -> Conversion:
    """The Axolotl config of a resolved recipe document (``codec.to_document``).

    Args:
        doc: the recipe document, defaults filled and local paths absolute.
        locate: where each recipe value was written (``load.Resolved.locate``).
        extends_at: where the recipe named its base, if it has one (it is resolved already).
    """
    conv = Conversion({})
    for row in TOP_ROWS:
        _write(conv, row, doc, locate, ())
    for i, dataset in enumerate(doc["data"]["datasets"]):
        entry = Conversion({})
        for row in DATASET_ROWS:
            _write(entry, row, dataset, lambda path, key=False: locate(("data", "datasets", i) + path, key), ())
        conv.document["datasets"].append(entry.document)
        conv.unconverted += [Unconverted(u.location, f"data.datasets[{i}].{u.key}", u.value, u.why, u.hint)
                             for u in entry.unconverted]
    # name, description and the launch (distributed) travel in the header comment.
    covered = {p for row in TOP_ROWS for p in row.recipe} | {"recipe_version", "name", "description"} | {
        p for p in flatten(doc) if p.startswith("distributed.")}
    for dotted, value in flatten({k: v for k, v in doc.items() if k != "data"} | {"data": {
            k: v for k, v in doc["data"].items() if k != "datasets"}}).items():
        # a row that writes a field writes what is inside it too (lora.target_modules.pattern)
        owned = dotted in covered or any(dotted.startswith(p + ".") for p in covered)
        if not owned and value != [] and axolotl.AXOLOTL_ALWAYS.get(dotted, ABSENT) != value:
            conv.unconverted.append(Unconverted(locate(tuple(dotted.split("."))), dotted, value,
                                                "Axolotl has no key for it"))
    dataset_fields = {p for row in DATASET_ROWS for p in row.recipe}
    for i, dataset in enumerate(doc["data"]["datasets"]):
        for name, value in dataset.items():
            if name not in dataset_fields:
                conv.unconverted.append(Unconverted(locate(("data", "datasets", i, name)),
                                                    f"data.datasets[{i}].{name}", value, "Axolotl has no key for it"))
    types = {e.get("type") for e in conv.document["datasets"] if isinstance(e.get("type"), str)}
    conv.notes += [note for kind, note in axolotl.TYPE_NOTES.items() if kind in types]
    if extends_at is not None:
        conv.notes.append(f"{extends_at}: key 'extends': resolved: the base's values are written out in full "
                          "(Axolotl has no bases)")
    return conv


def _write(conv: Conversion, row, doc: dict, locate, prefix: tuple) -> None:
    try:
        value = row.write(doc)
    except NotConverted as e:
        path = tuple(row.recipe[0].split(".")) if row.recipe else ()
        conv.unconverted.append(Unconverted(locate(path), row.recipe[0] if row.recipe else row.key,
                                            _get(doc, path), e.why, e.hint))
        return
    if value is not ABSENT and value is not None:
        conv.document[row.key] = value


def _unknown(key: str) -> tuple[str, str]:
    if key in NO_COUNTERPART:
        return "an Axolotl key recipe has no counterpart for", ""
    known = [r.key for r in TOP_ROWS] + list(UNSUPPORTED) + sorted(NO_COUNTERPART)
    close = difflib.get_close_matches(key, known, n=1)
    return ("not a key of Axolotl's configuration (Axolotl would ignore it silently)",
            f"did you mean '{close[0]}'?" if close else "")


def _get(doc: dict, path: tuple):
    node: Any = doc
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _set(doc: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        doc = doc.setdefault(part, {})
    doc[path[-1]] = value
