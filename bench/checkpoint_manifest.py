"""What recording and verifying a checkpoint's manifest costs (size + sha256 of every file).

    python bench/checkpoint_manifest.py --dir /tmp/manifest-bench --sizes-mb 64 512 2048

The marker of every checkpoint now records each file's size and sha256 (rank 0, after the
barrier, before marking), and a resume hashes the newest checkpoint again before loading it.
This writes one folder of random files shaped like a LoRA checkpoint per total size (adapter,
optimizer state, trainer state, two ranks' RNG files), then times `write_marker` (hashing,
fsync of the marker) and `damage` (the resume-time check), each right after the files were
written, so the page cache holds them as it does on the saving node; a cold read of a network
volume is slower and is the volume's speed, not this code's. Prints one table row per size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from kubetune_trainer.checkpoints import Checkpoint, damage, write_marker

# Shares of a LoRA checkpoint's bytes: Adam keeps two moments per adapter weight.
SHARES = {"adapter_model.safetensors": 0.33, "optimizer.pt": 0.66}
SMALL_FILES = {"trainer_state.json": 4096, "scheduler.pt": 1536, "rng_state_0.pth": 14_000, "rng_state_1.pth": 14_000}
CHUNK = 64 << 20


def _write(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        while size > 0:
            block = os.urandom(min(size, CHUNK))
            handle.write(block)
            size -= len(block)


def make_checkpoint(folder: Path, total_mb: int) -> Path:
    """A checkpoint-1 folder of random files adding up to about `total_mb` MiB."""
    path = folder / f"{total_mb}mb" / "checkpoint-1"
    shutil.rmtree(path.parent, ignore_errors=True)
    path.mkdir(parents=True)
    for name, share in SHARES.items():
        _write(path / name, int(total_mb * share * (1 << 20)))
    for name, size in SMALL_FILES.items():
        _write(path / name, size)
    return path


def measure(folder: Path, total_mb: int) -> tuple[int, float, float]:
    """(bytes, seconds to record and mark, seconds to verify) for one synthetic checkpoint."""
    path = make_checkpoint(folder, total_mb)
    size = sum(file.stat().st_size for file in path.iterdir())
    started = time.perf_counter()
    write_marker(path, 1, {"method.lora.r": 16})
    recorded = time.perf_counter() - started
    started = time.perf_counter()
    problems = damage(Checkpoint(1, path))
    verified = time.perf_counter() - started
    assert problems == [], problems
    shutil.rmtree(path.parent)
    return size, recorded, verified


def main() -> None:
    """Measure each size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/kubetune-manifest-bench"))
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 512, 2048])
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"{'checkpoint':>12} {'record + mark':>14} {'verify':>8} {'GB/s':>6}")
    for total in args.sizes_mb:
        size, recorded, verified = measure(args.dir, total)
        print(f"{size / 1e6:>10.0f}MB {recorded:>13.2f}s {verified:>7.2f}s {size / 1e9 / verified:>6.2f}")


if __name__ == "__main__":
    main()
