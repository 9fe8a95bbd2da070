"""Failures of a run, turned into messages: real exception instances, no GPU needed.

End-to-end runs that raise them are in test_runner.py (non-finite loss and weights, a full disk).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from recipecli.errors import ExitCode
from recipecli.fit.gpu_catalog import card, gpu_from_vram
from recipecli.fit.precision import choose
from recipecli.read.load import load_recipe
from recipecli.train import failures

from .test_checkpoints import lay_checkpoint

TURING = card("rtx2080")
pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty hub cache


@pytest.fixture
def context(make_recipe, tmp_path):
    def make(delta: dict | None = None, gpu=TURING, step: int = 11, writing: Path | None = None, checkpoint=10):
        recipe = load_recipe(make_recipe({"output": {"dir": str(tmp_path / "run")}, **(delta or {})}))
        if checkpoint is not None:
            lay_checkpoint(recipe.output_dir / f"checkpoint-{checkpoint}", checkpoint)
        return failures.Context(recipe, choose(recipe, gpu), gpu, recipe.output_dir, step, writing)

    return make


def _oom():
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                       "capacity of 7.79 GiB of which 1.05 GiB is free.\nInclude stack trace...")


def test_cuda_out_of_memory_shows_the_breakdown_and_a_change_that_lowers_the_estimate(context):
    error = failures.explain(_oom(), context())
    assert error.exit_code == ExitCode.RUNTIME
    message = error.message
    assert message.startswith("CUDA out of memory at step 12: CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "Include stack trace" not in message  # the first line of torch's message only
    assert "weights" in message and "RTX 2080 8.00 GiB, headroom" in message  # fit-check's breakdown
    assert "the cheapest change that lowers the estimate by 15%" in message and "patch:" in message
    assert "checkpoint-10 is complete: continue from it with --resume" in error.hint


def test_cuda_out_of_memory_of_a_forced_run_gives_the_fit_for_the_card(context):
    ctx = context({"model": {"id": "meta-llama/Llama-2-7b-hf"}, "method": "lora"})
    message = failures.explain(_oom(), ctx).message
    assert "DOES NOT FIT" in message and "RTX 2080 has 8.00 GiB. It fits" in message


def test_cuda_out_of_memory_without_an_estimate_names_the_knobs(context):
    ctx = context({"model": {"id": "someone/unknown-model"}}, gpu=gpu_from_vram(8))
    message = failures.explain(_oom(), ctx).message
    assert "(no fit estimate:" in message and "training.micro_batch_size" in message


def test_host_out_of_memory(context):
    error = failures.explain(MemoryError(), context(checkpoint=None))
    assert error.message == "out of host memory (RAM) at step 12"
    assert "data.max_seq_length" in error.hint and "No checkpoint was saved" in error.hint


def _real_enospc(tmp_path) -> OSError:
    """The OSError a write to a full disk raises, as the kernel reports it."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_folder_being_written_and_its_free_space(context, tmp_path):
    writing = tmp_path / "run" / "checkpoint-12"
    error = failures.explain(_real_enospc(tmp_path), context(writing=writing))
    assert error.where == str(writing)
    assert error.message.startswith("no space left on the disk while writing this folder (")
    assert " free there; a checkpoint takes " in error.message
    assert "half-written files were removed" in error.hint and "checkpoint-10 is complete" in error.hint
    assert str(error).startswith(f"{writing}: no space left")


def test_a_full_disk_outside_a_save_names_the_run_folder(context, tmp_path):
    error = failures.explain(_real_enospc(tmp_path), context())  # metrics.jsonl, say
    assert error.where == str(tmp_path / "run")


def test_safetensors_full_disk_error_is_recognised(context, tmp_path):
    from safetensors import SafetensorError

    # What safetensors raises on a full disk (seen on a 300 KiB tmpfs).
    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    writing = tmp_path / "run" / "adapter"
    assert failures.explain(full, context(writing=writing)).message.startswith("no space left on the disk")


def test_a_save_that_fails_otherwise_names_the_folder(context, tmp_path):
    # torch.save's error on a full disk names no cause; with room left it is reported as it is.
    broken = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    writing = tmp_path / "run" / "checkpoint-12"
    error = failures.explain(broken, context(writing=writing))
    assert error.message.startswith("writing this folder failed: [enforce fail at inline_container.cc:672]")
    assert error.where == str(writing) and "full disk" in error.hint


@pytest.mark.parametrize("what, expected", [
    ("loss", "the training loss became nan at step 7; training stopped"),
    ("weights", "the trained weights hold NaN or infinity after step 7; training stopped"),
])
def test_non_finite_names_the_step_and_the_causes(context, what, expected):
    error = failures.explain(failures.NonFinite(7, what, float("nan")), context(checkpoint=6))
    assert error.message == expected
    assert "the learning rate (0.0002) is likely too high" in error.hint
    assert "checkpoint-6, saved before it, is the last checkpoint" in error.hint
    assert "fp16 overflows" in error.hint  # an RTX 2080 trains in fp16


def test_non_finite_on_a_bf16_card_does_not_blame_fp16(context):
    error = failures.explain(failures.NonFinite(3, "loss", float("inf")), context(gpu=card("a100 80gb")))
    assert "loss became inf at step 3" in error.message and "fp16" not in error.hint


@pytest.mark.parametrize("error", [TypeError("a bug"), KeyError("x"), ValueError("y")])
def test_bugs_are_not_explained_away(context, tmp_path, error):
    assert failures.explain(error, context(writing=tmp_path / "run" / "checkpoint-12")) is None


def test_a_runtime_error_outside_a_save_is_not_explained(context):
    assert failures.explain(RuntimeError("CUDA error: an illegal memory access"), context()) is None
