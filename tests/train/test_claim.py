"""Taking a run folder: refusals, the lock a second run meets, reuse of a run that saved nothing,
--resume of what is already done, --overwrite through a link, and undoing a failed setup.

No training here: folders are laid out as runs leave them; the lock holder is a real process.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from recipecli.errors import UsageError
from recipecli.read.load import load_recipe
from recipecli.train import after, claim, runfolder
from recipecli.train.claim import claimed, holding

from .test_checkpoints import lay_checkpoint

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


@pytest.fixture
def recipe(make_recipe, tmp_path):
    """A recipe training into tmp_path/run; overrides as keyword arguments."""

    def make(**overrides):
        path = make_recipe({"output": {"dir": str(tmp_path / "run")}, "training": {"max_steps": 5}})
        return load_recipe(path, [f"{k}={v}" for k, v in overrides.items()])

    return make


def lay_out(run_dir, recipe, *, checkpoints=(), saved=False, steps=5, extra=()):
    """A run folder as a run leaves it: run.yaml, recipe.yaml, metrics, checkpoints, the adapter."""
    run_dir.mkdir(parents=True, exist_ok=True)
    runfolder.write_run(run_dir, {"started": "then", "result": {"steps": steps}})
    runfolder.write_recipe(run_dir, recipe)
    runfolder.append_metrics(run_dir, {"step": 1, "loss": 2.0})
    for step in checkpoints:
        lay_checkpoint(run_dir / f"checkpoint-{step}", step)  # complete, as --resume requires
    if saved:
        (run_dir / runfolder.ADAPTER).mkdir()
        (run_dir / runfolder.ADAPTER / "adapter_model.safetensors").write_bytes(b"weights")
    for name in extra:
        (run_dir / name).write_text("mine")
    return run_dir


def snapshot(folder):
    """Every file below the folder with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def take(recipe, **flags):
    """Claim and give back at once: the refusals without a setup."""
    with claimed(recipe.output_dir, recipe, overwrite=flags.get("overwrite", False),
                 resume=flags.get("resume", False)) as folder:
        return folder


# --- a new run -----------------------------------------------------------------------------------


def test_a_new_run_creates_its_folder_and_locks_it(recipe, tmp_path):
    r = recipe()
    with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
        assert folder.path == r.output_dir and [p.name for p in r.output_dir.iterdir()] == [runfolder.LOCK]
        assert (r.output_dir / runfolder.LOCK).read_text() == f"{os.getpid()}\n"
        with pytest.raises(UsageError, match=rf"run: another `recipe run` \(process {os.getpid()}\) is using"):
            take(r)
        folder.keep()
    take(r)  # the lock went with the block; an empty folder is free


def test_an_empty_folder_the_user_made_is_used_and_kept_if_setup_fails(recipe):
    r = recipe()
    r.output_dir.mkdir()
    with pytest.raises(RuntimeError):
        with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
            folder.clear()
            (r.output_dir / runfolder.RUN).write_text("half")
            raise RuntimeError("tokenizing failed")
    assert r.output_dir.is_dir() and not any(r.output_dir.iterdir())


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_or_interrupted_setup_leaves_no_folder(recipe, failure):
    r = recipe()
    with pytest.raises(failure):
        with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
            folder.clear()
            (r.output_dir / runfolder.RUN).write_text("half")
            raise failure()
    assert not r.output_dir.exists()


@pytest.mark.parametrize("where", ["flock", "pid"])
def test_a_signal_while_the_lock_is_taken_leaves_no_folder(recipe, monkeypatch, where):
    """SIGTERM arrives as KeyboardInterrupt (runner._before_training); on a loaded machine it can
    land right after run.lock is created, before the claim is made: nothing may be left."""
    import fcntl

    def interrupted(*args):
        raise KeyboardInterrupt

    target = fcntl if where == "flock" else os  # the lock taken, or the holder's id being written
    monkeypatch.setattr(target, "flock" if where == "flock" else "ftruncate", interrupted)
    r = recipe()
    with pytest.raises(KeyboardInterrupt):
        with claimed(r.output_dir, r, overwrite=False, resume=False):
            pass
    assert not r.output_dir.exists()


def test_once_training_started_a_failure_keeps_the_folder(recipe):
    r = recipe()
    with pytest.raises(RuntimeError):
        with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
            folder.clear()
            folder.keep()
            (r.output_dir / "checkpoint-1").mkdir()
            raise RuntimeError("CUDA out of memory at step 2")
    assert (r.output_dir / "checkpoint-1").is_dir()


# --- a folder that is there already -------------------------------------------------------------


