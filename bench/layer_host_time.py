"""Host time per decoder layer against the GPU's: is the fused 4-bit step bound by the host?

    PYTHONPATH=/tmp/site:$PWD/api:$PWD/trainer-image python3 bench/layer_host_time.py LABEL [--profile]

The Llama-3.2-1B shape cut to 4 layers, 4-bit NF4, LoRA r16 on all linear layers at dropout 0,
fused projections with fp8 base matmuls, 16 x 2048 tokens; no checkpointing, no Liger. Prints the
wall time per layer of a forward + backward (the GPU's time: the host is ahead), then the host's
time per layer of the forward and of the backward alone: a GPU sleep is queued before each, so the
GPU never waits for the host and the host's time is its own (Python, dispatch, launches).

The forward and the backward are timed apart because a whole step queues more launches than
CUDA's launch queue holds: the host then blocks on a launch until the sleep ends, which a first
version read as a synchronization inside the step. `--profile` adds a cProfile of each phase by
own time. To compare trees, put the other tree's trainer-image/ and api/ on PYTHONPATH instead.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

SLEEP_CYCLES = 1_000_000_000
"""GPU cycles of the sleep queued before a timed phase (about 0.5 s on an H200: longer than either phase)."""


def build(work: Path) -> tuple[Any, Any, Any, int]:
    """The fused 4-layer stack, its input (requiring grad) and an output gradient; and its layer count."""
    import gpu_throughput as bench
    import torch
    from kubetune_trainer import fused_lora

    bench.SHAPES["1b-4layers"] = {**bench.SHAPES["1b"], "num_hidden_layers": 4, "tie_word_embeddings": False}
    folder = bench.make_model("1b-4layers", work / "models" / "1b-4layers", 1024, "cuda")
    config = json.loads((folder / "config.json").read_text())
    model = bench._lora_layers(folder, 4, 0.0, "cuda")
    fused_lora.apply(model)
    fused_lora.set_fp8_base(model, True)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2048, config["hidden_size"], generator=generator).to("cuda", torch.bfloat16)
    grad_out = torch.randn(16, 2048, config["hidden_size"], generator=generator).to("cuda", torch.bfloat16)
    return model.base_model.model.model, x.requires_grad_(True), grad_out, config["num_hidden_layers"]


def host_seconds(phase: Callable[[], Any]) -> tuple[float, Any]:
    """How long the host takes to queue `phase` behind a GPU sleep; and what `phase` returned."""
    import torch

    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    started = time.perf_counter()
    result = phase()
    return time.perf_counter() - started, result


def profile_phase(phase: Callable[[], Any], shown: int = 28) -> str:
    """cProfile of `phase` queued behind a GPU sleep, by own time."""
    import torch

    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    profiler = cProfile.Profile()
    profiler.enable()
    phase()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(shown)
    return text.getvalue()


def main() -> int:
    """Measure and print; see the module docstring."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--work", default="/tmp/layer-host-time")
    args = parser.parse_args()
    stack, x, grad_out, layers = build(Path(args.work))

    def forward() -> Any:
        return stack(inputs_embeds=x).last_hidden_state

    for _ in range(3):  # warm-up: kernels compiled and loaded, the allocator's cache filled
        forward().backward(grad_out)
    walls, forwards, backwards = [], [], []
    for _ in range(5):
        torch.cuda.synchronize()
        started = time.perf_counter()
        forward().backward(grad_out)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - started)
        seconds, out = host_seconds(forward)
        forwards.append(seconds)
        seconds, _ = host_seconds(lambda out=out: out.backward(grad_out))
        backwards.append(seconds)
    per_layer = {name: statistics.median(values) * 1e3 / layers
                 for name, values in (("wall", walls), ("host forward", forwards), ("host backward", backwards))}
    print(args.label, "ms per layer:", ", ".join(f"{name} {ms:.2f}" for name, ms in per_layer.items()), flush=True)
    if args.profile:
        print("== forward\n" + profile_phase(forward), flush=True)
        out = forward()
        print("== backward\n" + profile_phase(lambda: out.backward(grad_out)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
