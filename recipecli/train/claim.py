"""Taking the run folder for one `recipe run`: the checks that refuse it, the lock that keeps a
second run out, and undoing what a setup that fails (or is interrupted) began.

    refuse (flags, a link, what the folder holds) -> mkdir + lock run.lock -> refuse again under
    the lock -> the runner loads -> clear() the old run -> write -> keep() -> train -> unlock

The lock is an fcntl.flock on run.lock, held until the run ends. The operating system releases
it when the process dies, even by SIGKILL, so a lock is never stale and needs no clean-up; the
file stays behind (removing it would let a run that had opened it lock a file no longer there).
Every check happens before anything heavy loads, and --overwrite deletes nothing before the
model and data have loaded: a run refused or failing in setup leaves an old run as it was.

A run folder without a checkpoint or a saved model (a run killed before its first checkpoint)
holds nothing worth keeping: a plain re-run reuses it, and --resume says so.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import yaml

from ..errors import RecipeError, UsageError
from ..read.recipe import Recipe
from . import checkpoints
from .runfolder import (ACCELERATE_CONFIG, ADAPTER, DEEPSPEED_CONFIG, ESTIMATE, FULL_MODEL, LOCK, LOSS_PLOT,
                        METRICS, RECIPE, RUN, check_resumable, last_checkpoint)

# What a run writes before its first checkpoint; a folder holding only these (run.yaml among
# them, which recipecli alone writes) is a run that saved nothing; a distributed run's launch
# configs are written before its first checkpoint too.
LEFTOVERS = frozenset({RECIPE, RUN, ESTIMATE, METRICS, LOSS_PLOT, ACCELERATE_CONFIG, DEEPSPEED_CONFIG})
NEW_DIR = "choose another output.dir (e.g. --set output.dir=runs/NEW)"


@dataclass(frozen=True)
class Contents:
    """What a run folder holds, the lock file aside."""

    entries: frozenset[str]
    checkpoint: Optional[Path]  # the last one
    saved: Optional[Path]  # adapter/ or model/: the run finished

    @property
    def is_run(self) -> bool:
        return RUN in self.entries

    @property
    def reusable(self) -> bool:
        """Empty, or left by a run that saved nothing (killed, at worst, while writing its first
        checkpoint): a new run may take it as it is."""
        unfinished = {name for name in self.entries if name.startswith(checkpoints.PARTIAL)}
        return not self.entries or (self.is_run and self.entries - unfinished <= LEFTOVERS)


def contents(path: Path) -> Optional[Contents]:
    """What the folder holds; None when there is no folder."""
    if not path.is_dir():
        return None
    entries = frozenset(p.name for p in path.iterdir()) - {LOCK}
    saved = next((path / name for name in (ADAPTER, FULL_MODEL) if (path / name).is_dir()), None)
    return Contents(entries, last_checkpoint(path), saved)


class Claim:
    """The run folder, held by this run; see :func:`claimed`."""

    def __init__(self, path: Path, fd: int, *, resume: bool, created: bool, lock_created: bool, owned: bool):
        self.path, self._fd, self._resume = path, fd, resume
        self.resume_from: Optional[Path] = None  # the checkpoint --resume continues from
        self._created, self._lock_created, self._owned = created, lock_created, owned
        self._cleared = self._kept = False

    def clear(self) -> None:
        """Empty the folder for a new run: what --overwrite replaces, or what a run that saved
        nothing left. Call it once every check and load has passed. Resuming keeps everything."""
        if not self._resume:
            for entry in self.path.iterdir():
                if entry.name != LOCK:
                    _remove(entry)
        self._cleared = True

    def keep(self) -> None:
        """Training starts: from now on the folder stays, whatever happens (checkpoints, --resume)."""
        self._kept = True

    def undo(self) -> None:
        """The setup failed: leave no folder behind, or the folder as it was before this run."""
        if self._kept or self._resume:
            return
        if self._cleared or self._created:
            for entry in self.path.iterdir():
                _remove(entry)
            # A folder the user made (empty) or a symbolic link to one stays; one a run made goes.
            if self._owned and not self.path.is_symlink():
                self.path.rmdir()
        elif self._lock_created:
            (self.path / LOCK).unlink(missing_ok=True)


@contextmanager
def claimed(path: Path, recipe: Recipe, *, overwrite: bool, resume: bool) -> Iterator[Claim]:
    """Take the run folder for this run, holding its lock until the block ends.

    Args:
        path: the run folder (``recipe.output_dir``).
        recipe: the recipe about to run; --resume compares it with the folder's recipe.yaml.
        overwrite: replace a run folder (only one recipecli wrote, never through a link).
        resume: continue from the folder's last checkpoint.

    Yields:
        The claim; ``resume_from`` is the checkpoint to continue from. When the block raises
        before ``keep()``, what this run created is removed again.

    Raises:
        UsageError: both flags; output.dir is not a folder, or a link --overwrite would delete
            through; the folder holds a run (without a flag) or something else (--overwrite);
            nothing to resume; another run holds the lock.
    """
    _refuse_request(path, overwrite=overwrite, resume=resume)
    _refuse_contents(path, recipe, overwrite=overwrite, resume=resume)
    before = contents(path)
    created = False
    if not resume:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # atomic: of two runs creating it, one creates it, and both go for the lock
            created = True
        except FileExistsError:
            if not path.is_dir():  # a file in the way of its parents
                raise UsageError("output.dir cannot be created: a file is in the way", NEW_DIR, where=str(path))
        except OSError as e:
            raise UsageError(f"output.dir cannot be created: {e.strerror}", NEW_DIR, where=str(path)) from e
    # One block from the lock on, so that a signal anywhere in it (SIGTERM arrives as
    # KeyboardInterrupt while the setup runs: runner._before_training) undoes what this call made.
    fd = claim = None
    try:
        fd, lock_created = _lock(path)
        # Ours to remove when emptied: a folder a run made, as opposed to an empty one the user made.
        owned = created or (before is not None and (bool(before.entries) or not lock_created))
        claim = Claim(path, fd, resume=resume, created=created, lock_created=lock_created, owned=owned)
        # Again under the lock: a run that held it a moment ago may have finished or failed since.
        _refuse_contents(path, recipe, overwrite=overwrite, resume=resume)
        # The last complete one (checkpoints.problem); UsageError naming each when none is.
        claim.resume_from = checkpoints.to_resume(path)[0] if resume else None
        yield claim
    except BaseException as e:
        if claim is not None:
            try:
                claim.undo()
            except OSError as error:  # the error that stopped the run matters more than this one
                print(f"warning: could not remove what this run created in {path}: {error}", file=sys.stderr)
        elif created and not isinstance(e, UsageError):
            # The folder this call made must not outlive a lock it did not take. Busy (UsageError):
            # another run holds it, and the folder is that run's now, whoever made it.
            with suppress(OSError):
                (path / LOCK).unlink(missing_ok=True)
                path.rmdir()  # only if empty: never anything another process wrote
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


@contextmanager
def holding(path: Path) -> Iterator[None]:
    """Hold an existing run folder's lock for a block that writes into it (``recipe merge``), so a
    ``recipe run --overwrite`` or ``--resume`` cannot replace the adapter it reads meanwhile.

    Raises:
        UsageError: a ``recipe run`` is using the folder right now.
    """
    fd, _ = _lock(path)
    try:
        yield
    finally:
        os.close(fd)


def _refuse_request(path: Path, *, overwrite: bool, resume: bool) -> None:
    """What the command line asks for, before the folder's contents are looked at."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other", "pass one of them", where="--resume")
    if path.is_symlink():
        target = os.readlink(path)
        if overwrite:
            raise UsageError(f"output.dir is a symbolic link (to {target}); --overwrite does not delete through a "
                             "link", f"set output.dir to the folder itself ({path.resolve()}), or remove the link",
                             where=str(path))
        if not path.exists():
            raise UsageError(f"output.dir is a symbolic link to {target}, which does not exist",
                             f"create that folder, or {NEW_DIR}", where=str(path))
    if path.exists() and not path.is_dir():
        raise UsageError("output.dir exists and is not a folder", NEW_DIR, where=str(path))