def test_a_finished_run_is_refused_without_a_flag_and_left_alone(recipe):
    r = recipe()
    lay_out(r.output_dir, r, checkpoints=[5], saved=True)
    before = snapshot(r.output_dir)
    with pytest.raises(UsageError) as refused:
        take(r)
    assert "already holds a finished run (its adapter/ is there)" in str(refused.value)
    assert "--overwrite" in refused.value.hint and "--resume" not in refused.value.hint
    assert snapshot(r.output_dir) == before and not (r.output_dir / runfolder.LOCK).exists()


def test_an_interrupted_run_is_refused_pointing_at_resume_with_its_own_recipe(recipe):
    r = recipe()
    lay_out(r.output_dir, r, checkpoints=[2])
    with pytest.raises(UsageError, match="interrupted at checkpoint-2") as refused:
        take(r)
    assert f"recipe run {r.output_dir / runfolder.RECIPE} --resume" in refused.value.hint
    assert take(r, resume=True).resume_from == r.output_dir / "checkpoint-2"  # and that hint works


def test_a_folder_that_is_not_a_run_is_refused_and_gets_no_lock_file(recipe):
    r = recipe()
    r.output_dir.mkdir()
    (r.output_dir / runfolder.RECIPE).write_text("name: mine\n")  # a folder of recipes has one too
    (r.output_dir / "thesis.tex").write_text("years of work")
    for flags in ({}, {"overwrite": True}):
        with pytest.raises(UsageError, match="not a run folder"):
            take(r, **flags)
    assert sorted(p.name for p in r.output_dir.iterdir()) == [runfolder.RECIPE, "thesis.tex"]


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_output_dir_that_is_not_a_folder_is_refused(recipe, kind):
    r = recipe()
    if kind == "file":
        r.output_dir.write_text("x")
    else:
        os.mkfifo(r.output_dir)
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(UsageError, match="exists and is not a folder"):
            take(r, **flags)


def test_overwrite_and_resume_contradict(recipe):
    with pytest.raises(UsageError, match="contradict"):
        take(recipe(), overwrite=True, resume=True)


# --- a run killed before its first checkpoint (SIGKILL: no clean-up ran) ------------------------


def test_a_run_that_saved_nothing_is_reused_and_resume_says_so(recipe):
    r = recipe()
    lay_out(r.output_dir, r)  # run.yaml, recipe.yaml, metrics.jsonl: killed while training step 1
    (r.output_dir / runfolder.LOCK).write_text("4242\n")  # unheld: the kernel let go of the dead run's lock
    with pytest.raises(UsageError, match="no checkpoint was saved") as refused:
        take(r, resume=True)
    assert refused.value.hint.startswith("run without --resume")
    with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:  # ... and without it, it runs
        folder.clear()
        assert [p.name for p in r.output_dir.iterdir()] == [runfolder.LOCK]  # no stale metrics to append to


def test_a_folder_holding_only_the_lock_is_free(recipe):
    r = recipe()
    r.output_dir.mkdir()
    (r.output_dir / runfolder.LOCK).write_text("")  # killed between mkdir and its first file
    assert take(r).path == r.output_dir


# --- --resume of what is already done ------------------------------------------------------------


def test_resuming_a_finished_run_changes_nothing(recipe):
    r = recipe()
    lay_out(r.output_dir, r, checkpoints=[5], saved=True)
    before = snapshot(r.output_dir)
    with pytest.raises(UsageError) as refused:
        take(r, resume=True)
    assert str(refused.value).startswith(f"{r.output_dir}: nothing to resume: the run finished at step 5 "
                                         f"(this recipe ends at step 5); its adapter is in {r.output_dir / 'adapter'}")
    assert "--set training.max_steps=10" in refused.value.hint
    assert snapshot(r.output_dir) == before and sorted(p.name for p in r.output_dir.iterdir()) == \
        ["adapter", "checkpoint-5", "metrics.jsonl", "recipe.yaml", "run.yaml"]


def test_resuming_with_max_steps_lowered_below_the_checkpoint_is_nothing_to_resume(recipe):
    r = recipe(**{"training.max_steps": 21})
    lay_out(r.output_dir, r, checkpoints=[20, 21], saved=True, steps=21)
    before = snapshot(r.output_dir)
    with pytest.raises(UsageError, match=r"finished at step 21 \(this recipe ends at step 10\)"):
        take(recipe(**{"training.max_steps": 10}), resume=True)
    with pytest.raises(UsageError, match=r"its checkpoint-21 is at step 21 \(this recipe ends at step 21\)"):
        (r.output_dir / "adapter" / "adapter_model.safetensors").unlink()
        (r.output_dir / "adapter").rmdir()
        take(r, resume=True)
    assert snapshot(r.output_dir) == {k: v for k, v in before.items() if not k.startswith("adapter")}


