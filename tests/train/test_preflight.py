"""Every refusal of `recipe run` comes before anything loads: the run folder, the GPU, the CPU;
and Ctrl-C or SIGTERM during the setup leaves nothing. Hardware is passed as data (gpus=() is
the CPU, ram_bytes the machine's memory).

The model here is the tiny Llama's config.json alone: the estimate needs nothing more, and loading
a tokenizer or a model from it fails. A refusal that reaches the test as itself, not as "cannot
load the tokenizer", came before anything was loaded.
"""
from __future__ import annotations

import os
import re
import shutil
import signal

import pytest

from recipecli.errors import DoesNotFit, ExitCode, Interrupted, RecipeError, UsageError
from recipecli.read.load import load_recipe
from recipecli.train import runfolder
from recipecli.train.runner import run
from recipecli.units import GIB

from .test_checkpoints import lay_checkpoint

from ..conftest import RECIPES

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache
PLENTY = 1024 * GIB


@pytest.fixture
def hollow(make_recipe, tmp_path):
    """A recipe whose model is a config.json alone, training into tmp_path/run."""
    model = tmp_path / "hollow"
    model.mkdir()
    shutil.copy(RECIPES / "models" / "tiny-llama" / "config.json", model)

    def make(**overrides):
        path = make_recipe({"model": {"id": str(model)}, "output": {"dir": str(tmp_path / "run")},
                            "data": {"datasets": [{"path": str(RECIPES / "data" / "tiny-alpaca.jsonl"),
                                                   "format": "alpaca"}]},
                            "training": {"max_steps": 5}})
        return load_recipe(path, [f"{k}={v}" for k, v in overrides.items()])

    return make


def test_the_hollow_model_fails_to_load_and_the_failed_setup_leaves_no_folder(hollow):
    recipe = hollow()
    with pytest.raises(RecipeError, match="cannot load the tokenizer"):
        run(recipe, gpus=(), ram_bytes=PLENTY)
    assert not recipe.output_dir.exists()


def test_a_13b_model_is_refused_on_the_cpu_before_any_download(tmp_path):
    recipe = load_recipe(RECIPES / "llama2-13b.yaml", [f"output.dir={tmp_path / 'run'}"])
    with pytest.raises(DoesNotFit) as refused:  # with an empty hub cache offline, a load would fail otherwise
        run(recipe, gpus=(), ram_bytes=PLENTY)
    error = refused.value
    assert error.exit_code == ExitCode.DOES_NOT_FIT
    assert "no GPU here, and the CPU cannot train this recipe: meta-llama/Llama-2-13b-hf has 13.0B parameters" \
        in error.message
    assert re.search(r"\(estimate: \d+\.\d GiB to train computing in fp32; this machine has 1024.0 GiB of RAM\)$",
                     error.message)
    assert "--force trains here anyway" in error.hint and "--gpu NAME" in error.hint
    assert not (tmp_path / "run").exists()


def test_a_recipe_larger_than_the_ram_is_refused(hollow):
    with pytest.raises(DoesNotFit, match=r"training needs ~\d+\.\d GiB \(fp32 on the CPU\), more than this machine.s"):
        run(hollow(), gpus=(), ram_bytes=1024)


def test_force_trains_on_the_cpu_anyway_with_a_warning(hollow, capsys):
    with pytest.raises(RecipeError, match="cannot load the tokenizer"):  # it went on to load
        run(hollow(), gpus=(), ram_bytes=1, force=True)
    assert "warning: --force: training on the CPU although training needs" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["finished", "lock held", "nothing to resume", "overwrite a link"])
def test_run_folder_refusals_come_before_the_tokenizer_loads(hollow, tmp_path, case):
    recipe = hollow()
    folder = recipe.output_dir
    folder.mkdir()
    runfolder.write_run(folder, {"result": {"steps": 5}})
    runfolder.write_recipe(folder, recipe)
    lay_checkpoint(folder / "checkpoint-5", 5)  # whole: a resume would continue from it
    (folder / runfolder.ADAPTER).mkdir()
    flags = {}
    if case == "lock held":
        import fcntl

        shutil.rmtree(folder / runfolder.ADAPTER)
        fd = os.open(folder / runfolder.LOCK, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second open file: locks between them conflict as between processes
        flags = {"overwrite": True}
    elif case == "nothing to resume":
        flags = {"resume": True}
    elif case == "overwrite a link":
        (tmp_path / "link").symlink_to(folder)
        recipe = hollow(**{"output.dir": str(tmp_path / "link")})
        flags = {"overwrite": True}
    expected = {"finished": "already holds a finished run", "lock held": "another `recipe run`",
                "nothing to resume": "nothing to resume", "overwrite a link": "symbolic link"}[case]
    try:
        with pytest.raises(UsageError, match=expected):
            run(recipe, gpus=(), ram_bytes=PLENTY, **flags)
    finally:
        if case == "lock held":
            os.close(fd)
    assert (folder / "checkpoint-5").is_dir()


def test_sigterm_during_setup_is_interrupted_and_leaves_no_folder(hollow):
    recipe = hollow()

    def sigterm_while_looking_for_gpus():
        os.kill(os.getpid(), signal.SIGTERM)  # a real SIGTERM, as `kill` sends it, while setup runs
        yield from ()

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="interrupted before training started; nothing was saved") as stopped:
        run(recipe, gpus=sigterm_while_looking_for_gpus(), ram_bytes=PLENTY)
    assert stopped.value.exit_code == ExitCode.INTERRUPTED == 130
    assert not recipe.output_dir.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # SIGTERM's handling is given back


def test_ctrl_c_during_setup_leaves_a_reused_run_folder_as_it_was(hollow):
    recipe = hollow()
    recipe.output_dir.mkdir()
    runfolder.write_run(recipe.output_dir, {"started": "before a SIGKILL"})  # a run that saved nothing

    def ctrl_c():
        raise KeyboardInterrupt
        yield

    with pytest.raises(Interrupted):
        run(recipe, gpus=ctrl_c(), ram_bytes=PLENTY)
    assert [p.name for p in recipe.output_dir.iterdir()] == [runfolder.RUN]  # not even a lock file
