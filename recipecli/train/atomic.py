"""Files of a run folder written whole or not at all: a full disk or a crash while writing leaves
the previous version (or none), never a truncated run.yaml, recipe.yaml, estimate.json or loss.png.
Folders (checkpoints, the adapter) are checkpoints.py's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def write(file: Path, data: Union[str, bytes]) -> None:
    """Write ``data`` (text as UTF-8) beside ``file`` and rename it into place.

    Raises:
        OSError: the write failed (a full disk); ``file`` is as it was and no temporary is left.
    """
    partial = file.with_name(f".{file.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(partial, file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
