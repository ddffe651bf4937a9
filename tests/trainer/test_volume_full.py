"""A failure on a full workspace volume is reported as VolumeFull whatever words the failing writer used.

torch's zip writer says "unexpected pos N vs M" after a short write, not ENOSPC: the operator, which
only reads the termination message, could not tell it from any other crash, and retried an attempt
that would fill the volume again. The trainer looks at the volume itself (a real tmpfs here, filled).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import says_volume_full

from kubetune_trainer.train import failed_outcome

TORCH_SHORT_WRITE = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 80064 vs 79952")


@pytest.fixture
def full_volume(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled to the brim (mounting needs root, as CI runs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        with (mount / "filler.bin").open("wb", buffering=0) as out:
            try:
                while out.write(b"\0" * 4096):
                    pass
            except OSError as error:
                assert error.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_failure_on_a_full_volume_is_volume_full_in_words_the_operator_knows(full_volume: Path) -> None:
    outcome = failed_outcome(TORCH_SHORT_WRITE, full_volume)
    assert (outcome.status, outcome.reason) == ("failed", TerminationReason.VOLUME_FULL)
    assert "unexpected pos" in outcome.message and says_volume_full(outcome.message)


def test_the_same_failure_with_room_left_is_a_plain_failure(tmp_path: Path) -> None:
    outcome = failed_outcome(TORCH_SHORT_WRITE, tmp_path)
    assert (outcome.status, outcome.reason) == ("failed", None)
    assert not says_volume_full(outcome.message)
