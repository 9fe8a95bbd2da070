"""How resolved recipes are shown to people: YAML in schema order, and field-by-field changes."""
from __future__ import annotations

import yaml

from ..read.load import Resolved
from ..read.schema import schema

_MISSING = object()


def resolved_yaml(resolved: Resolved) -> str:
    """The recipe as it will run, as YAML, sections in the order the schema lists them."""
    body = yaml.safe_dump(_ordered(resolved.with_defaults(), schema()), sort_keys=False,
                          default_flow_style=False, allow_unicode=True)
    return f"# {resolved.file}, resolved: extends merged, defaults filled\n{body}"


def _ordered(value, node: dict):
    if isinstance(value, dict):
        props = node.get("properties", {})
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: _ordered(value[k], props.get(k, {})) for k in keys}
    if isinstance(value, list):
        return [_ordered(v, node.get("items", {})) for v in value]
    return value


def changes(first: dict, second: dict) -> list[str]:
    """One line per field that differs: ``path: old -> new``, in schema order."""
    a, b = _flatten(_ordered(first, schema())), _flatten(_ordered(second, schema()))
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


def _flatten(value, prefix: str = "") -> dict:
    """Mappings become dotted paths; lists stay whole values (they replace, they do not merge)."""
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def _show(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
