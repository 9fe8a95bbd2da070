"""The JSON Schema: checking a document against it, and filling its defaults.

``schema/recipe.schema.json`` is the single source of truth for the recipe's shape and defaults;
this module only turns jsonschema's findings into located, hinted problems.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
from functools import lru_cache

import jsonschema

from ..errors import Problem, json_path
from ..shipped import SCHEMA_PATH


MAX_PROBLEMS = 50  # per file: more says "wrong file", not "fifty typos"


@lru_cache(maxsize=None)
def schema() -> dict:
    """The recipe schema, read once."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _is_integer(checker, instance) -> bool:
    # JSON Schema counts 8.0 as an integer; torch and TRL do not. A whole-number field takes ints only.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker, instance) -> bool:
    # NaN and infinity are no learning rate, dropout or fraction: every number must be finite.
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and math.isfinite(instance))


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number}))


@lru_cache(maxsize=2)
def _validator(partial: bool):
    body = schema()
    if partial:
        body = _without_required(copy.deepcopy(body))
    return _Validator(body)


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
    # once each, in the order first found, with the first one's hint (the best match's own, before a
    # oneOf's description)
    first: dict = {}
    for p in (p for error in ordered for p in _problems(error, locate)):
        first.setdefault((p.location, p.path, p.message), p)
    problems = list(first.values())
    head, rest = problems[:1], problems[1:]
    rest.sort(key=lambda p: (p.location.file, p.location.line, p.location.column))
    if len(rest) >= MAX_PROBLEMS:
        # A file of thousands of wrong keys is the wrong file: a page of problems says so.
        more = len(rest) - MAX_PROBLEMS + 1
        rest = rest[:MAX_PROBLEMS - 1] + [Problem(rest[MAX_PROBLEMS - 1].location, "$",
                                                  f"and {more} more problems not shown",
                                                  "fix the ones above first; is this the right file?")]
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
        message, hint = _type_problem(sub.get("type"), error.instance)
        return [Problem(locate(path, False), json_path(path), message, hint or description)]
    if error.validator == "pattern":  # the regular expression helps no one: the description says the form
        return [Problem(locate(path, False), json_path(path), f"{_shown(error.instance)} is not of the form "
                        "this field takes", description)]
    if error.validator in ("oneOf", "anyOf"):
        # The branch of the value's own kind says what is wrong inside it (a list of one wrong name).
        # The field's description is the hint: it names every form the value may take.
        # A branch of another kind says nothing about the value: its type, or an enum of names for a
        # mapping or a list (whose content would be echoed).
        inside = [e for e in error.context if e.relative_path or not (
            e.validator == "type" or e.validator == "enum" and isinstance(e.instance, (dict, list)))]
        if inside:
            return [dataclasses.replace(p, hint=description or p.hint) for e in inside for p in _problems(e, locate)]
        return [Problem(locate(path, False), json_path(path), f"{_shown(error.instance)} is not a valid value",
                        description)]
    return [Problem(locate(path, False), json_path(path), error.message[:200], description)]


# YAML 1.1 booleans: YAML 1.2 (what recipes are read as) keeps them as text.
_YAML11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}


def _type_problem(expected, value) -> tuple[str, str]:
    """Message and, where one helps more than the field's description, a hint."""
    wanted = _kind(expected)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number", "write a finite number; .nan and .inf are not values here"
    if isinstance(value, float) and "integer" in _types(expected) and value.is_integer():
        whole = int(value)
        return (f"expected a whole number, got {value!r}",
                f"write {whole} (no decimal point or exponent)" if abs(whole) < 10**15
                else "this is far beyond any sensible value; write a whole number")
    if isinstance(value, str) and "boolean" in _types(expected) and value.lower() in _YAML11_BOOLEANS:
        return f"expected true or false, got text {value!r}", "write true or false (YAML 1.2 reads yes/no/on/off as text)"
    return f"expected {wanted}, got {_shown(value)}", ""


def _types(expected) -> list:
    return expected if isinstance(expected, list) else [expected]


def _shown(value) -> str:
    """A value for a message: scalars as written, collections by kind only.

    A mapping or list may come from a file that is not a recipe at all (a token file named by
    mistake): its content is never echoed.
    """
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null (an empty value)"
    kind = type(value).__name__.replace("str", "text")
    return f"{kind} {value!r}"[:120]


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


# Names other fine-tuning tools use for our fields, which no spelling distance finds.
ALIASES = {
    "lr": "learning_rate", "batch_size": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
    "num_epochs": "epochs", "num_train_epochs": "epochs", "sequence_len": "max_seq_length",
    "max_length": "max_seq_length", "seq_len": "max_seq_length", "lora_r": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "optim": "optimizer", "lr_scheduler_type": "lr_scheduler",
    "load_in_4bit": "bits", "load_in_8bit": "bits", "output_dir": "dir", "base_model": "id",
}


def _unknown_key_hint(key: str, allowed: list[str], path: tuple) -> str:
    """What the writer of an unknown key most likely meant.

    A key that is exactly a field of another section belongs there (``datasets`` at the top is
    ``data.datasets``, not ``data``); a known alias or an abbreviation beats spelling distance
    (``lr`` is learning_rate, not lr_scheduler); then the closest spelling.
    """
    home = _section_with(key)
    if home is not None and home != path:
        return f"'{key}' belongs in {json_path(home)}"
    meant = ALIASES.get(key)
    if meant in allowed:
        return f"did you mean '{meant}'?"
    if meant is not None and _section_with(meant) not in (None, path):
        return f"did you mean '{meant}' in {json_path(_section_with(meant))}?"
    close = [a for a in allowed if _abbreviates(key, a)][:1] or difflib.get_close_matches(
        key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
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
    a section without one (logging.wandb) stays absent unless written. Defaults that depend on
    another field are stated in the schema as ``allOf: [{if, then, else}]`` beside the properties
    (quantization only for qlora; nf4 and double quant only for 4 bits; epochs only without
    max_steps) and are applied once the unconditional ones are in.
    """
    return _fill(copy.deepcopy(data), schema())


def _fill(value, node: dict):
    if isinstance(value, dict):
        props = node.get("properties", {})
        _add_defaults(value, props)
        for condition in node.get("allOf", ()):
            branch = "then" if _Validator(condition["if"]).is_valid(value) else "else"
            _add_defaults(value, condition.get(branch, {}).get("properties", {}))
        for key, sub in props.items():
            if key in value:
                value[key] = _fill(value[key], sub)
    elif isinstance(value, list) and "items" in node:
        value = [_fill(v, node["items"]) for v in value]
    return value


def _add_defaults(value: dict, props: dict) -> None:
    for key, sub in props.items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])


def defaults_of(section: str) -> dict:
    """The defaults of a section, e.g. the quantization a qlora recipe gets when it leaves it out."""
    return _fill({}, schema()["properties"][section])
