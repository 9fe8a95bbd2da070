"""Pushing a finished run's result to the Hugging Face Hub (output.hub_model_id).

One commit of the saved adapter or model (the folder the run wrote, its tokenizer included), to a
repository created when it is missing. Not the run's recipe.yaml or run.yaml: they hold this
machine's absolute paths. The token is huggingface_hub's: the
environment (HF_TOKEN) or a login, read by the library; recipe never writes it anywhere. The run is
refused before it starts when no token or no network is there, since finding out after an hour of
training costs the hour; a push that fails after training leaves the run folder whole and says how
to push it by hand.

Imports huggingface_hub (a dependency of transformers) inside the functions.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import RecipeError
from ..read.recipe import Recipe

PATH = "$.output.hub_model_id"
FIELD = ("output", "hub_model_id")
# The Trainer's pickled arguments: this machine's paths, and a pickle for whoever loads it.
NOT_PUSHED = ("training_args.bin",)


def refuse_unless_it_can_push(recipe: Recipe) -> None:
    """Before training (the schema's pattern has checked the name by the hub's rules): a token to
    push with, and the hub not switched off.

    Raises:
        RecipeError: HF_HUB_OFFLINE is set, or huggingface_hub finds no token.
    """
    from huggingface_hub import get_token
    from huggingface_hub.constants import HF_HUB_OFFLINE

    where = recipe.locate(FIELD)
    if HF_HUB_OFFLINE:
        raise RecipeError(f"output.hub_model_id {recipe.output.hub_model_id}: HF_HUB_OFFLINE is set, so the result "
                          "could not be pushed", "unset HF_HUB_OFFLINE, or remove output.hub_model_id (the run "
                          "folder keeps the result either way)", where=where, path=PATH)
    if get_token() is None:
        raise RecipeError(f"output.hub_model_id {recipe.output.hub_model_id}: no Hugging Face token to push with",
                          "set HF_TOKEN to a token with write access (or run `hf auth login`); the recipe never "
                          "holds it", where=where, path=PATH)


def push(recipe: Recipe, saved: Path) -> dict:
    """One commit of ``saved``'s files to output.hub_model_id.

    Returns:
        What run.yaml records: the repository, the commit and its address.

    Raises:
        RecipeError: the hub refused it or could not be reached; the run folder is whole.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    repo = recipe.output.hub_model_id
    # The endpoint as the environment says it now (huggingface_hub reads HF_ENDPOINT once, on import).
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    files = sorted(p for p in saved.rglob("*") if p.is_file() and p.name not in NOT_PUSHED)
    operations = [CommitOperationAdd(p.relative_to(saved).as_posix(), str(p)) for p in files]
    try:
        created = api.create_repo(repo, private=bool(recipe.output.hub_private), exist_ok=True)
        commit = api.create_commit(created.repo_id, operations, commit_message=f"recipe run {recipe.name}")
    except Exception as e:  # whatever stops a push (HTTP, transport, disk): the run folder is whole anyway
        raise RecipeError(f"trained, but not pushed to {repo}: {_why(e)}",
                          f"the run folder has the result; push it with: hf upload {repo} {saved}",
                          where=recipe.locate(FIELD), path=PATH) from None
    return {"repo": created.repo_id, "commit": commit.oid, "url": commit.commit_url}


def _why(error: Exception) -> str:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return f"the hub answered {status}: the token is refused, or may not write to that repository"
    if status is not None:
        return f"the hub answered {status}: {str(error).splitlines()[0]}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
