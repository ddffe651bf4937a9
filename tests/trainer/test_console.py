"""What `kubetune run` shows on the terminal: a progress bar with the current loss, and no library noise."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

import kubetune_trainer
from kubetune_trainer.console import ProgressBar
from kubetune_trainer.metrics import ProgressCallback

STEPS = 4
LOSSES = {2: 2.5, 4: 1.25}  # loggingSteps 2


def _last_frame(text: str) -> str:
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_the_bar_shows_each_loss_at_the_step_it_was_logged(tmp_path: Path) -> None:
    """Trainer order per step: on_step_end, then on_log; the last step's loss must show before the bar ends."""
    screen = io.StringIO()
    callback = ProgressCallback(None, (ProgressBar(file=screen),))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=STEPS), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in range(1, STEPS + 1):
        state.global_step = step
        callback.on_step_end(args, state, control)
        if step in LOSSES:
            callback.on_log(args, state, control, logs={"loss": LOSSES[step], "learning_rate": 1e-3})
            assert f"loss={LOSSES[step]:.3f}" in _last_frame(screen.getvalue()), f"step {step}"
    callback.on_log(args, state, control, logs={"train_loss": 1.9, "train_runtime": 1.0})  # the summary log
    callback.on_train_end(args, state, control)
    final = _last_frame(screen.getvalue())
    assert f"{STEPS}/{STEPS}" in final and "loss=1.250" in final
    assert screen.getvalue().endswith("\n")  # closed: what follows starts on its own line


def test_missing_kernels_warning_of_bitsandbytes_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(kubetune_trainer.BITSANDBYTES_CPU_LOGGER)
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        logger.warning("another bitsandbytes warning")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes warning"]


def test_the_silenced_future_warnings_are_only_the_ml_libraries() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=FutureWarning, module=kubetune_trainer.NOISY_LIBRARIES)
        for module in ("transformers.modeling_utils", "trl.trainer.sft_trainer", "mine"):
            warnings.warn_explicit("deprecated", FutureWarning, f"{module}.py", 1, module=module)
    assert [str(warning.filename) for warning in seen] == ["mine.py"]
