"""The JSON Schema: checking a document against it, and filling its defaults.

``schema/recipe.schema.json`` is the single source of truth for the recipe's shape and defaults;
this module only turns jsonschema's findings into located, hinted problems.
"""
from __future__ import annotations

import copy
import difflib
import json
from functools import lru_cache

import jsonschema

from ..errors import Problem
from ..shipped import SCHEMA_PATH
from .yamlload import json_path


@lru_cache(maxsize=None)
def schema() -> dict:
    """The recipe schema, read once."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=2)
def _validator(partial: bool) -> jsonschema.Draft202012Validator:
    body = schema()
    if partial:
        body = _without_required(copy.deepcopy(body))
    return jsonschema.Draft202012Validator(body)


def _without_required(node):
    """A base file (abstract: true) may leave out what the recipes extending it provide."""
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def check(data: dict, locate, *, partial: bool = False) -> list[Problem]:
    """Every schema problem of a document, the best match first, the rest in file order.

    Args:
        data: the merged document.
        locate: callable (path tuple, key: bool) -> Location of that value (or its key).
        partial: check an abstract base, where required fields may be missing.
    """
    errors = list(_validator(partial).iter_errors(data))
    if not errors:
        return []
    best = jsonschema.exceptions.best_match(errors)
    ordered = [best] + [e for e in errors if e is not best]
    problems: list[Problem] = []
    for error in ordered:
        for problem in _problems(error, locate):
            if problem not in problems:
                problems.append(problem)
    head, rest = problems[:1], problems[1:]
    rest.sort(key=lambda p: (p.location.file, p.location.line, p.location.column))
    return head + rest


def _problems(error: jsonschema.ValidationError, locate) -> list[Problem]:
    path = tuple(error.absolute_path)
    sub = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = list(sub.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        return [Problem(locate(path + (k,), True), json_path(path + (k,)), f"unknown key '{k}'",
                        _unknown_key_hint(k, allowed, path)) for k in extra]
    if error.validator == "required":
        field = error.message.split("'")[1]
        description = sub.get("properties", {}).get(field, {}).get("description", "")
        where = "the top level" if not path else json_path(path)
        return [Problem(locate(path, False), json_path(path + (field,)),
                        f"missing required field '{field}' in {where}", description)]
    description = _description(path)
    if error.validator == "const":
        return [Problem(locate(path, False), json_path(path),
                        f"{error.instance!r} is not supported: expected {sub['const']!r}", description)]
    if error.validator == "enum":
        allowed = sub["enum"]
        close = difflib.get_close_matches(str(error.instance), [str(a) for a in allowed], n=1)
        hint = f"did you mean '{close[0]}'?" if close else "choose one of: " + ", ".join(map(str, allowed))
        return [Problem(locate(path, False), json_path(path),
                        f"{error.instance!r} is not one of {', '.join(map(str, allowed))}", hint)]
    if error.validator == "type":
        expected = sub.get("type")
        got = type(error.instance).__name__.replace("NoneType", "null").replace("dict", "mapping")
        return [Problem(locate(path, False), json_path(path),
                        f"expected {_kind(expected)}, got {got} {error.instance!r}"[:200], description)]
    if error.validator in ("oneOf", "anyOf"):
        return [Problem(locate(path, False), json_path(path), f"{error.instance!r} is not a valid value"[:200],
                        description)]
    return [Problem(locate(path, False), json_path(path), error.message[:200], description)]


def _kind(expected) -> str:
    names = {"integer": "a whole number", "number": "a number", "string": "text", "boolean": "true or false",
             "object": "a mapping (key: value lines)", "array": "a list"}
    if isinstance(expected, list):
        return " or ".join(names.get(t, t) for t in expected)
    return names.get(expected, str(expected))


def _description(path: tuple) -> str:
    """The description of the value at a document path, or of its nearest described parent."""
    node, found = schema(), ""
    for part in path:
        node = node.get("items", {}) if isinstance(part, int) else node.get("properties", {}).get(part, {})
        found = node.get("description", found)
    return found


def _unknown_key_hint(key: str, allowed: list[str], path: tuple) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) or [
        a for a in allowed if _abbreviates(key, a)][:1]
    if close:
        return f"did you mean '{close[0]}'?"
    home = _section_with(key)
    if home is not None and home != path:
        return f"'{key}' belongs in {json_path(home)}"
    return "allowed here: " + ", ".join(allowed)


def _abbreviates(short: str, full: str) -> bool:
    """grad_accum abbreviates gradient_accumulation_steps: each word a prefix, in order."""
    words = iter(full.split("_"))
    return all(any(w.startswith(part) for w in words) for part in short.split("_") if part)


def _section_with(key: str):
    """The section whose properties include ``key``, for keys written in the wrong place."""
    for section, sub in schema()["properties"].items():
        if key in sub.get("properties", {}):
            return (section,)
    return None


def fill_defaults(data: dict) -> dict:
    """A copy of a valid document with every schema default filled in.

    A section with a default (``{}``) appears even when absent, so its fields get their defaults;
    a section without one (quantization, logging.wandb) stays absent unless written.
    """
    return _fill(copy.deepcopy(data), schema())


def _fill(value, node: dict):
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill(value[key], sub)
    elif isinstance(value, list) and "items" in node:
        value = [_fill(v, node["items"]) for v in value]
    return value


def defaults_of(section: str) -> dict:
    """The defaults of a section, e.g. the quantization a qlora recipe gets when it leaves it out."""
    return _fill({}, schema()["properties"][section])
