"""Reading the data files of a recipe: local .jsonl/.json/.csv/.parquet files and hub datasets,
record by record, raw as written, each with the place errors about it point at.

A record of a .jsonl, .json or .csv file is placed at the line and column it starts on; an error
about one of its fields goes further, to the line and column of the field's value, found in the
JSON text the record was parsed from (only when there is an error, so reading costs nothing
extra). Parquet files and hub datasets have no lines: their records are numbered. Every error
prints as ``file:line:col: $.field: message`` (or ``file: $.field: record N: message``).

data.py checks and converts what this yields; the two together are the data stage.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from ..errors import DataError, Location, json_path
from ..read.recipe import LOCAL_DATA_SUFFIXES, Dataset

Part = Union[str, int]  # a field name or a list index, as in $.messages[2].role

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # what JSON allows between tokens


@dataclass(slots=True)  # not frozen: a frozen dataclass is built ~3x slower, once per record
class Place:
    """Where one record was read, so that an error about it names the file, line and field."""

    name: str  # the dataset as messages name it (see display)
    number: int  # 1-based record number
    line: Optional[int] = None  # where the record starts; None for parquet and hub datasets
    column: int = 1
    source: Optional[str] = None  # JSON text holding the record, to find a field's value in
    start: int = 0  # offset of the record in source; line and column are its position
    header_line: Optional[int] = None  # of a CSV file, whose header names every record's fields

    def error(self, message: str, hint: str = "", parts: tuple[Part, ...] = ()) -> DataError:
        """A DataError about the record, or about the value at ``parts`` inside it."""
        path = json_path(parts)
        if self.line is None:
            return DataError(f"record {self.number}: {message}", hint, where=self.name, path=path)
        line, column = self.line, self.column
        if self.source is not None:
            offset = _position(self.source, self.start, parts)
            line += self.source.count("\n", self.start, offset)
            newline = self.source.rfind("\n", self.start, offset)
            column = self.column + offset - self.start if newline < 0 else offset - newline
        return DataError(message, hint, where=Location(self.name, line, column), path=path)

    def header_error(self, message: str, hint: str, parts: tuple[Part, ...]) -> DataError:
        """A DataError about a column of a CSV file, at its header."""
        return DataError(message, hint, where=Location(self.name, self.header_line, 1), path=json_path(parts))


def kind(value: object) -> str:
    """A value's type in JSON's words, as the file says it: an object, a list, a number..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def fingerprint(spec: Dataset) -> str:
    """Identity of a dataset for the run folder: what was trained on, not just its name.

    Returns:
        ``sha256:<hex>`` of a local file's bytes; ``hub:<id>[/<subset>]:<split>[:<data_files>]`` for a hub dataset,
        which has no content hash before download.

    Raises:
        DataError: the local file cannot be read.
    """
    if not spec.is_local:
        subset = f"/{spec.subset}" if spec.subset else ""
        files = f":{','.join(spec.data_files)}" if spec.data_files else ""
        return f"hub:{spec.path}{subset}:{spec.split}{files}"
    _check_regular_file(spec)
    digest = hashlib.sha256()
    try:
        with open(spec.local_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", where=display(spec)) from e
    return f"sha256:{digest.hexdigest()}"


def display(spec: Dataset) -> str:
    """How messages name a dataset: a hub id as written, a local file relative to the working
    directory when it lies below it, else its absolute path."""
    if not spec.is_local:
        return spec.path
    try:
        return str(spec.local_path.relative_to(Path.cwd()))
    except ValueError:
        return str(spec.local_path)


def records(spec: Dataset) -> Iterator[tuple[Place, object]]:
    """Yield (place, record) for each record of one dataset, raw as written.

    Raises:
        DataError: an unsupported file type, a missing, unreadable or non-regular file (a FIFO
            would block forever), text that is not UTF-8, invalid JSON, a CSV row whose cells do
            not match the header, or a hub dataset that cannot be downloaded; each located.
    """
    name = display(spec)
    if not spec.is_local:
        yield from ((Place(name, n), row) for n, row in enumerate(_hub_rows(spec), 1))
        return
    path = spec.local_path
    kind = path.suffix.lower()
    if kind not in LOCAL_DATA_SUFFIXES:
        raise DataError(f"unsupported file type '{path.suffix}'", f"use one of {', '.join(LOCAL_DATA_SUFFIXES)}",
                        where=name)
    _check_regular_file(spec)
    try:
        if kind == ".parquet":
            import pyarrow.parquet  # datasets' own dependency; columns stay typed, as written

            table = pyarrow.parquet.read_table(path).to_pylist()
            yield from ((Place(name, n), row) for n, row in enumerate(table, 1))
            return
        # utf-8-sig: files saved by Excel and Windows Notepad start with a byte order mark, which
        # would otherwise become part of the first CSV header or break the first JSON line.
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".json": _json_rows}[kind]
            yield from rows(f, name)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, name) from e
    except json.JSONDecodeError as e:  # of a .json file; .jsonl lines are located in _jsonl_rows
        raise DataError(f"not valid JSON: {e.msg}", "fix the JSON syntax at this place",
                        where=Location(name, e.lineno, e.colno)) from e
    except RecursionError as e:  # json recurses once per nesting level: thousands of '[' exhaust it
        raise DataError("nested too deeply to read (thousands of levels)", "is this the right file?",
                        where=name) from e
    except csv.Error as e:  # a cell over the csv module's field limit, a NUL byte
        raise DataError(f"not readable as CSV: {e}", "check the file is comma-separated text", where=name) from e
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"cannot read: {e}", where=name) from e


