"""What a path or an id written in a recipe refers to, and where it lies.

One rule for every reference: a path is relative to the file that wrote it (a recipe, or its
base), ``~`` is the home folder, and a ``--set`` override is relative to the current directory,
where the person typing it stands. ``output.dir`` is the one exception, relative to the current
directory like every tool's output folder. Nothing here follows symbolic links or opens files: a
reference becomes an absolute, normalized path, and the rules say whether it exists.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .recipe import LOCAL_DATA_SUFFIXES

# The hub's own rules for repository ids: an optional owner and a name, each of letters, digits,
# '-', '_' and '.', not starting with '-' or '.', no '--' or '..', at most 96 characters.
_HUB_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")
HUB_ID_MAX = 96


def is_hub_id(text: str) -> bool:
    """``org/name`` or ``name`` as the Hugging Face hub accepts it."""
    return (len(text) <= HUB_ID_MAX and _HUB_ID.fullmatch(text) is not None
            and "--" not in text and ".." not in text and not text.endswith("."))


def looks_like_path(reference: str) -> bool:
    """Written as a path (./x, ../x, /x, ~/x) rather than as a hub id."""
    return reference.startswith(("./", "../", "/", "~")) or reference in (".", "..")


def is_data_file(reference: str) -> bool:
    """A dataset reference naming a local file: written as a path or ending like a data file."""
    return looks_like_path(reference) or reference.endswith(LOCAL_DATA_SUFFIXES)


def expanded(reference: str) -> Path:
    """``reference`` with ``~`` and ``~user`` expanded; as written where that user, or the home
    directory, does not exist (Path.expanduser raises): the file is then simply not found."""
    try:
        return Path(reference).expanduser()
    except RuntimeError:
        return Path(reference)


def absolute(reference: str, directory: Path) -> Path:
    """``reference`` as an absolute path: ``~`` expanded, relative to ``directory``, normalized.

    Symbolic links are kept as written (a link loop is reported where the path is used, not here).
    """
    path = expanded(reference)
    return Path(os.path.normpath(path if path.is_absolute() else Path(directory).absolute() / path))


def model_folder(model_id: str, directory: Path) -> Path | None:
    """The local folder ``model.id`` names, or None for a hub id.

    A path written as one (./models/x) is local whether it exists or not (a rule reports a missing
    one); a bare ``models/x`` is local when that folder exists, because a hurried user means the
    folder they see, and is a hub id otherwise.
    """
    if looks_like_path(model_id):
        return absolute(model_id, directory)
    candidate = absolute(model_id, directory)
    return candidate if candidate.is_dir() else None
