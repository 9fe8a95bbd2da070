"""Which checkpoints --resume may trust, and folders that appear whole or not at all.

The fast tests lay out checkpoints by hand (``lay_checkpoint``, also used by test_claim.py);
the slow one corrupts a checkpoint a real tiny run wrote, file by file.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile

import pytest

from recipecli.errors import UsageError
from recipecli.train import checkpoints


def lay_checkpoint(folder, step: int) -> None:
    """The smallest checkpoint that passes ``checkpoints.problem``: what a Trainer writes, empty."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": step,
                                                            "num_train_epochs": 1}))
    header = b"{}"  # a safetensors file with no tensor: header length, header, no data
    (folder / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    for name in checkpoints.TRAINING_STATE:
        with zipfile.ZipFile(folder / name, "w") as z:  # torch.save writes a zip archive
            z.writestr("data.pkl", b"state")


def _safetensors(n_floats: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(4 * n_floats)


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


def test_a_laid_out_checkpoint_is_complete(run_dir):
    lay_checkpoint(run_dir / "checkpoint-4", 4)
    assert checkpoints.problem(run_dir / "checkpoint-4") is None


def _break(folder, how):
    if how == "no state":
        (folder / "trainer_state.json").unlink()
    elif how == "state cut":
        (folder / "trainer_state.json").write_text('{"global_step": 4, "max_')
    elif how == "state of another step":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    elif how == "state a list":
        (folder / "trainer_state.json").write_text("[4]")
    elif how == "state a fifo":
        (folder / "trainer_state.json").unlink()
        os.mkfifo(folder / "trainer_state.json")  # reading it would block forever
    elif how == "state a folder":
        (folder / "trainer_state.json").unlink()
        (folder / "trainer_state.json").mkdir()
    elif how == "no weights":
        (folder / "adapter_model.safetensors").unlink()
    elif how == "weights cut":
        (folder / "adapter_model.safetensors").write_bytes(_safetensors(16)[:-10])
    elif how == "weights header cut":
        (folder / "adapter_model.safetensors").write_bytes(_safetensors(16)[:20])
    elif how == "weights empty":
        (folder / "adapter_model.safetensors").write_bytes(b"")
    elif how == "no optimizer":
        (folder / "optimizer.pt").unlink()
    elif how == "optimizer cut":
        data = (folder / "optimizer.pt").read_bytes()
        (folder / "optimizer.pt").write_bytes(data[:len(data) // 2])
    elif how == "shard missing":
        (folder / "adapter_model.safetensors").unlink()
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
        (folder / "model-00001-of-00002.safetensors").write_bytes(_safetensors(4))


@pytest.mark.parametrize("how, reason", [
    ("no state", "it has no trainer_state.json"),
    ("state cut", "its trainer_state.json does not load"),
    ("state of another step", "its trainer_state.json is for step 2, not 4"),
    ("state a list", "its trainer_state.json is for step None, not 4"),
    ("state a fifo", "it has no trainer_state.json"),
    ("state a folder", "it has no trainer_state.json"),
    ("no weights", "it holds no trained weights"),
    ("weights cut", "adapter_model.safetensors is truncated"),
    ("weights header cut", "adapter_model.safetensors is truncated (its header is cut)"),
    ("weights empty", "adapter_model.safetensors is empty"),
    ("no optimizer", "it has no optimizer.pt"),
    ("optimizer cut", "optimizer.pt is truncated"),
    ("shard missing", "model.safetensors.index.json lists model-00002-of-00002.safetensors, which is not a file"),
])
def test_every_kind_of_incomplete_checkpoint_is_named(run_dir, how, reason):
    lay_checkpoint(run_dir / "checkpoint-4", 4)
    _break(run_dir / "checkpoint-4", how)
    assert reason in checkpoints.problem(run_dir / "checkpoint-4")


def test_scan_takes_the_newest_complete_one_and_names_the_newer_broken_ones(run_dir):
    for step in (2, 10, 12):
        lay_checkpoint(run_dir / f"checkpoint-{step}", step)
    _break(run_dir / "checkpoint-12", "weights cut")
    (run_dir / "checkpoint-11").write_text("a file, not a folder")
    (run_dir / ".partial-checkpoint-14").mkdir()
    (run_dir / "checkpoint-final").mkdir()  # not a step: not a checkpoint at all
    found, notes = checkpoints.scan(run_dir)
    assert found == run_dir / "checkpoint-10"  # 10 > 2 by number, not by name
    assert notes[0].startswith(".partial-checkpoint-14 is skipped: a save that was interrupted")
    assert notes[1].startswith("checkpoint-12 is skipped: adapter_model.safetensors is truncated")
    assert notes[2] == "checkpoint-11 is skipped: it is not a folder"
    assert len(notes) == 3
    assert checkpoints.to_resume(run_dir) == (found, notes)


def test_resume_with_only_broken_checkpoints_names_each(run_dir):
    lay_checkpoint(run_dir / "checkpoint-5", 5)
    _break(run_dir / "checkpoint-5", "no state")
    with pytest.raises(UsageError) as refused:
        checkpoints.to_resume(run_dir)
    assert "holds no complete checkpoint to resume from: checkpoint-5 is skipped: it has no trainer_state.json" \
        in refused.value.message
    assert "--overwrite" in refused.value.hint and refused.value.where == str(run_dir)
    run_dir_empty = run_dir.parent / "empty"
    run_dir_empty.mkdir()
    with pytest.raises(UsageError, match="holds no checkpoint to resume from"):
        checkpoints.to_resume(run_dir_empty)


def test_publish_replaces_a_folder_in_one_rename(tmp_path):
    final, staged = tmp_path / "adapter", checkpoints.partial(tmp_path / "adapter")
    final.mkdir()
    (final / "old").write_text("old")
    staged.mkdir()
    (staged / "new").write_text("new")
    checkpoints.publish(staged, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert [p.name for p in final.iterdir()] == ["new"]


def test_publish_unlinks_a_symlink_in_the_way_and_never_deletes_through_it(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    final = tmp_path / "run" / "checkpoint-2"
    final.parent.mkdir()
    final.symlink_to(precious)
    staged = checkpoints.partial(final)
    staged.mkdir()
    (staged / "trainer_state.json").write_text("{}")
    checkpoints.publish(staged, final)
    assert not final.is_symlink() and (final / "trainer_state.json").is_file()
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_discard_gives_the_space_of_a_failed_save_back(tmp_path):
    staged = checkpoints.partial(tmp_path / "checkpoint-3")
    (staged / "checkpoint-3").mkdir(parents=True)
    (staged / "checkpoint-3" / "optimizer.pt").write_bytes(b"x" * 1000)
    checkpoints.discard(staged)
    assert not staged.exists()


# --- a real checkpoint --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """checkpoint-2 of a real tiny QLoRA run (adapter, optimizer, scheduler, state)."""
    import yaml

    from recipecli.read.load import load_recipe
    from recipecli.train.runner import run

    from .test_runner import TINY

    root = tmp_path_factory.mktemp("real")
    (root / "recipe.yaml").write_text(yaml.safe_dump({**TINY, "output": {"dir": str(root / "run")},
                                                      "training": {**TINY["training"], "max_steps": 2}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = run(load_recipe(root / "recipe.yaml"), gpus=())
    return result.checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("how, reason", [
    ("weights cut", "adapter_model.safetensors is truncated"),
    ("optimizer cut", "optimizer.pt is truncated"),
    ("state cut", "its trainer_state.json does not load"),
    ("no state", "it has no trainer_state.json"),
])
def test_a_real_checkpoint_is_complete_until_a_file_of_it_is_damaged(real_checkpoint, tmp_path, how, reason):
    assert real_checkpoint.name == "checkpoint-2" and checkpoints.problem(real_checkpoint) is None
    copy = tmp_path / "checkpoint-2"
    shutil.copytree(real_checkpoint, copy)
    if how == "weights cut":  # the real file, cut short as a crash or a full disk leaves it
        data = (copy / "adapter_model.safetensors").read_bytes()
        (copy / "adapter_model.safetensors").write_bytes(data[:-100])
    elif how == "state cut":
        text = (copy / "trainer_state.json").read_text()
        (copy / "trainer_state.json").write_text(text[:len(text) // 2])
    else:
        _break(copy, how)
    assert reason in checkpoints.problem(copy)
