"""Reading the data files of a recipe: local .jsonl/.json/.csv/.parquet files and hub datasets,
record by record, raw as written, each numbered by the line (or record) errors point at.

data.py checks and converts what this yields; the two together are the data stage.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from ..read.recipe import LOCAL_DATA_SUFFIXES, Dataset


def fingerprint(spec: Dataset) -> str:
    """Identity of a dataset for the run folder: what was trained on, not just its name.

    Returns:
        ``sha256:<hex>`` of a local file's bytes; ``hub:<id>[/<subset>]:<split>`` for a hub dataset,
        which has no content hash before download.

    Raises:
        DataError: the local file cannot be read.
    """
    if not spec.is_local:
        subset = f"/{spec.subset}" if spec.subset else ""
        return f"hub:{spec.path}{subset}:{spec.split}"
    digest = hashlib.sha256()
    try:
        with open(spec.local_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise DataError(f"{display(spec)}: cannot read: {e.strerror}.") from e
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


def where(spec: Dataset) -> str:
    """Prefix of the position of a record: lines for line-based files, record numbers otherwise."""
    line_based = spec.is_local and spec.local_path.suffix in (".jsonl", ".csv")
    return f"{display(spec)}:{'line' if line_based else 'record'} "


def records(spec: Dataset) -> Iterator[tuple[int, object]]:
    """Yield (1-based line or record number, record) of one dataset, raw as written.

    Raises:
        DataError: an unsupported file type, a missing or unreadable file, text that is not UTF-8,
            invalid JSON (with its line), or a hub dataset that cannot be downloaded.
    """
    if not spec.is_local:
        yield from enumerate(_hub_rows(spec), 1)
        return
    path = spec.local_path
    if path.suffix not in LOCAL_DATA_SUFFIXES:
        raise DataError(f"{display(spec)}: unsupported file type '{path.suffix}'. "
                        f"Hint: use one of {', '.join(LOCAL_DATA_SUFFIXES)}.")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet  # datasets' own dependency; columns stay typed, as written

            yield from enumerate(pyarrow.parquet.read_table(path).to_pylist(), 1)
            return
        # utf-8-sig: files saved by Excel and Windows Notepad start with a byte order mark, which
        # would otherwise become part of the first CSV header or break the first JSON line.
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix == ".jsonl":
                yield from _jsonl_rows(f, display(spec))
            elif path.suffix == ".csv":
                # csv, not pandas: every cell stays the string it was, so "7" is not turned into 7.
                reader = csv.DictReader(f)
                for row in reader:
                    yield reader.line_num, row
            else:
                yield from enumerate(_json_rows(f, display(spec)), 1)
    except FileNotFoundError as e:
        raise DataError(f"{display(spec)}: file not found. Hint: paths are relative to the recipe file.") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{display(spec)}: not UTF-8 text ({e.reason} at byte {e.start}).") from e
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{display(spec)}: cannot read: {e}") from e


def _jsonl_rows(f, name: str) -> Iterator[tuple[int, object]]:
    for line_no, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:line {line_no}: not valid JSON: {e.msg} (column {e.colno}).") from e


def _json_rows(f, name: str) -> list:
    try:
        document = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}.") from e
    if not isinstance(document, list):
        raise DataError(f"{name}: expected a JSON array of records, got {type(document).__name__}. "
                        "Hint: use .jsonl for one record per line.")
    return document


def _hub_rows(spec: Dataset):
    import datasets

    # A split slice ("train[:100]") keeps only the first max_samples rows; datasets still downloads
    # and prepares the whole split (into its cache), so a large set costs its full download once.
    split = spec.split if spec.max_samples is None else f"{spec.split}[:{spec.max_samples}]"
    try:
        loaded = datasets.load_dataset(spec.path, name=spec.subset, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # ConnectionError is an OSError
        raise DataError(
            f"{spec.path}: could not download hub dataset (subset {spec.subset}, split {spec.split}): {e}. "
            "Hint: check the id and your connection, or save it as a local .jsonl/.parquet file and use that path."
        ) from e
    return loaded