def _check_regular_file(spec: Dataset) -> None:
    path = spec.local_path
    if path.is_file():
        return
    if not path.exists():
        raise DataError("file not found", "paths in a recipe are relative to the recipe file", where=display(spec))
    what = "a folder" if path.is_dir() else "not a regular file (a pipe or device)"
    raise DataError(f"is {what}", "name a .jsonl, .json, .csv or .parquet file", where=display(spec))


def _not_utf8(path: Path, name: str) -> DataError:
    """Locate the first byte that is not UTF-8, reading line by line (the file may be large)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                before = raw[:e.start].decode("utf-8")
                column = len(before.removeprefix("\ufeff") if line_no == 1 else before) + 1
                return DataError(f"not UTF-8 (byte 0x{raw[e.start]:02x})",
                                 "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 OLD > NEW)",
                                 where=Location(name, line_no, column))
    return DataError("not UTF-8", "save the file as UTF-8", where=name)  # changed while being read


def _jsonl_rows(f, name: str) -> Iterator[tuple[Place, object]]:
    number = 0
    for line_no, line in enumerate(f, 1):
        # Without its line break: json would count a column after it as one on the next line.
        text = line.rstrip("\r\n")
        start = _SPACE.match(text).end()
        if start == len(text):
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg}", "each line of a .jsonl file is one JSON object",
                            where=Location(name, line_no, e.colno)) from e
        number += 1
        yield Place(name, number, line_no, start + 1, text, start), record


def _json_rows(f, name: str) -> Iterator[tuple[Place, object]]:
    """The elements of a top-level JSON array, each placed at the line and column it starts on.

    Decoded one element at a time with json's own decoder, which reports where each ends.
    """
    text = f.read()
    pos = _SPACE.match(text).end()
    if not text.startswith("[", pos):
        document = json.loads(text)  # raises, located, unless the file is valid JSON
        raise DataError(f"expected a JSON array of records, got {kind(document)}",
                        "a .json file holds [record, record, ...]; use .jsonl for one record per line",
                        where=_location(name, text, pos))
    pos = _SPACE.match(text, pos + 1).end()
    number = 0
    while not text.startswith("]", pos):
        value, end = _DECODER.raw_decode(text, pos)  # its errors are located in the whole text
        number += 1
        location = _location(name, text, pos)
        yield Place(name, number, location.line, location.column, text, pos), value
        pos = _SPACE.match(text, end).end()
        if text.startswith(",", pos):
            comma, pos = pos, _SPACE.match(text, pos + 1).end()
            if text.startswith("]", pos):
                raise json.JSONDecodeError("Illegal trailing comma before end of array", text, comma)
        elif not text.startswith("]", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    pos = _SPACE.match(text, pos + 1).end()
    if pos < len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def _location(name: str, text: str, offset: int) -> Location:
    return Location(name, text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset))


def _csv_rows(f, name: str) -> Iterator[tuple[Place, object]]:
    """Rows as {column: cell}; csv, not pandas, so every cell stays the string it was ("7" stays "7").

    A row with more or fewer cells than the header is refused rather than padded (as
    csv.DictReader pads with None): a cell with an unquoted comma or line break shifts every cell
    after it, and a padded row would train on shifted text.
    """
    reader = csv.reader(f)
    header = next(reader, None)
    while header == []:  # blank lines above the header
        header = next(reader, None)
    if header is None:
        return
    header_line = reader.line_num
    if len(header) == 1 and any(sep in header[0] for sep in ";\t"):
        sep = ";" if ";" in header[0] else "tab"
        raise DataError(f"the header is one column, {header[0]!r}: the file is separated by {sep}, not commas",
                        "save it as comma-separated CSV (Excel: CSV UTF-8)", where=Location(name, header_line, 1))
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"column {', '.join(map(repr, twice))} appears twice in the header",
                        "give every column its own name", where=Location(name, header_line, 1))
    number = 0
    while True:
        line_no = reader.line_num + 1  # where the row starts; a quoted cell may span lines
        row = next(reader, None)
        if row is None:
            return
        if not any(row):  # a blank line, or a row of empty cells as spreadsheets leave at the end
            continue
        if len(row) != len(header):
            lacks = f"it lacks {', '.join(header[len(row):])}" if len(row) < len(header) else "more cells than columns"
            raise DataError(f"this row has {len(row)} cells, the header has {len(header)} columns ({lacks})",
                            "quote cells that hold commas or line breaks (\"a, b\"), and give every row "
                            "one cell per column", where=Location(name, line_no, 1))
        number += 1
        yield Place(name, number, line_no, header_line=header_line), dict(zip(header, row))


def _position(text: str, offset: int, parts: tuple[Part, ...]) -> int:
    """Offset of the value at ``parts`` inside the JSON value at ``offset``; where a part is not
    there, the offset of the deepest value that is. ``text`` was parsed before: it is valid."""
    for part in parts:
        inner = _child(text, offset, part)
        if inner is None:
            break
        offset = inner
    return offset


def _child(text: str, offset: int, part: Part) -> Optional[int]:
    is_object = text.startswith("{", offset)
    if is_object != isinstance(part, str) or not (is_object or text.startswith("[", offset)):
        return None
    found, index = None, 0
    pos = _SPACE.match(text, offset + 1).end()
    while text[pos] not in "]}":
        if is_object:
            key, pos = json.decoder.scanstring(text, pos + 1)
            pos = _SPACE.match(text, _SPACE.match(text, pos).end() + 1).end()  # past the colon
            if key == part:
                found = pos  # json keeps the last of duplicate keys: so does this
        elif index == part:
            return pos
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _SPACE.match(text, pos).end()
        if text[pos] == ",":
            pos = _SPACE.match(text, pos + 1).end()
        index += 1
    return found


def _hub_rows(spec: Dataset):
    import datasets

    # A split slice ("train[:100]") keeps only the first max_samples rows; datasets still downloads
    # and prepares the whole split (into its cache), so a large set costs its full download once.
    split = spec.split if spec.max_samples is None else f"{spec.split}[:{spec.max_samples}]"
    try:
        loaded = datasets.load_dataset(spec.path, name=spec.subset, split=split,
                                       data_files=list(spec.data_files) if spec.data_files else None)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # ConnectionError is an OSError
        raise DataError(f"could not download hub dataset (subset {spec.subset}, split {spec.split}): {e}",
                        "check the id and your connection, or save it as a local .jsonl/.parquet file and "
                        "use that path", where=spec.path) from e
    return loaded