def _refuse_contents(path: Path, recipe: Recipe, *, overwrite: bool, resume: bool) -> None:
    found = contents(path)
    if resume:
        _refuse_resume(path, recipe, found)
    elif found is None or found.reusable:
        return
    elif overwrite:
        # --overwrite deletes a folder: make sure it is one of ours, not a home directory named by
        # mistake. recipe.yaml is no proof (a folder of recipes has one); run.yaml is recipecli's alone.
        if not found.is_run:
            raise UsageError(f"not a run folder (it has no {RUN}, which only recipecli writes); refusing to delete "
                             "it with --overwrite", NEW_DIR, where=str(path))
    elif not found.is_run:
        raise UsageError("output.dir already exists and is not a run folder",
                         f"{NEW_DIR}; --overwrite replaces run folders only", where=str(path))
    elif found.saved is not None:
        raise UsageError(f"already holds a finished run (its {found.saved.name}/ is there)",
                         f"pass --overwrite to replace it, or {NEW_DIR}", where=str(path))
    elif found.checkpoint is not None:
        raise UsageError(f"already holds a run interrupted at {found.checkpoint.name}",
                         f"continue it with `recipe run {path / RECIPE} --resume`, replace it with --overwrite, "
                         f"or {NEW_DIR}", where=str(path))
    else:
        raise UsageError("already holds a run folder with files of its own",
                         f"pass --overwrite to replace it, or {NEW_DIR}", where=str(path))


