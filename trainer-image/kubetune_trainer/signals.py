"""Stop on SIGTERM (or Ctrl-C) at a step boundary that every rank agrees on, with a checkpoint of that step.

The signal handler only sets a flag (`StopRequest`, installed first thing in the trainer
process, before the heavy imports). At each step end the ranks all-reduce their flags,
so a SIGTERM that reached one pod stops all of them at the same step, and when any is
set the callback asks the Trainer to save and stop. The checkpoint is then written by
the Trainer's normal save path with the RNG state of exactly that step: transformers'
own `enable_jit_checkpoint` can save a step whose RNG is already past it (see
`shared/reference/resume-on-cpu.md`).

`train()` returns normally after such a stop; callers must check `stopped_at`.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

from kubetune_trainer.distributed import any_rank

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger(__name__)

STOP_NOTES = {
    signal.SIGTERM: "got SIGTERM: saving a checkpoint at the next step boundary",
    signal.SIGINT: "interrupted (Ctrl-C): saving a checkpoint at the next step boundary",
}
"""The stop signals and what the trainer logs when one arrives (the launcher forwards a Ctrl-C as SIGINT)."""


class StopRequest:
    """A flag set by SIGTERM/SIGINT; `stopped_at` is the step training stopped at because of it."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT in this process (call from the main thread)."""
        for signum in STOP_NOTES:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("%s", STOP_NOTES[signal.Signals(signum)])
        self.requested = True


def stop_callback(request: StopRequest) -> TrainerCallback:
    """A Trainer callback that saves and stops at the first step end where any rank has `request` set."""
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    class StopAtStepBoundary(TrainerCallback):
        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            # One collective per step on every rank, signal or not: all ranks must call it.
            if any_rank(request.requested, device=args.device):
                request.requested = True
                request.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True

    return StopAtStepBoundary()
