"""W&B around a run: the recipe's logging.wandb section becomes the variables wandb reads, wandb
failing to start becomes a RecipeError with the way out, and the W&B run is finished at the end.

wandb is imported only inside these functions and only with a logging.wandb section.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import RecipeError
from ..read.recipe import Wandb


@contextmanager
def environment(wandb: Optional[Wandb]) -> Iterator[None]:
    """Point W&B at the recipe's project for the run, through the variables wandb reads.

    The API key is never set here: wandb reads WANDB_API_KEY (or its login) itself.
    """
    if wandb is None:
        yield
        return
    values = {"WANDB_PROJECT": wandb.project, "WANDB_ENTITY": wandb.entity, "WANDB_MODE": wandb.mode,
              "WANDB_TAGS": ",".join(wandb.tags) or None,
              # transformers' WandbCallback reads it when the trainer is built, inside this context.
              "WANDB_LOG_MODEL": wandb.log_model}
    # Someone who switched W&B off or offline for this shell (CI, an air-gapped cluster, no consent
    # to upload) is not overruled by a shared recipe that says online: the environment wins there.
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        del values["WANDB_MODE"]
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def failure_explained(wandb: Optional[Wandb]) -> Iterator[None]:
    """W&B failing to start (no login, no network, a bad entity) becomes a RecipeError with the way out.

    The trainer starts the W&B run when training begins, so that is where this wraps.
    """
    if wandb is None:
        yield
        return
    import wandb as wandb_sdk

    try:
        yield
    except wandb_sdk.errors.Error as e:
        raise RecipeError(f"W&B failed: {e}", hint="`wandb login`, or set logging.wandb.mode: offline (or "
                          "WANDB_MODE=offline / disabled in the environment); then run again with --resume if "
                          "a checkpoint was saved, else with --overwrite") from e


def finish(wandb: Optional[Wandb], failed: bool = False) -> None:
    """End the W&B run the trainer started, so its last records are uploaded (or written offline).

    Args:
        wandb: the recipe's logging.wandb section; None does nothing.
        failed: training stopped on an error: the W&B run is marked failed (exit code 1), and a
            later run in the same process starts a run of its own instead of continuing it.
    """
    if wandb is None:
        return
    import wandb as wandb_sdk  # only with a logging.wandb section; the trainer imported it already

    wandb_sdk.finish(exit_code=1 if failed else None)