def _refuse_resume(path: Path, recipe: Recipe, found: Optional[Contents]) -> None:
    """--resume needs a checkpoint short of the recipe's end, and the recipe the run started with."""
    where = str(path)
    if found is None:
        raise UsageError("--resume: there is no run folder here, so nothing to resume",
                         "run without --resume to start the run", where=where)
    if found.checkpoint is None:
        if found.saved is not None:
            raise UsageError(f"nothing to resume: the run finished at step {_finished_step(path)}; its "
                             f"{found.saved.name} is in {found.saved} (no checkpoint is left to continue from)",
                             f"pass --overwrite to train it again, or {NEW_DIR}", where=where)
        if found.reusable:
            raise UsageError("--resume: no checkpoint was saved in this run folder, so there is nothing to resume",
                             "run without --resume: a run folder that saved nothing is started afresh",
                             where=where)
        if found.is_run:
            raise UsageError("--resume: no checkpoint was saved in this run folder, so there is nothing to resume",
                             f"replace it with --overwrite, or {NEW_DIR}", where=where)
        raise UsageError("--resume: no checkpoint here, and this is not a run folder", NEW_DIR, where=where)
    check_resumable(path, recipe)
    # Judged on the checkpoint a resume would continue from, not the newest folder: a damaged
    # checkpoint-4 beside a whole checkpoint-2 leaves steps to train. None whole: to_resume names them.
    complete = checkpoints.last_complete(path)
    if complete is None:
        return
    step = checkpoints.step_of(complete)
    end = _end_step(recipe, complete)
    if end is not None and step >= end:
        what = "the run finished" if found.saved is not None else f"its {complete.name} is"
        saved = f"; its {found.saved.name} is in {found.saved}" if found.saved is not None else ""
        raise UsageError(f"nothing to resume: {what} at step {step} (this recipe ends at step {end}){saved}",
                         f"to train longer, raise training.max_steps above {step} "
                         f"(--set training.max_steps={2 * step}) and --resume", where=where)


def _end_step(recipe: Recipe, checkpoint: Path) -> Optional[int]:
    """The step the recipe trains to: max_steps, or (for epochs) what the trainer counted for the
    same epochs. None when unknown: then the trainer decides."""
    if recipe.training.max_steps is not None:
        return recipe.training.max_steps
    try:
        state = json.loads((checkpoint / checkpoints.STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(state, dict) and state.get("num_train_epochs") == recipe.training.epochs:
        return state.get("max_steps")
    return None


def _finished_step(path: Path) -> str:
    try:
        run = yaml.safe_load((path / RUN).read_text(encoding="utf-8"))
        return str(run["result"]["steps"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return "?"


def _lock(path: Path) -> tuple[int, bool]:
    """Lock run.lock in the folder (creating it); returns the descriptor and whether it was created.

    Raises:
        UsageError: another process holds the lock, or gave the folder up while we locked it.
    """
    import fcntl  # POSIX only, like the training stack

    lock = path / LOCK
    busy = UsageError("another `recipe run` is using this run folder right now",
                      f"wait for it to finish, or {NEW_DIR}", where=str(path))
    try:
        try:
            fd, created = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), True
        except FileExistsError:
            fd, created = os.open(lock, os.O_RDWR | os.O_NOFOLLOW), False
    except FileNotFoundError:  # removed between the two opens by a run undoing its setup
        raise busy from None
    except OSError as e:
        raise RecipeError(f"cannot open the lock file {lock}: {e}", NEW_DIR, where=str(path)) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise UsageError(f"another `recipe run`{f' (process {holder})' if holder.isdigit() else ''} is using this "
                         "run folder right now", busy.hint, where=str(path)) from None
    except OSError as e:  # a filesystem without locks (some network mounts)
        os.close(fd)
        raise RecipeError(f"cannot lock {lock}: {e}", f"put output.dir on a local disk, or {NEW_DIR}",
                          where=str(path)) from e
    # The file we locked must still be the folder's: a run undoing its setup removes it.
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        raise busy
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for the message a second run prints
    except OSError as e:  # a full disk: no run can start here, and the descriptor must not leak
        os.close(fd)
        raise RecipeError(f"cannot write the lock file {lock}: {e.strerror}", f"free disk space, or {NEW_DIR}",
                          where=str(path)) from e
    return fd, created


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
