"""Checkpoints that are whole or absent: written beside the run folder's entries and renamed into
place (``publish``), and checked before a run resumes from one (``to_resume``).

transformers' Trainer writes checkpoint-N/ file by file in place (Trainer._save_checkpoint in
transformers 5.24), so a crash or a full disk mid-save leaves a folder that looks like the
latest checkpoint. trainer.py redirects that write into ``.partial-checkpoint-N/`` and publishes
it here. Files are not fsynced: after a power cut a renamed folder may still hold truncated
files, which ``problem`` finds (sizes against the safetensors header, the zip directory of
torch files, trainer_state.json that loads), so resume never trusts a checkpoint blindly.

Pure Python: nothing here imports torch.
"""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Optional

from ..errors import UsageError

PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR
PARTIAL = ".partial-"  # a folder being written; never matches checkpoint-*
_REPLACED = ".replaced-"
_STEP = re.compile(rf"{PREFIX}-(\d+)")
STATE = "trainer_state.json"
# One of these holds the trained weights: peft's adapter (lora, qlora), or the whole model (full),
# in one file or sharded behind an index.
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
           "model.safetensors.index.json", "pytorch_model.bin.index.json")
# Without them a resumed run restarts its optimizer and schedule: a different run, silently.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt")


def partial(final: Path) -> Path:
    """The folder a save writes into before it is renamed to ``final``."""
    return final.with_name(f"{PARTIAL}{final.name}")


def publish(staged: Path, final: Path) -> None:
    """Rename a completely written folder to its final name.

    An existing ``final`` (a checkpoint of the same step from before a resume, a finished run's
    adapter/ trained further) is moved aside first and removed after: two renames, never a moment
    where a half-written folder carries the final name. A symlink in its place is unlinked, never
    followed.
    """
    old = None
    if final.is_symlink() or final.exists():
        old = final.with_name(f"{_REPLACED}{final.name}")
        _remove(old)
        final.rename(old)
    staged.rename(final)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def discard(staged: Path) -> None:
    """Remove what a failed save wrote, giving its space back (a full disk is a common cause)."""
    shutil.rmtree(staged, ignore_errors=True)


def step_of(folder: Path) -> Optional[int]:
    match = _STEP.fullmatch(folder.name)
    return int(match[1]) if match else None


def problem(folder: Path) -> Optional[str]:
    """Why a checkpoint folder cannot be resumed from; None when it is complete.

    Complete: a folder with a trainer_state.json that loads and is for the folder's step, the
    trained weights, and the optimizer and scheduler states, each file whole.
    """
    if not folder.is_dir():
        return "it is not a folder"
    state = folder / STATE
    if not state.is_file():  # a FIFO or a folder under that name would hang or fail the Trainer
        return f"it has no {STATE}"
    try:
        doc = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"its {STATE} does not load ({e})"
    step = step_of(folder)
    if not isinstance(doc, dict) or doc.get("global_step") != step:
        said = doc.get("global_step") if isinstance(doc, dict) else None
        return f"its {STATE} is for step {said}, not {step}"
    weights = [folder / name for name in WEIGHTS if (folder / name).exists()]
    if not weights:
        return f"it holds no trained weights ({' or '.join(WEIGHTS[:3])})"
    for name in TRAINING_STATE:
        if not (folder / name).exists():
            return f"it has no {name}"
    for file in [*weights, *(folder / name for name in TRAINING_STATE)]:
        broken = _file_problem(file)
        if broken:
            return f"{file.name} {broken}"
    return None


def _file_problem(file: Path) -> Optional[str]:
    """Whether a weights or state file is whole, read from its own structure (no torch)."""
    if not file.is_file():
        return "is not a file"
    size = file.stat().st_size
    if size == 0:
        return "is empty"
    if file.name.endswith(".index.json"):
        try:
            shards = set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"does not load ({e})"
        for shard in sorted(shards):
            broken = _file_problem(file.with_name(shard))
            if broken:
                return f"lists {shard}, which {broken}"
        return None
    if file.suffix == ".safetensors":
        return _safetensors_problem(file, size)
    # torch.save writes a zip archive; a truncated one has lost its central directory at the end.
    return None if zipfile.is_zipfile(file) else "is truncated (not a whole torch file)"


def _safetensors_problem(file: Path, size: int) -> Optional[str]:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the tensors it lists."""
    try:
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > size - 8:
                return "is truncated (its header is cut)"
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        return f"has a broken header ({e})"
    if 8 + length + end != size:
        return f"is truncated ({size:,} bytes, its header lists {8 + length + end:,})"
    return None


def scan(run_dir: Path) -> tuple[Optional[Path], list[str]]:
    """The last complete checkpoint of a run folder, and a note for each newer one that is not.

    Returns:
        (checkpoint or None, notes): each note names a folder and why it is skipped, including
        ``.partial-*`` folders that an interrupted save left.
    """
    found = sorted(((step_of(p), p) for p in run_dir.glob(f"{PREFIX}-*") if step_of(p) is not None),
                   reverse=True)
    notes = [f"{p.name} is skipped: a save that was interrupted (it is removed by the next save)"
             for p in sorted(run_dir.glob(f"{PARTIAL}{PREFIX}-*"))]
    for _, folder in found:
        why = problem(folder)
        if why is None:
            return folder, notes
        notes.append(f"{folder.name} is skipped: {why}")
    return None, notes


def last_complete(run_dir: Path) -> Optional[Path]:
    """The checkpoint --resume continues from, None when there is none complete."""
    return scan(run_dir)[0]


def to_resume(run_dir: Path) -> tuple[Path, list[str]]:
    """The checkpoint to resume from, and notes on the newer ones it skips.

    Raises:
        UsageError: no checkpoint of the run folder is complete; each one is named with its fault.
    """
    checkpoint, notes = scan(run_dir)
    if checkpoint is not None:
        return checkpoint, notes
    if not notes:
        raise UsageError(f"{run_dir} holds no checkpoint to resume from", hint="run without --resume",
                         where=str(run_dir))
    raise UsageError(f"{run_dir} holds no complete checkpoint to resume from: " + "; ".join(notes),
                     hint="start again with --overwrite (or --set output.dir=runs/NEW to keep this folder)",
                     where=str(run_dir))
