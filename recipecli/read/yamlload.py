"""Safe YAML loading that remembers where every value was written.

PyYAML's SafeLoader alone is not enough for files that travel between teammates: it silently
keeps the last of two duplicate keys, expands alias bombs before anyone can look at them, recurses
until Python's stack overflows on deep nesting, and drops positions. So the file is checked in
stages that each bound the work of the next: size and encoding, then the event stream (depth,
aliases, tags; iterative, so nothing recurses), then the node graph is walked into plain Python
values with a position for every path.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InvalidRecipe, Location, Problem, json_path

MAX_BYTES = 1 << 20  # a recipe is a few KB; refuse tens of MB before parsing anything
MAX_DEPTH = 32  # recipes nest 4 deep; thousands of '[' would overflow the composer's recursion
MAX_ALIASES = 100  # anchors are rare in recipes; bombs need many references
MAX_NODES = 100_000  # nodes after alias expansion: a billion-laughs file exceeds it at once
MAX_DIGITS = 100  # the largest recipe field is a 10-digit seed
# libyaml parses about ten times faster than pure Python, and validate should start instantly.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path_ = tuple  # a JSON path as a tuple of keys and indexes: ("lora", "r"), ("data", "datasets", 0)

_TAG = "tag:yaml.org,2002:"
# Plain scalars are read by the YAML 1.2 core schema, what editors, yq and every other YAML 1.2
# tool do, not by PyYAML's YAML 1.1: there 1e-4 is text, 010 is 8, 0x10 is 16 and on/yes/no are
# booleans. The forms the two versions read differently, or that no recipe means (octal, hex,
# a leading zero), are refused with a hint rather than guessed.
_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"([-+]?)\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
_OCTAL_OR_HEX = re.compile(r"[-+]?0(o[0-7]+|x[0-9a-fA-F]+)")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+")


@dataclass(frozen=True)
class Document:
    """A loaded YAML mapping with the location of every key and value."""

    file: str
    data: dict
    values: dict  # path tuple -> Location of the value
    keys: dict  # path tuple -> Location of the key that names it


def load_file(path: str | Path) -> Document:
    """Read and check one recipe file.

    Args:
        path: the file to read.

    Returns:
        The document with positions.

    Raises:
        InvalidRecipe: with one problem naming the file, line and what to do.
    """
    name = str(path)
    start = Location(name, 1, 1)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise _fail(start, "file not found", "check the path; extends paths are relative to the file that names them") from None
    except OSError as exc:  # a symlink loop, a path through a file, no permission on a folder
        raise _fail(start, f"cannot open: {exc.strerror}", "check the path and its symbolic links") from None
    if stat.S_ISDIR(mode):
        raise _fail(start, "is a directory, not a recipe file", "pass a .yaml file, e.g. recipes/tiny-demo.yaml")
    if not stat.S_ISREG(mode):
        # Opening a FIFO with no writer blocks forever; a device can be endless.
        raise _fail(start, "not a regular file (a pipe, socket or device)", "pass a recipe file saved on disk")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _fail(start, f"cannot read: {exc.strerror}", "check the file's permissions") from None
    if len(raw) > MAX_BYTES:
        raise _fail(start, f"file is larger than {MAX_BYTES // 1024} KiB", "a recipe is a few KB of YAML; is this the right file?")
    return load_text(raw, name)


def load_text(raw: bytes, name: str) -> Document:
    """Check and parse recipe bytes; see :func:`load_file`."""
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise _fail(Location(name, line, 1), "binary data (NUL byte)", "a recipe is a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _fail(Location(name, line, col), f"not UTF-8 (byte 0x{raw[exc.start]:02x})",
                    "save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")
    tagged = _check_events(text, name)
    root = _clearly(lambda loader: yaml.compose(text, Loader=loader), name)
    if root is None:
        raise _fail(Location(name, 1, 1), "empty recipe (no YAML content)",
                    "start from a shipped recipe, e.g. recipes/tiny-demo.yaml")
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        raise _fail(_loc(root, name), f"the top level is {kind}, not a mapping",
                    "a recipe is a mapping of sections: recipe_version, name, model, method, data...")
    walker = _Walker(name, tagged)
    data = walker.value(root, ())
    return Document(name, data, walker.values, walker.keys)


def _check_events(text: str, name: str) -> set:
    """Bound depth, aliases and tags on the event stream, before anything is built.

    Returns:
        The (line, column) of each scalar with an explicit tag (!!str), for the walker.
    """
    return _clearly(lambda loader: _walk_events(yaml.parse(text, Loader=loader), name), name)


def _clearly(step, name: str):
    """Run a parsing step with libyaml; on a YAML error, explain it with the pure-Python parser.

    libyaml's messages are terse (no tab hint, no alias name, its own depth limit), so the broken
    file is read again by the parser whose message names the problem. Errors are rare: the fast
    path stays fast.
    """
    try:
        return step(_LOADER)
    except yaml.YAMLError as fast_error:
        try:
            step(yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc, name) from None
        raise _yaml_problem(fast_error, name) from None


def _walk_events(events, name: str) -> set:
    depth = aliases = 0
    tagged = set()
    for event in events:
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(_loc(event, name), f"nested more than {MAX_DEPTH} levels deep",
                            "a recipe nests a few levels; is this the right file?")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _fail(_loc(event, name), f"more than {MAX_ALIASES} aliases (*ref)",
                            "refused: this looks like an alias bomb; use extends to share settings")
        tag = getattr(event, "tag", None)
        if tag and not _tag_allowed(tag, event):
            shown = tag.replace(_TAG, "!!")
            raise _fail(_loc(event, name), f"YAML tag {shown} is not allowed",
                        "recipes hold plain values; tags such as !!python/object are refused, never executed")
        if tag and isinstance(event, yaml.ScalarEvent):
            tagged.add((event.start_mark.line, event.start_mark.column))
    return tagged


def _tag_allowed(tag: str, event) -> bool:
    if isinstance(event, yaml.MappingStartEvent):
        return tag == _TAG + "map"
    if isinstance(event, yaml.SequenceStartEvent):
        return tag == _TAG + "seq"
    # !!str and ! (both: keep this as text) are the only tags a value may carry; !!int 010
    # would bring YAML 1.1's octal back.
    return tag in (_TAG + "str", "!")


class _Walker:
    """Turns the node graph into plain values, counting nodes as aliases expand them."""

    def __init__(self, name: str, tagged: set):
        self.name = name
        self.tagged = tagged
        self.nodes = 0
        self.values: dict = {}
        self.keys: dict = {}

    def value(self, node, path: Path_):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _fail(_loc(node, self.name), f"more than {MAX_NODES} values after expanding aliases",
                        "refused: this looks like an alias bomb; use extends to share settings")
        # Aliases can nest what the text does not (x: &a [*a] is a list inside itself): the depth
        # bound of the event stream is checked again on the expanded values.
        if len(path) > MAX_DEPTH:
            raise _fail(_loc(node, self.name), f"nested more than {MAX_DEPTH} levels deep after expanding aliases",
                        "an alias inside its own anchor repeats forever; use extends to share settings")
        self.values[path] = _loc(node, self.name)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def mapping(self, node, path: Path_) -> dict:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                raise _fail(_loc(key_node, self.name), "merge keys (<<) are not supported",
                            "use extends to reuse a base recipe")
            if not isinstance(key_node, yaml.ScalarNode):
                raise _fail(_loc(key_node, self.name), "a key must be a plain name", "write key: value")
            key = key_node.value  # `1: x` or `yes: x` are names here, not numbers or booleans
            if key in out:
                first = self.keys[path + (key,)]
                raise InvalidRecipe([Problem(
                    _loc(key_node, self.name), json_path(path + (key,)),
                    f"duplicate key '{key}' (first at line {first.line})",
                    "keep one: YAML would silently take the last, hiding a merge conflict")])
            self.keys[path + (key,)] = _loc(key_node, self.name)
            out[key] = self.value(value_node, path + (key,))
        return out

    def scalar(self, node):
        """A value by the YAML 1.2 core schema; quoted, block and tagged scalars are text."""
        text = node.value
        # The parser tags an explicit !!str or ! and no plain scalar with "!"; a plain scalar
        # the resolver tagged is still read by the 1.2 rules below.
        if node.style or node.tag == "!" or self.explicit(node):
            return text
        if _NULL.fullmatch(text):
            return None
        if text in _BOOL:
            return _BOOL[text]
        if _OCTAL_OR_HEX.fullmatch(text) or _LEADING_ZERO.fullmatch(text):
            raise _fail(_loc(node, self.name), f"{text} is octal or hexadecimal (or read so by YAML 1.1)",
                        "write the number in decimal without a leading zero, or quote it to keep it as text")
        if _INT.fullmatch(text):
            if len(text) > MAX_DIGITS:  # Python refuses to parse ints past 4,300 digits
                raise _fail(_loc(node, self.name), f"a whole number of {len(text.lstrip('+-'))} digits",
                            "no recipe field takes a number this large; is a digit repeated?")
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(text)
        if _INF.fullmatch(text):
            return float(_INF.fullmatch(text).group(1) + "inf")
        if _NAN.fullmatch(text):
            return float("nan")
        return text  # dates, yes/no/on/off, 1_000 and 1:30 are text in YAML 1.2

    def explicit(self, node) -> bool:
        """Whether the file wrote ``!!str`` before this plain scalar (``_tag_allowed`` refuses others)."""
        return node.tag == _TAG + "str" and (node.start_mark.line, node.start_mark.column) in self.tagged


def _loc(node_or_event, name: str) -> Location:
    mark = node_or_event.start_mark
    return Location(name, mark.line + 1, mark.column + 1)


def _fail(location: Location, message: str, hint: str) -> InvalidRecipe:
    return InvalidRecipe([Problem(location, "$", message, hint)])


def _yaml_problem(exc: yaml.YAMLError, name: str) -> InvalidRecipe:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    location = Location(name, mark.line + 1, mark.column + 1) if mark else Location(name, 1, 1)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"malformed YAML: {problem}" + (f" ({context})" if context else "")
    if "'\\t'" in problem:
        hint = "indent with spaces; YAML does not allow tabs for indentation"
    else:
        hint = "check indentation and ':' after keys around this line"
    return _fail(location, message, hint)
