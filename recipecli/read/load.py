"""From a recipe file to a typed Recipe: extends, overrides, schema, rules, defaults.

    load_file (each file) -> merge over its extends chain -> apply --set overrides
    -> schema check -> rules -> fill defaults -> Recipe dataclass

Every problem found on the way is collected and raised together in one InvalidRecipe.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InvalidRecipe, Location, Problem
from . import rules, schema
from .recipe import (Architecture, Data, Dataset, Lora, Model, Quantization, Recipe, Training,
                     Wandb)
from .yamlload import Document, load_file, load_text

MAX_EXTENDS = 8  # a chain deeper than this is a mistake, not a design


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

    @property
    def warnings(self) -> list[Problem]:
        return rules.warnings(self.raw, self.locate)

    @property
    def abstract(self) -> bool:
        return self.raw.get("abstract", False) is True

    def with_defaults(self) -> dict:
        return schema.fill_defaults(self.raw)


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
    for number, override in enumerate(overrides, start=1):
        doc = _merge(doc, _override_document(override, number))
    resolved = Resolved(Path(path), doc.data, doc.values, doc.keys)
    problems = schema.check(resolved.raw, resolved.locate, partial=resolved.abstract)
    if not problems:
        problems = rules.check(resolved.raw, resolved.locate)
    if problems:
        raise InvalidRecipe(problems)
    return resolved


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """A runnable Recipe from a file (see :func:`resolve`).

    Raises:
        InvalidRecipe: the file has problems, or it is an abstract base.
    """
    resolved = resolve(path, overrides)
    if resolved.abstract:
        raise InvalidRecipe([Problem(resolved.locate(("abstract",)), "$.abstract",
                                     "this recipe is an abstract base and cannot be run",
                                     "write a recipe that extends it and run that")])
    return to_recipe(resolved.with_defaults(), resolved)


def _load_chain(path: Path, seen: tuple[Path, ...]) -> Document:
    doc = load_file(path)
    base_ref = doc.data.get("extends")
    if base_ref is None:
        return doc
    where = doc.values[("extends",)]
    if not isinstance(base_ref, str):
        return doc  # the schema reports the wrong type with its location
    base_path = rules.local_path(base_ref, path)
    chain = seen + (path.resolve(),)
    if base_path in chain:
        cycle = " -> ".join(p.name for p in chain + (base_path,))
        raise InvalidRecipe([Problem(where, "$.extends", f"extends cycle: {cycle}",
                                     "a base must not extend, directly or not, the recipe that extends it")])
    if len(chain) > MAX_EXTENDS:
        raise InvalidRecipe([Problem(where, "$.extends", f"more than {MAX_EXTENDS} levels of extends",
                                     "flatten the chain of bases")])
    if not base_path.is_file():
        raise InvalidRecipe([Problem(where, "$.extends", f"base recipe not found: {base_path}",
                                     "extends is a path relative to this file, e.g. base/qlora.yaml")])
    try:
        base = _load_chain(base_path, chain)
    except InvalidRecipe as exc:
        problems = [Problem(p.location, p.path, p.message + f" (in the base of {path})", p.hint)
                    for p in exc.problems]
        raise InvalidRecipe(problems) from None
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


def _override_document(text: str, number: int) -> Document:
    """``training.learning_rate=1e-4`` as a one-value document located at '--set N'."""
    name = f"--set {text}"
    dotted, sep, value = text.partition("=")
    keys = dotted.strip().split(".")
    if not sep or not all(keys):
        raise InvalidRecipe([Problem(Location(name, 1, 1), "$", "an override is dotted.key=value",
                                     "e.g. --set training.learning_rate=1e-4")])
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


def to_recipe(doc: dict, resolved: Resolved) -> Recipe:
    """Build the typed Recipe from a checked, defaults-filled document."""
    model = doc["model"]
    model_file = resolved.locate(("model", "id"))
    arch = model.get("architecture")
    method = doc["method"]
    quant = doc.get("quantization", schema.defaults_of("quantization") if method == "qlora" else None)
    data = doc["data"]
    training = doc["training"]
    wandb = doc["logging"].get("wandb")
    return Recipe(
        name=doc["name"],
        description=doc.get("description"),
        model=Model(
            id=model["id"], revision=model["revision"], trust_remote_code=model["trust_remote_code"],
            architecture=Architecture(**arch) if arch else None,
            local_path=rules.local_path(model["id"], Path(model_file.file))
            if rules.is_local_reference(model["id"]) else None),
        method=method,
        quantization=Quantization(**quant) if quant is not None else None,
        lora=_lora(doc["lora"]) if method != "full" else None,
        data=Data(
            datasets=tuple(_dataset(d, resolved.locate(("data", "datasets", i, "path")))
                           for i, d in enumerate(data["datasets"])),
            max_seq_length=data["max_seq_length"], packing=data["packing"],
            completion_only_loss=data["completion_only_loss"], val_fraction=data.get("val_fraction")),
        training=Training(**{k: training.get(k) for k in Training.__dataclass_fields__}),
        wandb=Wandb(project=wandb["project"], entity=wandb.get("entity"), run_name=wandb.get("run_name"),
                    tags=tuple(wandb["tags"]), mode=wandb["mode"]) if wandb else None,
        output_dir=Path(doc["output"].get("dir", f"runs/{doc['name']}")),
        source=resolved.file,
    )


def _lora(section: dict) -> Lora:
    targets = section["target_modules"]
    return Lora(r=section["r"], alpha=section["alpha"], dropout=section["dropout"],
                target_modules=targets if isinstance(targets, str) else tuple(targets))


def _dataset(section: dict, where: Location) -> Dataset:
    path = section["path"]
    return Dataset(path=path, format=section["format"], split=section["split"], subset=section.get("subset"),
                   max_samples=section.get("max_samples"),
                   local_path=rules.local_path(path, Path(where.file)) if rules.is_local_reference(path) else None)