def test_a_finished_run_may_be_resumed_to_train_longer(recipe):
    r = recipe()
    lay_out(r.output_dir, r, checkpoints=[5], saved=True)
    assert take(recipe(**{"training.max_steps": 8}), resume=True).resume_from == r.output_dir / "checkpoint-5"


def test_an_epochs_run_ends_where_its_trainer_counted(make_recipe, tmp_path):
    path = make_recipe({"output": {"dir": str(tmp_path / "run")}, "training": {"epochs": 1}})
    r = load_recipe(path)
    lay_out(r.output_dir, r, checkpoints=[7], saved=True, steps=7)  # trainer_state: 1 epoch = 7 steps
    with pytest.raises(UsageError, match="nothing to resume: the run finished at step 7"):
        take(r, resume=True)
    assert take(load_recipe(path, ["training.epochs=2"]), resume=True).resume_from.name == "checkpoint-7"


def test_resume_of_a_finished_run_without_checkpoints_says_where_the_adapter_is(recipe):
    r = recipe()
    lay_out(r.output_dir, r, saved=True, steps=5)
    with pytest.raises(UsageError, match="nothing to resume: the run finished at step 5; its adapter is in"):
        take(r, resume=True)
    with pytest.raises(UsageError, match="there is no run folder here"):
        take(recipe(**{"output.dir": str(r.output_dir) + "-absent"}), resume=True)


# --- --overwrite ---------------------------------------------------------------------------------


def test_overwrite_replaces_a_run_only_once_setup_has_loaded(recipe):
    r = recipe()
    lay_out(r.output_dir, r, checkpoints=[5], saved=True)
    before = snapshot(r.output_dir)
    with pytest.raises(RuntimeError):
        with claimed(r.output_dir, r, overwrite=True, resume=False):
            raise RuntimeError("the model did not load")  # before clear(): the old run is intact
    assert {k: v for k, v in snapshot(r.output_dir).items() if k != runfolder.LOCK} == before
    with claimed(r.output_dir, r, overwrite=True, resume=False) as folder:
        folder.clear()
        assert [p.name for p in r.output_dir.iterdir()] == [runfolder.LOCK]


