"""TRL's SFTTrainer as `recipe run` trains with it: checkpoints that are whole or absent, and a
stop at the first loss or weights that are not finite numbers, so no checkpoint holds them.

No documented hook gives either: TrainerCallback.on_save runs after the checkpoint is written,
and no callback sees the loss of a step. So a subclass overrides three methods of
transformers 5.24's Trainer (read there: ``training_step``, ``_save_checkpoint`` and the
``_get_output_dir`` it calls) and adds ``save_final``. torch, transformers and trl are imported
inside ``trainer_class``, so importing this module stays cheap.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional

from . import checkpoints
from .failures import NonFinite


def quadratic_warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """The learning rate's factor at ``step``: the square of the warm-up's progress, then a cosine
    half-wave from 1 to 0 over the remaining steps (Axolotl's lr_quadratic_warmup)."""
    if step < warmup:
        return (step / warmup) ** 2
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def rex(step: int, *, warmup: int, total: int, floor: float = 0.0) -> float:
    """The learning rate's factor at ``step`` under REX (Chen et al. 2021, "Revisiting budgeted
    training"; Axolotl's lr_scheduler rex): a linear warm-up, then with z the fraction of the
    remaining steps left, floor + (1 - floor) * z / (0.1 + 0.9 z): flat at first, steep at the end."""
    if step < warmup:
        return step / warmup
    z = max(0.0, (total - step) / max(1, total - warmup))
    return floor + (1.0 - floor) * z / (0.1 + 0.9 * z)


def schedule_of(training) -> Optional[functools.partial]:
    """The factor function (step, warmup=, total=) of a schedule transformers does not have, which
    the runner hands to the trainer to build; None for the ones transformers has."""
    if training.lr_scheduler == "rex":
        return functools.partial(rex, floor=training.min_lr_ratio)
    if training.warmup_shape == "quadratic":
        return functools.partial(quadratic_warmup_cosine)
    return None


@functools.cache
def trainer_class():
    """The SFTTrainer subclass every run uses (built once, on first use)."""
    import torch
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
    from trl import SFTTrainer

    class RunTrainer(SFTTrainer):
        """SFTTrainer with atomic checkpoints and a stop on non-finite numbers."""

        writing: Optional[Path] = None  # the folder a save is writing; failures.explain names it
        _staging: Optional[Path] = None
        schedule: Optional[functools.partial] = None  # schedule_of(training): the runner sets it

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            # A schedule transformers does not have (schedule_of): a LambdaLR, as its own are, made
            # here, the Trainer's hook, so DeepSpeed's set-up and a resume (the scheduler's state is
            # its step) take it as they take the built-in ones.
            if self.lr_scheduler is None and self.schedule is not None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer if optimizer is not None else self.optimizer,
                    functools.partial(self.schedule, warmup=self.args.get_warmup_steps(num_training_steps),
                                      total=num_training_steps))
                self._created_lr_scheduler = True  # as the Trainer marks its own, to rebuild it on a rerun
            return super().create_scheduler(num_training_steps, optimizer)

        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            # One host sync per micro-batch, as the Trainer's own logging_nan_inf_filter check
            # already costs; that filter would log the average of earlier losses instead.
            if not torch.isfinite(loss).all():
                raise NonFinite(self.state.global_step + 1, "loss", loss.detach().float().mean().item())
            return loss

        def _get_output_dir(self, trial) -> str:
            # While a checkpoint is saved, the Trainer writes it into the staging folder.
            return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial) -> None:
            run_dir = Path(self.args.output_dir)
            final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.check_finite()
            staging = checkpoints.partial(final)
            self.writing = final
            # In a distributed run every rank writes its part (its RNG state, its shards) into the
            # one staging folder: rank 0 makes it before, and publishes it once all have written.
            main = self.args.should_save
            if main:
                checkpoints.discard(staging)  # left by a crash
                staging.mkdir()
            self.accelerator.wait_for_everyone()
            self._staging = staging
            try:
                super()._save_checkpoint(model, trial)  # staging/checkpoint-N, rotation inside staging
                self._record_best(run_dir, staging / final.name, main)
            except BaseException:
                if main:
                    checkpoints.discard(staging)
                raise
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()
            if main:
                checkpoints.publish(staging / final.name, final)
                staging.rmdir()
                # As the Trainer rotates (by modification time), now among the published checkpoints.
                rotate_checkpoints(str(run_dir), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            self.writing = None

        def _record_best(self, run_dir: Path, staged: Path, main: bool) -> None:
            """Name the best checkpoint (early stopping) by where it is published, not staged.

            The Trainer records it as the folder it saved it in (``_get_output_dir``): the staging
            folder for this one, gone once published; and it finds an earlier best only there, so
            never. Rotation would then delete the best checkpoint, and load_best_model_at_end find
            nothing. The checkpoint's own trainer_state.json is written again with the right name,
            before it is published, so a resumed run keeps tracking it.
            """
            best = self.state.best_global_step
            if not best:
                return
            published = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best}"
            if best != self.state.global_step and not published.is_dir():
                return  # the best evaluation fell between saves: the Trainer keeps the last best it saved
            self.state.best_model_checkpoint = str(published)
            if main:
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))

        def save_final(self, final: Path) -> None:
            """Save the trained adapter (or model) and tokenizer to ``final``, whole or not at all.

            Raises:
                NonFinite: the weights hold NaN or infinity; nothing is written.
            """
            self.check_finite()
            staging = checkpoints.partial(final)
            self.writing = final
            main = self.args.should_save  # as in _save_checkpoint: rank 0 prepares and publishes
            if main:
                checkpoints.discard(staging)
            self.accelerator.wait_for_everyone()
            try:
                self.save_model(str(staging))
            except BaseException:
                if main:
                    checkpoints.discard(staging)
                raise
            self.accelerator.wait_for_everyone()
            if main:
                checkpoints.publish(staging, final)
            self.writing = None

        def check_finite(self) -> None:
            """Refuse to save trained weights that hold NaN or infinity.

            Raises:
                NonFinite: naming the step after which they are not finite.
            """
            params = [p for p in self.model.parameters() if p.requires_grad]
            if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                raise NonFinite(self.state.global_step, "weights", float("nan"))

    return RunTrainer
