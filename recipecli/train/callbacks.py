"""What writes into the run folder while training: the trainer callback (metrics.jsonl, GPU
memory beside the loss, a checkpoint when Ctrl-C or SIGTERM arrives) and the signal handling
that asks it to stop. Only the callback imports torch and transformers, inside its function.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..units import GIB
from . import runfolder


class StopRequest:
    """Set by Ctrl-C or SIGTERM during training; the callback then checkpoints and stops."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # a second signal: the user does not want to wait
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"{self.signal_name}: saving a checkpoint after this step, then stopping (again to stop at once)",
              file=sys.stderr, flush=True)

    @contextmanager
    def listening(self) -> Iterator[None]:
        # Python only lets the main thread install handlers; elsewhere signals keep their default.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def recorder(run_dir: Path, stop: StopRequest, *, cuda: bool):
    """The trainer callback of a run: GPU memory beside the loss, metrics.jsonl, stop on a signal,
    and the peak reserved while loading, kept apart from training's (``load_reserved_bytes``)."""
    import torch
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        load_reserved_bytes = None  # torch's peak reserved before training began: loading the model

        def on_train_begin(self, args, state, control, **kwargs):
            # What fit-check estimates is the training; loading (a quantized base from_pretrained
            # quantizes as it loads) peaks apart, so the run reports the two apart.
            if cuda:
                self.load_reserved_bytes = torch.cuda.max_memory_reserved()
                torch.cuda.reset_peak_memory_stats()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:  # every rank logs; rank 0 alone writes the run folder
                return
            if cuda:
                logs["gpu_allocated_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
                logs["gpu_reserved_gib"] = round(torch.cuda.memory_reserved() / GIB, 3)
            runfolder.append_metrics(run_dir, {"step": state.global_step, **logs})

        def on_step_end(self, args, state, control, **kwargs):
            if stop.signal_name is not None:
                control.should_save = True
                control.should_training_stop = True

    return RunCallback()
