"""How resolved recipes are shown to people: YAML in schema order, and field-by-field changes.

Both go through the codec (read/codec.py), as the run folder's recipe.yaml does: what `show`
prints validates wherever it is saved, and `diff` compares what two recipes mean, not how
their paths are spelled.
"""
from __future__ import annotations

import yaml

from ..read import codec
from ..read.load import Resolved, to_recipe

_MISSING = object()


def document(resolved: Resolved) -> dict:
    """What a recipe means: the codec's document of it; for an abstract base (which is no
    Recipe), its defaults-filled document with local paths made absolute."""
    if resolved.abstract:
        return resolved.document()
    return codec.to_document(to_recipe(resolved))


def resolved_yaml(resolved: Resolved) -> str:
    """The recipe as it will run, as YAML, sections in the order the schema lists them."""
    return codec.dump(document(resolved), f"{resolved.file}, resolved: extends merged, defaults filled, "
                                          "paths absolute")


def changes(first: dict, second: dict) -> list[str]:
    """One line per field that differs: ``path: old -> new``, in schema order."""
    a, b = codec.flatten(codec.ordered(first)), codec.flatten(codec.ordered(second))
    lines = []
    for path in list(a) + [p for p in b if p not in a]:
        old, new = a.get(path, _MISSING), b.get(path, _MISSING)
        if old == new:
            continue
        if old is _MISSING:
            lines.append(f"+ {path}: {_show(new)}")
        elif new is _MISSING:
            lines.append(f"- {path}: {_show(old)}")
        else:
            lines.append(f"~ {path}: {_show(old)} -> {_show(new)}")
    return lines


def _show(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