def test_overwrite_through_a_symbolic_link_is_refused_and_deletes_nothing(recipe, tmp_path):
    real = lay_out(tmp_path / "real", recipe(), checkpoints=[5], saved=True)
    before = snapshot(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    r = recipe(**{"output.dir": str(link)})
    with pytest.raises(UsageError, match="is a symbolic link .*--overwrite does not delete through a link") as refused:
        take(r, overwrite=True)
    assert str(real) in refused.value.hint
    assert snapshot(real) == before and link.is_symlink()


def test_a_dangling_link_is_refused_and_a_link_to_an_empty_folder_is_used(recipe, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="symbolic link to .*nowhere, which does not exist"):
        take(recipe(**{"output.dir": str(link)}))
    link.unlink()
    (tmp_path / "empty").mkdir()
    link.symlink_to(tmp_path / "empty")
    r = recipe(**{"output.dir": str(link)})
    with pytest.raises(RuntimeError):
        with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
            folder.clear()
            raise RuntimeError("setup failed")
    assert link.is_symlink() and (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


# --- another process holds the folder -----------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], "run.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)  # as claim._lock does: a shorter pid over a longer one left digits behind (a flake)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """A real process holding a folder's lock, as a running `recipe run` does; kill() ends it."""
    processes = []

    def hold(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "locked\n"
        processes.append(proc)
        return proc

    yield hold
    for proc in processes:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("flags, checkpoints", [({}, []), ({"overwrite": True}, [2]), ({"resume": True}, [2])],
                         ids=["training-before-its-first-checkpoint", "overwrite", "resume"])
def test_a_folder_another_run_holds_is_refused_for_every_flag(recipe, held, flags, checkpoints):
    r = recipe()
    lay_out(r.output_dir, r, checkpoints=checkpoints)
    holder = held(r.output_dir)
    before = snapshot(r.output_dir)
    with pytest.raises(UsageError, match=rf"another `recipe run` \(process {holder.pid}\) is using this run folder"):
        take(r, **flags)
    assert snapshot(r.output_dir) == before
    holder.send_signal(signal.SIGKILL)  # the kernel releases a dead process's lock
    holder.wait()
    take(r, **flags)


def test_a_fresh_folder_another_run_just_created_is_refused(recipe, held):
    r = recipe()
    held(r.output_dir)  # created, locked, nothing written yet
    with pytest.raises(UsageError, match="another `recipe run`"):
        take(r)


def _race(folder_text, recipe_path, start, results):
    r = load_recipe(recipe_path)
    start.wait()  # a barrier: every racer has loaded its recipe, then all claim at once
    try:
        with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
            folder.clear()
            runfolder.write_run(folder.path, {"pid": os.getpid()})
            time.sleep(2.0)  # longer than the racers' spread on a loaded machine
            folder.keep()
        results.put("claimed")
    except UsageError as e:
        results.put(str(e))


def test_of_several_runs_starting_at_once_exactly_one_gets_the_folder(make_recipe, tmp_path):
    path = make_recipe({"output": {"dir": str(tmp_path / "runs" / "same")}})
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(6), context.Queue()
    racers = [context.Process(target=_race, args=(str(tmp_path), path, start, results)) for _ in range(6)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert outcomes.count("claimed") == 1, outcomes
    # a racer the loaded machine started after the winner had left (2 s) finds its folder, which holds the
    # winner's run.yaml alone: not a run folder it may take either
    assert all(("another `recipe run`" in o or "already holds" in o or "already exists and is not a run folder" in o)
               for o in outcomes if o != "claimed"), outcomes


def test_leftovers_are_only_what_a_run_writes_before_its_first_checkpoint():
    assert claim.LEFTOVERS == {runfolder.RECIPE, runfolder.RUN, runfolder.ESTIMATE, runfolder.METRICS,
                               runfolder.LOSS_PLOT, runfolder.ACCELERATE_CONFIG, runfolder.DEEPSPEED_CONFIG}


def test_a_distributed_run_killed_before_its_first_checkpoint_is_reused(recipe):
    r = recipe()
    lay_out(r.output_dir, r, extra=(runfolder.ACCELERATE_CONFIG, runfolder.DEEPSPEED_CONFIG))
    with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
        folder.clear()
        assert [p.name for p in r.output_dir.iterdir()] == [runfolder.LOCK]


def test_a_resume_whose_setup_fails_leaves_the_folder_as_it_was(recipe):
    r = recipe(**{"training.max_steps": 9})
    lay_out(r.output_dir, r, checkpoints=[3])
    before = snapshot(r.output_dir)
    with pytest.raises(RuntimeError):
        with claimed(r.output_dir, r, overwrite=False, resume=True) as folder:
            folder.clear()  # resuming keeps everything
            raise RuntimeError("boom")
    assert {k: v for k, v in snapshot(r.output_dir).items() if k != runfolder.LOCK} == before


def test_a_run_killed_while_writing_its_first_checkpoint_is_reused(recipe):
    r = recipe()
    lay_out(r.output_dir, r)
    (r.output_dir / ".partial-checkpoint-1").mkdir()  # trainer.py writes here, then renames
    (r.output_dir / ".partial-checkpoint-1" / "optimizer.pt").write_bytes(b"half")
    with pytest.raises(UsageError, match="no checkpoint was saved") as refused:
        take(r, resume=True)
    assert refused.value.hint.startswith("run without --resume")
    with claimed(r.output_dir, r, overwrite=False, resume=False) as folder:
        folder.clear()
        assert [p.name for p in r.output_dir.iterdir()] == [runfolder.LOCK]


def test_a_run_folder_with_files_of_its_own_is_not_reused_and_no_hint_loops(recipe):
    r = recipe()
    lay_out(r.output_dir, r, extra=["notes.md"])
    with pytest.raises(UsageError, match="files of its own") as plain:
        take(r)
    with pytest.raises(UsageError, match="no checkpoint was saved") as resume:
        take(r, resume=True)
    assert "--resume" not in plain.value.hint and "--resume" not in resume.value.hint
    assert "--overwrite" in plain.value.hint and "--overwrite" in resume.value.hint


def test_a_damaged_last_checkpoint_leaves_steps_to_resume(recipe):
    """Found in review: 'nothing to resume' judged the newest folder (checkpoint-4, damaged) while
    resume continues from the last whole one (checkpoint-2), so a resumable run was refused."""
    r = recipe(**{"training.max_steps": 4})
    lay_out(r.output_dir, r, checkpoints=(2, 4))
    (r.output_dir / "checkpoint-4" / "trainer_state.json").write_text("{cut")
    folder = take(r, resume=True)
    assert folder.resume_from == r.output_dir / "checkpoint-2"


def test_holding_waits_for_no_one_and_refuses_a_folder_a_run_is_using(recipe, held):
    """Found in review: `recipe merge` wrote into a run folder without its lock, so a `recipe run
    --overwrite` could replace the adapter it was reading."""
    r = recipe()
    lay_out(r.output_dir, r, saved=True)
    with holding(r.output_dir):  # free: taken and given back
        pass
    holder = held(r.output_dir)
    with pytest.raises(UsageError, match=rf"another `recipe run` \(process {holder.pid}\) is using this run folder"):
        with holding(r.output_dir):
            pass
    with pytest.raises(UsageError, match="another `recipe run`"):  # merge goes through it before loading a model
        after.merge(r.output_dir, gpus=())
