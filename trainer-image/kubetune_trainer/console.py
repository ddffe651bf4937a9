"""The local progress bar of `kubetune run`: step, loss, tokens/s and ETA on one line."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

from kubetune_trainer.metrics import Progress


class ProgressBar:
    """A progress listener that draws a tqdm bar on stderr (rank 0 only); `close` ends it after training."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._bar: Any = None
        self._file = file

    def __call__(self, progress: Progress) -> None:
        if self._bar is None:
            self._bar = tqdm(total=progress.total_steps, initial=progress.step, unit="step",
                             file=self._file or sys.stderr, dynamic_ncols=True, desc="training")
        self._bar.update(progress.step - self._bar.n)
        postfix = {}
        if progress.loss is not None:
            postfix["loss"] = f"{progress.loss:.3f}"
        if progress.eval_loss is not None:
            postfix["eval_loss"] = f"{progress.eval_loss:.3f}"
        if progress.tokens_per_second is not None:
            postfix["tok/s"] = f"{progress.tokens_per_second:.0f}"
        # Drawn now: the loss arrives in on_log, after the step's update, and would show only a step later
        # (at the last step, never).
        self._bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        """End the bar (on train end, after the last loss is shown)."""
        if self._bar is not None:
            self._bar.close()
