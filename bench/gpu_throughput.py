"""Training throughput: plain Hugging Face (TRL SFTTrainer defaults, and with Liger) against KubeTune's trainer.

    python bench/gpu_throughput.py --out /tmp/bench --doc docs/benchmarks.md          # on a GPU machine
    python bench/gpu_throughput.py --plan fused --no-8b --out /tmp/bench              # issue 15: peers + fusedLora
    python bench/gpu_throughput.py --plan levers --no-8b --out /tmp/bench --profile kt-1b-4bit-mb16   # round 2 levers
    python bench/gpu_throughput.py --plan final --no-8b --out /tmp/bench              # peers + the levers that gained
    python bench/gpu_throughput.py --plan unsloth --out /tmp/bench --unsloth-site /tmp/usite   # issue 15 round 3
    python bench/gpu_throughput.py --plan fp8 --out /tmp/bench --unsloth-site /tmp/usite       # round 4: fp8BaseMatmuls
    python bench/gpu_throughput.py --plan host --out /tmp/bench --unsloth-site /tmp/usite      # round 6: optimizer, memory
    python bench/gpu_throughput.py --plan host --no-8b --out /tmp/bench --against /tmp/base --rounds 2  # A/B in one call
    python bench/gpu_throughput.py --plan standing --steps 8 --out /tmp/bench --unsloth-site /tmp/usite  # issue 15's marks
    python bench/gpu_throughput.py --layer --out /tmp/bench                           # one layer: peft vs fused LoRA
    python bench/gpu_throughput.py --device cpu --out /tmp/bench --budget-s 300       # rehearsal, tiny shapes

One run measures, per case, training tokens per second (padding excluded; each step timed between
CUDA synchronizations; the median over the steps after warm-up; "run tok/s" divides the same steps'
tokens by the wall time from the warm-up's end to the last step's end, so what happens between
steps counts too), the peak GPU memory while
training, and MFU. FLOPs per token are 4·N for LoRA on a frozen base (forward 2·N, backward
through the activations 2·N; no weight gradients, recomputation not counted) plus causal
attention, 6·layers·width·n per token of an n-token example; MFU is given against the H100's
dense bf16 peak of 989 TFLOP/s and against the bf16 matmul rate this script measures first.

The models are Llama-3.2-1B and Llama-3.1-8B shapes with random weights, built from a config
on the GPU and saved to local disk, so 4-bit loading goes through bitsandbytes as for a
downloaded checkpoint. The tokenizer is a word-level one with Llama's 128,256-token vocabulary
(one word, one token), so sequence lengths are exact. Data: "fixed" rows of 2,048 tokens, and
"varlen" prompt/completion rows of 64 to 2,048 tokens (log-uniform), where padding and packing matter.

- baseline: transformers + peft + bitsandbytes + TRL's SFTTrainer with its default settings
  (bf16, gradient checkpointing, sdpa, padding to the longest row, its default optimizer), the
  same LoRA (r16, alpha 32, dropout 0.05 unless the case says, all linear layers) and learning
  rate; "TRL + Liger" is the same with `use_liger_kernel=True`, as a user would switch it on.
- kubetune: `kubetune_trainer.train.train()` on a recipe, the code path a pod runs, with a timing
  callback added through its `build_trainer` seam; levers switched by the recipe's fields.
- unsloth: Unsloth as its notebooks configure it: `FastLanguageModel.from_pretrained(load_in_4bit)`,
  `get_peft_model` (the same LoRA on the seven projections, its "unsloth" gradient checkpointing),
  its patched TRL `SFTTrainer` with its SFTConfig defaults (adamw_8bit, padding-free where it
  enables it) except the micro-batch, gradient accumulation 1 and the learning rate, which every
  case shares. Unsloth pins its own transformers/TRL/datasets, so its case runs from a separate
  install target (`--unsloth-site`, put first on its PYTHONPATH; bitsandbytes and peft come from
  the main stack). Tokens are counted per optimizer step whatever the accumulation.

Time to first step is from the case's process start (imports, model load, quantization, data
tokenization, trainer assembly) to the end of the first optimizer step; the table splits it into
the set-up (to the trainer's `on_train_begin`) and the first step itself (kernel compilation,
autotuning, the allocator's first growth). Results also carry the garbage collector's time in each
step and between it and the next (`gc_ms`).

`--profile NAMES` records one warm-up step of the named cases with torch.profiler (ops and
kernels by their own GPU time, and where the GPU sat idle, OUT/cases/NAME.profile.txt); the timed
steps are not profiled. `--memory NAMES` records every allocation of that step and writes what was
live at its peak, by allocating line (OUT/cases/NAME.memory.txt). `--against TREE` runs each
KubeTune case again on another checkout's trainer right after this tree's (`git worktree add
/tmp/base REV`), `--rounds N` repeats the whole list: an A/B read inside one call.

Each case runs in its own process (clean peak memory, no kernel patches leaking between cases);
results are appended to OUT/results.jsonl as they come, and the table is printed at the end.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
H100_BF16_PEAK = 989e12
VOCAB = 128256
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B and Llama-3.1-8B (their config.json, weights random).
    "1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    },
    "8b": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    },
    # For rehearsals on the CPU (and the --layer rehearsal).
    "tiny": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False, "max_position_embeddings": 4096,
    },
}


@dataclass
class Case:
    """One measurement: which trainer, model shape, base precision, data, micro-batch and levers."""

    name: str
    trainer: str  # baseline | kubetune | unsloth
    shape: str
    bits: int
    data: str  # fixed | varlen
    micro_batch: int
    # kubetune: recipe training.* overrides (camelCase); baseline: SFTConfig arguments (use_liger_kernel)
    levers: dict[str, bool | str] = field(default_factory=dict)
    note: str = ""
    dropout: float = 0.05  # LoRA dropout, for both trainers
    code: str = ""  # kubetune: the tree whose trainer-image/ and api/ run the case ("": this one; --against)


def kt(name: str, shape: str, bits: int, data: str, mb: int, note: str = "", dropout: float = 0.05,
       **levers: bool | str) -> Case:
    """A KubeTune case; `levers` are training.* recipe fields (camelCase)."""
    return Case(name, "kubetune", shape, bits, data, mb, dict(levers), note, dropout)


def hf(name: str, shape: str, bits: int, data: str, mb: int, note: str = "", dropout: float = 0.05,
       **options: bool | str) -> Case:
    """A plain Hugging Face case; `options` are SFTConfig arguments (and `attn_implementation`, the model's)."""
    return Case(name, "baseline", shape, bits, data, mb, dict(options), note, dropout)


def plan(shape_small: str, shape_large: str | None) -> list[Case]:
    """The cases in the order they run; later ones are skipped when the time budget runs out."""
    s = shape_small
    cases = [
        hf(f"hf-{s}-4bit-mb16", s, 4, "fixed", 16),
        kt(f"kt-{s}-4bit-mb16", s, 4, "fixed", 16, "all levers on (defaults)"),
        hf(f"hf-{s}-4bit-varlen-mb16", s, 4, "varlen", 16),
        kt(f"kt-{s}-4bit-varlen-mb16-packed", s, 4, "varlen", 16, "packing on, varlen attention", packing=True),
        hf(f"hf-{s}-16bit-mb16", s, 16, "fixed", 16),
        kt(f"kt-{s}-16bit-mb16", s, 16, "fixed", 16, "all levers on (defaults)"),
        kt(f"kt-{s}-4bit-mb16-noliger", s, 4, "fixed", 16, "ligerKernels off", ligerKernels=False),
        kt(f"kt-{s}-16bit-mb16-fp32adapter", s, 16, "fixed", 16, "adapterInComputeDtype off",
           adapterInComputeDtype=False),
        kt(f"kt-{s}-4bit-mb32", s, 4, "fixed", 32, "larger micro-batch"),
    ]
    if shape_large:
        b = shape_large
        cases += [hf(f"hf-{b}-4bit-mb8", b, 4, "fixed", 8), kt(f"kt-{b}-4bit-mb8", b, 4, "fixed", 8)]
    cases += [
        kt(f"kt-{s}-4bit-varlen-mb16", s, 4, "varlen", 16, "packing off (recipe default)"),
        kt(f"kt-{s}-4bit-varlen-mb16-packed-sdpa", s, 4, "varlen", 16, "packing on, varlenAttention off",
           packing=True, varlenAttention=False),
        kt(f"kt-{s}-4bit-mb16-nockpt", s, 4, "fixed", 16, "gradientCheckpointing off", gradientCheckpointing=False),
        hf(f"hf-{s}-4bit-mb8", s, 4, "fixed", 8),
    ]
    return cases


def plan_fused(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15: the peers and KubeTune before/after `training.fusedLora`, fixed-length rows, in priority order."""
    s = shape_small
    cases = [
        *peers(s),
        kt(f"kt-{s}-4bit-mb16-unfused", s, 4, "fixed", 16, "KubeTune before: fusedLora false", fusedLora=False),
        kt(f"kt-{s}-4bit-mb16", s, 4, "fixed", 16, "KubeTune defaults (fusedLora on)"),
        kt(f"kt-{s}-4bit-mb16-d0-unfused", s, 4, "fixed", 16, "dropout 0, fusedLora false", 0.0, fusedLora=False),
        kt(f"kt-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "dropout 0, fusedLora on", 0.0),
        kt(f"kt-{s}-16bit-mb16-unfused", s, 16, "fixed", 16, "16-bit base, fusedLora false", fusedLora=False),
        kt(f"kt-{s}-16bit-mb16", s, 16, "fixed", 16, "16-bit base, fusedLora on"),
        kt(f"kt-{s}-4bit-mb32", s, 4, "fixed", 32, "fusedLora on, micro-batch 32"),
    ]
    if shape_large:
        b = shape_large
        cases += [hf(f"hf-{b}-4bit-mb8", b, 4, "fixed", 8, "TRL defaults"),
                  kt(f"kt-{b}-4bit-mb8-unfused", b, 4, "fixed", 8, "fusedLora false", fusedLora=False),
                  kt(f"kt-{b}-4bit-mb8", b, 4, "fixed", 8, "fusedLora on")]
    return cases


def us(name: str, shape: str, bits: int, data: str, mb: int, note: str = "", dropout: float = 0.0,
       **options: bool | str) -> Case:
    """An Unsloth case (LoRA dropout 0 unless given: its default and the one its fast LoRA path needs)."""
    return Case(name, "unsloth", shape, bits, data, mb, dict(options), note, dropout)


def plan_unsloth(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15, round 3: Unsloth beside the TRL peers and KubeTune, and `training.fusedCrossEntropy`."""
    s = shape_small
    cases = [
        *peers(s),
        us(f"us-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "Unsloth, LoRA dropout 0 (its default)"),
        kt(f"kt-{s}-4bit-mb16", s, 4, "fixed", 16, "KubeTune defaults"),
        kt(f"kt-{s}-4bit-mb16-fce", s, 4, "fixed", 16, "fusedCrossEntropy", fusedCrossEntropy=True),
        kt(f"kt-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "dropout 0", 0.0),
        kt(f"kt-{s}-4bit-mb16-d0-fce", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy", 0.0,
           fusedCrossEntropy=True),
        us(f"us-{s}-4bit-mb16", s, 4, "fixed", 16, "Unsloth, LoRA dropout 0.05 (the recipe's)", 0.05),
        kt(f"kt-{s}-4bit-mb16-fce-offload", s, 4, "fixed", 16, "fusedCrossEntropy + offloadActivations",
           fusedCrossEntropy=True, offloadActivations=True),
        kt(f"kt-{s}-4bit-mb16-d0-fce-offload", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + offloadActivations",
           0.0, fusedCrossEntropy=True, offloadActivations=True),
        kt(f"kt-{s}-4bit-mb16-fce-compile", s, 4, "fixed", 16, "fusedCrossEntropy + compileLayers",
           fusedCrossEntropy=True, compileLayers=True),
        kt(f"kt-{s}-4bit-mb16-d0-fce-compile", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + compileLayers",
           0.0, fusedCrossEntropy=True, compileLayers=True),
    ]
    if shape_large:
        b = shape_large
        cases += [hf(f"hf-{b}-4bit-mb8-liger", b, 4, "fixed", 8, "TRL + use_liger_kernel", use_liger_kernel=True),
                  us(f"us-{b}-4bit-mb8-d0", b, 4, "fixed", 8, "Unsloth, LoRA dropout 0"),
                  kt(f"kt-{b}-4bit-mb8", b, 4, "fixed", 8, "KubeTune defaults"),
                  kt(f"kt-{b}-4bit-mb8-fce", b, 4, "fixed", 8, "fusedCrossEntropy", fusedCrossEntropy=True),
                  kt(f"kt-{b}-4bit-mb8-d0", b, 4, "fixed", 8, "dropout 0", 0.0),
                  kt(f"kt-{b}-4bit-mb8-d0-fce", b, 4, "fixed", 8, "dropout 0, fusedCrossEntropy", 0.0,
                     fusedCrossEntropy=True),
                  hf(f"hf-{b}-4bit-mb8", b, 4, "fixed", 8, "TRL defaults"),
                  us(f"us-{b}-4bit-mb8", b, 4, "fixed", 8, "Unsloth, LoRA dropout 0.05 (the recipe's)", 0.05)]
    return cases


def peers(s: str) -> list[Case]:
    """The two TRL peers of issue 15 on shape `s`: SFTTrainer defaults, and with Liger switched on."""
    return [hf(f"hf-{s}-4bit-mb16", s, 4, "fixed", 16, "TRL defaults"),
            hf(f"hf-{s}-4bit-mb16-liger", s, 4, "fixed", 16, "TRL + use_liger_kernel", use_liger_kernel=True)]


def plan_levers(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15, second round: the levers after fusedLora (selective checkpointing, compile, offloading), then the peers."""
    s = shape_small
    cases = [
        kt(f"kt-{s}-4bit-mb16", s, 4, "fixed", 16, "KubeTune defaults"),
        kt(f"kt-{s}-4bit-mb16-sac", s, 4, "fixed", 16, "selectiveCheckpointing", selectiveCheckpointing=True),
        kt(f"kt-{s}-4bit-mb16-compile", s, 4, "fixed", 16, "compileLayers", compileLayers=True),
        kt(f"kt-{s}-4bit-mb16-offload", s, 4, "fixed", 16, "offloadActivations", offloadActivations=True),
        kt(f"kt-{s}-4bit-mb32-offload", s, 4, "fixed", 32, "offloadActivations, micro-batch 32",
           offloadActivations=True),
        kt(f"kt-{s}-4bit-mb16-d0-sac", s, 4, "fixed", 16, "dropout 0, selectiveCheckpointing", 0.0,
           selectiveCheckpointing=True),
        kt(f"kt-{s}-4bit-mb16-compile-noliger", s, 4, "fixed", 16, "compileLayers, ligerKernels off",
           compileLayers=True, ligerKernels=False),
        *peers(s),
        kt(f"kt-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "dropout 0", 0.0),
    ]
    if shape_large:
        b = shape_large
        cases += [hf(f"hf-{b}-4bit-mb8", b, 4, "fixed", 8, "TRL defaults"), kt(f"kt-{b}-4bit-mb8", b, 4, "fixed", 8)]
    return cases


def plan_final(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15, the closing run: the peers, KubeTune's defaults, and the levers that measured a gain, one by one."""
    s = shape_small
    fused_adam = "adamw_torch_fused"
    cases = [
        *peers(s),
        kt(f"kt-{s}-4bit-mb16", s, 4, "fixed", 16, "KubeTune defaults (fusedDropout on)"),
        kt(f"kt-{s}-4bit-mb16-peftdrop", s, 4, "fixed", 16, "fusedDropout false: peft's dropout", fusedDropout=False),
        kt(f"kt-{s}-4bit-mb16-adamfused", s, 4, "fixed", 16, "optimizer adamw_torch_fused", optimizer=fused_adam),
        kt(f"kt-{s}-4bit-mb16-fdrop-sac", s, 4, "fixed", 16, "fusedDropout + selectiveCheckpointing",
           fusedDropout=True, selectiveCheckpointing=True),
        kt(f"kt-{s}-4bit-mb16-all", s, 4, "fixed", 16, "fusedDropout + selectiveCheckpointing + adamw_torch_fused",
           fusedDropout=True, selectiveCheckpointing=True, optimizer=fused_adam),
        kt(f"kt-{s}-4bit-mb16-d0-all", s, 4, "fixed", 16, "dropout 0, selectiveCheckpointing + adamw_torch_fused",
           0.0, selectiveCheckpointing=True, optimizer=fused_adam),
    ]
    if shape_large:
        b = shape_large
        cases += [hf(f"hf-{b}-4bit-mb8", b, 4, "fixed", 8, "TRL defaults"), kt(f"kt-{b}-4bit-mb8", b, 4, "fixed", 8)]
    return cases


def plan_fp8(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15, round 4: `training.fp8BaseMatmuls` beside Unsloth and the best bf16 settings of round 3."""
    s = shape_small
    fce = {"fusedCrossEntropy": True}
    fp8 = {"fusedCrossEntropy": True, "fp8BaseMatmuls": True}
    cases = [
        hf(f"hf-{s}-4bit-mb16", s, 4, "fixed", 16, "TRL defaults"),
        us(f"us-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "Unsloth, LoRA dropout 0 (its default)"),
        kt(f"kt-{s}-4bit-mb16-fce", s, 4, "fixed", 16, "fusedCrossEntropy", **fce),
        kt(f"kt-{s}-4bit-mb16-fce-fp8", s, 4, "fixed", 16, "fusedCrossEntropy + fp8BaseMatmuls", **fp8),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + fp8BaseMatmuls", 0.0,
           **fp8),
        kt(f"kt-{s}-4bit-mb16-fce-fp8-offload", s, 4, "fixed", 16, "fusedCrossEntropy + fp8BaseMatmuls + "
           "offloadActivations", offloadActivations=True, **fp8),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-offload", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + "
           "fp8BaseMatmuls + offloadActivations", 0.0, offloadActivations=True, **fp8),
        kt(f"kt-{s}-4bit-mb16-fce-fp8-compile", s, 4, "fixed", 16, "fusedCrossEntropy + fp8BaseMatmuls + "
           "compileLayers", compileLayers=True, **fp8),
        kt(f"kt-{s}-16bit-mb16", s, 16, "fixed", 16, "16-bit base, KubeTune defaults"),
        kt(f"kt-{s}-16bit-mb16-fp8", s, 16, "fixed", 16, "16-bit base, fp8BaseMatmuls", fp8BaseMatmuls=True),
    ]
    if shape_large:
        b = shape_large
        cases += [us(f"us-{b}-4bit-mb8-d0", b, 4, "fixed", 8, "Unsloth, LoRA dropout 0"),
                  kt(f"kt-{b}-4bit-mb8-fce", b, 4, "fixed", 8, "fusedCrossEntropy", **fce),
                  kt(f"kt-{b}-4bit-mb8-fce-fp8", b, 4, "fixed", 8, "fusedCrossEntropy + fp8BaseMatmuls", **fp8),
                  kt(f"kt-{b}-4bit-mb8-fce-fp8-offload", b, 4, "fixed", 8, "fusedCrossEntropy + fp8BaseMatmuls + "
                     "offloadActivations", offloadActivations=True, **fp8),
                  kt(f"kt-{b}-4bit-mb8-d0-fce-fp8", b, 4, "fixed", 8, "dropout 0, fusedCrossEntropy + "
                     "fp8BaseMatmuls", 0.0, **fp8),
                  kt(f"kt-{b}-4bit-mb8-d0-fce-fp8-offload", b, 4, "fixed", 8, "dropout 0, fusedCrossEntropy + "
                     "fp8BaseMatmuls + offloadActivations", 0.0, offloadActivations=True, **fp8)]
    return cases


def plan_adapter(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15, round 5: the adapter inside the e4m3 matmul, the transposing quantizer, and the 8-bit optimizers."""
    s = shape_small
    fp8 = {"fusedCrossEntropy": True, "fp8BaseMatmuls": True}
    best = {**fp8, "offloadActivations": True}
    cases = [
        us(f"us-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "Unsloth, LoRA dropout 0 (its default)"),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-offload", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + "
           "fp8BaseMatmuls + offloadActivations", 0.0, **best),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-offload-adamw8", s, 4, "fixed", 16, "the same, optimizer adamw_8bit "
           "(not paged)", 0.0, optimizer="adamw_8bit", **best),
        kt(f"kt-{s}-4bit-mb16-fce-fp8-offload-adamw8", s, 4, "fixed", 16, "dropout 0.05, the same", **best,
           optimizer="adamw_8bit"),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + fp8BaseMatmuls", 0.0,
           **fp8),
    ]
    if shape_large:
        b = shape_large
        cases += [us(f"us-{b}-4bit-mb8-d0", b, 4, "fixed", 8, "Unsloth, LoRA dropout 0"),
                  kt(f"kt-{b}-4bit-mb8-d0-fce-fp8-offload", b, 4, "fixed", 8, "dropout 0, fusedCrossEntropy + "
                     "fp8BaseMatmuls + offloadActivations", 0.0, **best),
                  kt(f"kt-{b}-4bit-mb8-d0-fce-fp8-offload-adamw8", b, 4, "fixed", 8, "the same, optimizer "
                     "adamw_8bit (not paged)", 0.0, optimizer="adamw_8bit", **best)]
    return cases


def plan_host(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15, round 6: the step's host-side costs (optimizer launches, the offload context), then the peer."""
    s = shape_small
    best = {"fusedCrossEntropy": True, "fp8BaseMatmuls": True, "offloadActivations": True}
    fused_adam = {"optimizer": "adamw_torch_fused"}
    cases = [
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-offload", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + "
           "fp8BaseMatmuls + offloadActivations", 0.0, **best),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-offload-fusedadam", s, 4, "fixed", 16, "the same, optimizer "
           "adamw_torch_fused", 0.0, **best, **fused_adam),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-fusedadam", s, 4, "fixed", 16, "no offloading, optimizer adamw_torch_fused",
           0.0, fusedCrossEntropy=True, fp8BaseMatmuls=True, **fused_adam),
        us(f"us-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "Unsloth, LoRA dropout 0 (its default)"),
    ]
    if shape_large:
        b = shape_large
        cases += [kt(f"kt-{b}-4bit-mb8-d0-fce-fp8-offload-fusedadam", b, 4, "fixed", 8, "dropout 0, "
                     "fusedCrossEntropy + fp8BaseMatmuls + offloadActivations, adamw_torch_fused", 0.0, **best,
                     **fused_adam),
                  us(f"us-{b}-4bit-mb8-d0", b, 4, "fixed", 8, "Unsloth, LoRA dropout 0")]
    return cases


def plan_standing(shape_small: str, shape_large: str | None) -> list[Case]:
    """Issue 15's marks in one call: Unsloth and KubeTune's levers on both shapes, then the loss reference
    (TRL at the same dropout), TRL + Liger, the variable-length lead with packing, and the 16-bit path
    (fused and not)."""
    s = shape_small
    best = {"fusedCrossEntropy": True, "fp8BaseMatmuls": True, "offloadActivations": True}
    cases = [
        us(f"us-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "Unsloth, LoRA dropout 0 (its default)"),
        kt(f"kt-{s}-4bit-mb16-d0-fce-fp8-offload", s, 4, "fixed", 16, "dropout 0, fusedCrossEntropy + "
           "fp8BaseMatmuls + offloadActivations", 0.0, **best),
    ]
    if shape_large:
        b = shape_large
        cases += [us(f"us-{b}-4bit-mb8-d0", b, 4, "fixed", 8, "Unsloth, LoRA dropout 0"),
                  kt(f"kt-{b}-4bit-mb8-d0-fce-fp8-offload", b, 4, "fixed", 8, "dropout 0, fusedCrossEntropy + "
                     "fp8BaseMatmuls + offloadActivations", 0.0, **best)]
    return cases + [
        hf(f"hf-{s}-4bit-mb16-d0", s, 4, "fixed", 16, "TRL defaults, LoRA dropout 0 (the loss reference)", 0.0),
        hf(f"hf-{s}-4bit-mb16-d0-liger", s, 4, "fixed", 16, "TRL + use_liger_kernel, LoRA dropout 0", 0.0,
           use_liger_kernel=True),
        hf(f"hf-{s}-4bit-varlen-mb16-d0-liger-packed", s, 4, "varlen", 16, "TRL + use_liger_kernel, packing on, "
           "flex_attention (sdpa ignores the packed examples' boundaries)", 0.0, use_liger_kernel=True, packing=True,
           attn_implementation="flex_attention"),
        us(f"us-{s}-4bit-varlen-mb16-d0-packed", s, 4, "varlen", 16, "Unsloth, packing on", packing=True),
        kt(f"kt-{s}-4bit-varlen-mb16-d0-packed", s, 4, "varlen", 16, "dropout 0, packing on (varlen attention)",
           0.0, packing=True),
        kt(f"kt-{s}-4bit-varlen-mb16-d0-packed-fce-fp8-offload", s, 4, "varlen", 16, "dropout 0, packing on, "
           "fusedCrossEntropy + fp8BaseMatmuls + offloadActivations", 0.0, packing=True, **best),
        kt(f"kt-{s}-16bit-mb16", s, 16, "fixed", 16, "16-bit base, KubeTune defaults (fusedLora on)"),
        kt(f"kt-{s}-16bit-mb16-unfused", s, 16, "fixed", 16, "16-bit base, fusedLora false (the path before "
           "issue 15)", fusedLora=False),
    ]


PLANS = {"all": plan, "fused": plan_fused, "levers": plan_levers, "final": plan_final, "unsloth": plan_unsloth,
         "fp8": plan_fp8, "adapter": plan_adapter, "host": plan_host, "standing": plan_standing}


# ---------------------------------------------------------------- tokenizer, models, data


def build_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer: `w<i>` is token i (after the specials), so n words are n tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    core = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def linear_params(config: dict[str, Any], vocab: int) -> int:
    """Weights the tokens multiply through: attention and MLP projections of every layer and the LM head."""
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim", d // config["num_attention_heads"])
    q = d * config["num_attention_heads"] * head_dim
    kv = 2 * d * config["num_key_value_heads"] * head_dim
    per_layer = q + kv + q + 3 * d * ff
    return layers * per_layer + d * vocab


def make_model(shape: str, folder: Path, vocab: int, device: str) -> Path:
    """Save a random-weight model of `shape` (bf16 on the GPU, fp32 on the CPU) and the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer(vocab)
    config = LlamaConfig(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def _words(rng: random.Random, n: int, vocab: int) -> str:
    return " ".join(f"w{rng.randrange(vocab - len(SPECIALS))}" for _ in range(n))


def make_data(folder: Path, seq: int, rows: int, vocab: int) -> dict[str, Path]:
    """fixed.jsonl (text rows longer than `seq`) and varlen.jsonl (prompt/completion, 64..seq tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    fixed, varlen = folder / "fixed.jsonl", folder / "varlen.jsonl"
    with fixed.open("w") as out:
        for _ in range(rows):
            out.write(json.dumps({"text": _words(rng, seq + 16, vocab)}) + "\n")
    low = min(64, seq // 4)
    with varlen.open("w") as out:
        for _ in range(rows * 2):
            total = int(math.exp(rng.uniform(math.log(low), math.log(seq - 8))))
            prompt = max(8, total // 4)
            out.write(json.dumps({"prompt": _words(rng, prompt, vocab),
                                  "completion": _words(rng, total - prompt, vocab)}) + "\n")
    return {"fixed": fixed, "varlen": varlen}


# ---------------------------------------------------------------- measuring inside a case


class TokenCounter:
    """Wraps a data collator and records, per batch, its real tokens and the sum of squared example lengths."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.tokens: list[int] = []
        self.square_lengths: list[int] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if "cu_seq_lens_q" in batch:
            lengths = batch["cu_seq_lens_q"].diff().tolist()
        elif batch.get("position_ids") is not None and batch["position_ids"].shape[0] == 1:
            # One flattened row (padding-free, as Unsloth batches): each example restarts its positions at 0.
            positions = batch["position_ids"][0]
            starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
            lengths = [b - a for a, b in itertools.pairwise(starts)]
        elif "attention_mask" in batch:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
        else:
            lengths = [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
        self.tokens.append(int(sum(lengths)))
        self.square_lengths.append(int(sum(n * n for n in lengths)))
        return batch


def timing_callback(device: str) -> Any:
    """A TrainerCallback timing each optimizer step between device synchronizations."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0
            self.first_step_end: float | None = None
            self.train_begin: float | None = None
            self.ends: list[float] = []  # when each step ended: the time between steps counts in the run's rate
            self.gc_seconds: list[float] = []  # the garbage collector's time in each step and after it, to the next
            self._gc_started = 0.0
            gc.callbacks.append(self._gc_phase)

        def _gc_phase(self, phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            elif self.gc_seconds:
                self.gc_seconds[-1] += time.perf_counter() - self._gc_started

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.gc_seconds.append(0.0)
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            now = time.perf_counter()
            self.seconds.append(now - self._start)
            self.ends.append(now)
            if self.first_step_end is None:
                self.first_step_end = now

    return StepTimer()


def profile_callback(step: int, sink: Path) -> Any:
    """A TrainerCallback that profiles optimizer step `step` (0-based; a warm-up step, so no timed step pays for it).

    Writes the ops and kernels by their own GPU time to `sink`: where a step's time goes.
    """
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.profiler: Any = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == step:
                activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.profiler is None:
                return
            torch.cuda.synchronize()
            self.profiler.__exit__(None, None, None)
            events = self.profiler.key_averages()
            total = sum(e.self_device_time_total for e in events) / 1e3
            sink.write_text(f"total self GPU time {total:.1f} ms\n" + gpu_idle(self.profiler.events())
                            + events.table(sort_by="self_device_time_total", row_limit=45, max_name_column_width=70))
            self.profiler = None

    return StepProfiler()


def run_rate(tokens: list[int], ends: list[float], timed: range) -> float | None:
    """The timed steps' tokens over the wall time from the step before them to the last one's end.

    Unlike the median step, this counts what happens between steps (logging, the garbage
    collector, the data loader); None without a step before the timed ones.
    """
    if not timed or timed.start < 1:
        return None
    return sum(tokens[i] for i in timed) / (ends[timed[-1]] - ends[timed.start - 1])


def gpu_idle(events: Any, shown: int = 12) -> str:
    """Where the GPU waited inside a profiled step: busy time (the union of kernel and copy intervals) against
    the span from the first to the last, and the longest gaps with the kernel each gap followed.

    Gaps are the host's share of the step: the GPU had nothing queued (launch cost, a synchronization).
    """
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    if not spans:
        return "no GPU events\n"
    busy, gaps, reach, last = 0.0, [], spans[0][0], spans[0][2]
    for start, end, name in spans:
        if start > reach:
            gaps.append((start - reach, last))
        busy += max(0.0, end - max(start, reach))
        if end > reach:
            reach, last = end, name
    span = reach - spans[0][0]
    idle = sum(g for g, _ in gaps)
    lines = [(f"GPU busy {busy / 1e3:.1f} ms of a {span / 1e3:.1f} ms span; idle {idle / 1e3:.1f} ms in "
             f"{len(gaps)} gaps ({sum(g for g, _ in gaps if g >= 20) / 1e3:.1f} ms in gaps of 20 us or more)")]
    lines += [f"  gap {g:8.0f} us after {name[:90]}" for g, name in sorted(gaps, reverse=True)[:shown]]
    return "\n".join(lines) + "\n"


def memory_callback(step: int, sink: Path) -> Any:
    """A TrainerCallback that records every CUDA allocation of optimizer step `step` and writes what was live at
    the step's peak, grouped by the Python line that allocated it (the first frame outside torch).

    The peak is the one `max_memory_allocated` reports when it falls in this step: the memory held
    when the step began plus the most the step's own allocations added on top.
    """
    import torch
    from transformers import TrainerCallback

    class PeakRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.base = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == step:
                torch.cuda.synchronize()
                self.base = torch.cuda.memory_allocated()
                torch.cuda.memory._record_memory_history(context="alloc", stacks="python", max_entries=2_000_000)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step != step + 1:  # global_step is already incremented here
                return
            torch.cuda.synchronize()
            trace = torch.cuda.memory._snapshot()["device_traces"][torch.cuda.current_device()]
            torch.cuda.memory._record_memory_history(enabled=None)
            sink.write_text(peak_report(trace, self.base))

    return PeakRecorder()


def _site(frames: list[dict[str, Any]]) -> str:
    """The first frame outside torch itself: the line of a library or ours that asked for the memory."""
    for frame in frames:
        name = frame.get("filename", "")
        if "/torch/" not in name and not name.startswith("<"):
            return f"{'/'.join(name.split('/')[-2:])}:{frame.get('line')} {frame.get('name')}"
    return "torch internals"


def peak_report(trace: list[dict[str, Any]], base: int, shown: int = 18) -> str:
    """Replay an allocation trace; the blocks live at its highest point, grouped by `_site`, largest first."""
    live: dict[int, tuple[int, str]] = {}
    held = top = 0
    at_top: dict[int, tuple[int, str]] = {}
    for event in trace:
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            live[addr] = (size, _site(event.get("frames", [])))
            held += size
            if held > top:
                top, at_top = held, dict(live)
        elif action in ("free_requested", "free_completed") and addr in live:
            held -= live.pop(addr)[0]
    sites: dict[str, int] = {}
    for size, site in at_top.values():
        sites[site] = sites.get(site, 0) + size
    lines = [(f"held when the step began {base / 2**30:.3f} GiB; the step's own allocations peaked at "
             f"{top / 2**30:.3f} GiB more ({(base + top) / 2**30:.3f} GiB in all); live at that point, by site:")]
    lines += [f"  {size / 2**20:9.1f} MiB  {site}" for site, size in sorted(sites.items(), key=lambda kv: -kv[1])[:shown]]
    return "\n".join(lines) + "\n"


def host_timing(trainer: Any, step: int, sink: Path) -> None:
    """Measure how long the host takes to enqueue optimizer step `step`'s forward and backward (0-based warm-up step).

    A GPU sleep longer than the step is queued first, so the GPU never waits for the host: the time
    `training_step` takes on the host is then its own launch cost (Python, dispatch, kernel launches),
    unless something in it synchronizes, which shows as a host time as long as the sleep. Set beside
    the step's wall time, it says whether the step is bound by the host or by the GPU.
    """
    import torch

    original = trainer.training_step

    def timed(*args: Any, **kwargs: Any) -> Any:
        if trainer.state.global_step != step:
            return original(*args, **kwargs)
        torch.cuda.synchronize()
        cycles = 4_000_000_000
        started = time.perf_counter()
        torch.cuda._sleep(cycles)
        torch.cuda.synchronize()
        sleep_s = time.perf_counter() - started
        torch.cuda._sleep(cycles)
        started = time.perf_counter()
        loss = original(*args, **kwargs)
        host_s = time.perf_counter() - started
        torch.cuda.synchronize()
        busy_s = time.perf_counter() - started - sleep_s  # the step's GPU work after the sleep ended
        sink.write_text(json.dumps({"host_s": host_s, "sleep_s": sleep_s, "gpu_s": busy_s,
                                    "synchronized": host_s > 0.9 * sleep_s}))
        return loss

    trainer.training_step = timed


def _instrument(trainer: Any, device: str) -> tuple[Any, TokenCounter]:
    timer = timing_callback(device)
    trainer.add_callback(timer)
    host = os.environ.get("KT_BENCH_HOST_TIME")
    if host and device == "cuda":
        host_timing(trainer, int(os.environ.get("KT_BENCH_WATCHED_STEP", "1")), Path(host))
    memory = os.environ.get("KT_BENCH_MEMORY")
    if memory and device == "cuda":
        trainer.add_callback(memory_callback(int(os.environ.get("KT_BENCH_WATCHED_STEP", "1")), Path(memory)))
    profile = os.environ.get("KT_BENCH_PROFILE")
    if profile and device == "cuda":
        trainer.add_callback(profile_callback(int(os.environ.get("KT_BENCH_WATCHED_STEP", "1")), Path(profile)))
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    return timer, counter


def run_baseline(case: Case, model_dir: Path, data: Path, steps: int, seq: int, work: Path, device: str) -> Any:
    """Plain Hugging Face: from_pretrained (+ bitsandbytes), LoraConfig, SFTTrainer with default settings."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    on_gpu = device == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    kwargs: dict[str, Any] = {}
    if case.bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    options = dict(case.levers)
    attention = str(options.pop("attn_implementation", "sdpa"))  # the model's, not an SFTConfig argument
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention,
                                                 device_map={"": 0} if on_gpu else None, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = datasets.load_dataset("json", data_files=str(data), split="train")
    args = SFTConfig(output_dir=str(work / "hf"), per_device_train_batch_size=case.micro_batch, max_steps=steps,
                     max_length=seq, learning_rate=2e-4, logging_steps=1, report_to="none", save_strategy="no",
                     bf16=on_gpu, use_cpu=not on_gpu, disable_tqdm=True, **options)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=case.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=lora)
    timer, counter = _instrument(trainer, device)
    trainer.train()
    return trainer, timer, counter


def run_unsloth(case: Case, model_dir: Path, data: Path, steps: int, seq: int, work: Path, device: str) -> Any:
    """Unsloth as a user runs it: its loader, its LoRA and checkpointing, its patched TRL SFTTrainer."""
    # isort: off
    import unsloth  # noqa: F401 - first: it patches transformers and TRL on import
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel
    # isort: on

    if device != "cuda":
        raise RuntimeError("Unsloth runs on a GPU only")
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=seq, dtype=torch.bfloat16, load_in_4bit=case.bits == 4,
        load_in_16bit=case.bits == 16)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=32, lora_dropout=case.dropout, bias="none", use_gradient_checkpointing="unsloth",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    rows = datasets.load_dataset("json", data_files=str(data), split="train")
    args = SFTConfig(output_dir=str(work / "unsloth"), per_device_train_batch_size=case.micro_batch,
                     gradient_accumulation_steps=1, max_steps=steps, max_length=seq, learning_rate=2e-4,
                     logging_steps=1, report_to="none", save_strategy="no", bf16=True, disable_tqdm=True,
                     dataset_text_field="text", **case.levers)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=rows, args=args)
    timer, counter = _instrument(trainer, device)
    trainer.train()
    return trainer, timer, counter


def unsloth_versions() -> str:
    """The versions an Unsloth case ran with (its own install target), for its note."""
    import importlib.metadata as md

    return ", ".join(f"{name} {md.version(name)}" for name in ("unsloth", "unsloth_zoo", "transformers", "trl",
                                                                 "peft", "bitsandbytes"))


def kubetune_recipe(case: Case, model_dir: Path, data: Path, steps: int, seq: int) -> dict[str, Any]:
    """The FineTuneJob a user would write for this case (recipe defaults elsewhere)."""
    fmt = {"fixed": "text", "varlen": "prompt-completion"}[case.data]
    training: dict[str, Any] = {"maxSteps": steps, "batchSize": case.micro_batch, "gradientAccumulation": 1,
                                "maxSeqLength": seq, "loggingSteps": 1, "saveSteps": 100000, "reportTo": [],
                                "learningRate": 2e-4, **case.levers}
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {
            "model": {"name": str(model_dir)},
            "dataset": {"path": str(data), "format": fmt, "validationSplit": 0.0},
            "method": {"quantization": {"bits": case.bits}, "lora": {"dropout": case.dropout}},
            "training": training,
            "metricsPort": 19090 + os.getpid() % 1000,
        },
    }


def run_kubetune(case: Case, model_dir: Path, data: Path, steps: int, seq: int, work: Path, device: str) -> Any:
    """KubeTune's trainer through `train.train()`, instrumented through the `build_trainer` seam."""
    from kubetune_trainer import train as kt_train
    from kubetune_trainer.signals import StopRequest

    recipe = work / "recipe.json"
    recipe.write_text(json.dumps(kubetune_recipe(case, model_dir, data, steps, seq)), encoding="utf-8")
    seen: dict[str, Any] = {}
    original = kt_train.build_trainer

    def instrumented(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        seen["trainer"] = trainer
        seen["timer"], seen["counter"] = _instrument(trainer, device)
        return trainer

    kt_train.build_trainer = instrumented
    outcome = kt_train.train(kt_train.load_job(recipe), kt_train.Workspace(work / "ws"), StopRequest())
    if outcome.status != "succeeded":
        raise RuntimeError(f"kubetune trainer ended {outcome.status}: {outcome.message}")
    return seen["trainer"], seen["timer"], seen["counter"]


def measure(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in this process and return its numbers."""
    import torch

    device = args.device
    work = Path(args.out) / "cases" / case.name
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.out) / "models" / case.shape
    data = Path(args.out) / "data" / f"{case.data}.jsonl"
    steps = args.warmup + args.steps
    run = {"baseline": run_baseline, "kubetune": run_kubetune, "unsloth": run_unsloth}[case.trainer]
    started = time.perf_counter()
    trainer, timer, counter = run(case, model_dir, data, steps, args.seq, work, device)
    wall = time.perf_counter() - started
    config = json.loads((model_dir / "config.json").read_text())
    n_linear = linear_params(config, config["vocab_size"])
    width = config["num_attention_heads"] * config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    attn_per_square = 6 * config["num_hidden_layers"] * width
    # Per optimizer step: the collator sees each micro-batch, the timer each optimizer step.
    accumulation = max(1, int(getattr(trainer.args, "gradient_accumulation_steps", 1)))
    tokens = [sum(counter.tokens[i:i + accumulation]) for i in range(0, len(counter.tokens), accumulation)]
    squares = [sum(counter.square_lengths[i:i + accumulation])
               for i in range(0, len(counter.square_lengths), accumulation)]
    timed = range(args.warmup, min(len(timer.seconds), len(tokens)))
    rates = [tokens[i] / timer.seconds[i] for i in timed]
    flops = [(4 * n_linear * tokens[i] + attn_per_square * squares[i]) / timer.seconds[i] for i in timed]
    logs = trainer.state.log_history
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    grads = [entry.get("grad_norm") for entry in logs if "loss" in entry]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {
        **asdict(case),
        "tokens_per_s": statistics.median(rates) if rates else 0.0,
        "tokens_per_step": statistics.median(tokens[args.warmup:]) if tokens[args.warmup:] else 0,
        "run_tokens_per_s": run_rate(tokens, timer.ends, timed),
        "gradient_accumulation": accumulation,
        "versions": unsloth_versions() if case.trainer == "unsloth" else "",
        "step_s": [round(s, 4) for s in timer.seconds],
        "flops_per_s": statistics.median(flops) if flops else 0.0,
        "peak_gib": peak,
        "losses": losses,
        "grad_norms": grads,
        "wall_s": wall,
        "first_step_s": timer.first_step_end - PROCESS_START if timer.first_step_end else None,
        # the first step's two parts: the set-up before training (imports, loading, data, assembly), then the step
        "setup_s": timer.train_begin - PROCESS_START if timer.train_begin else None,
        "gc_ms": [round(s * 1e3, 2) for s in timer.gc_seconds],
        "host": json.loads(Path(host).read_text()) if (host := os.environ.get("KT_BENCH_HOST_TIME")) else None,
        # LoRA projections whose class the fusing renamed: by name, so that --against's older trees count too
        "fused_modules": sum(hasattr(module, "lora_A") and type(module).__name__.startswith("Fused")
                             for module in trainer.model.modules()),
    }


# ---------------------------------------------------------------- orchestration and report


def matmul_ceiling(device: str) -> float:
    """The bf16 matmul rate of this GPU (8192^3 on random data, median of timed runs), in FLOP/s."""
    if device != "cuda":
        return 0.0
    import torch

    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / statistics.median(times)


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "liger-kernel", "triton"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "absent"
    return found


def run_case_process(case: Case, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """Run `case` in a child process; a crash or timeout becomes an error row."""
    log = Path(args.out) / "cases" / f"{case.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    result = Path(args.out) / "cases" / f"{case.name}.json"
    command = [sys.executable, __file__, "--child", json.dumps(asdict(case)), "--out", args.out,
               "--device", args.device, "--seq", str(args.seq), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
    env = dict(os.environ)
    if args.profile and any(word in case.name for word in args.profile.split(",")):
        env.update(KT_BENCH_PROFILE=str(Path(args.out) / "cases" / f"{case.name}.profile.txt"))
    elif args.host_time and any(word in case.name for word in args.host_time.split(",")):
        env.update(KT_BENCH_HOST_TIME=str(Path(args.out) / "cases" / f"{case.name}.host.json"))
    if args.memory and any(word in case.name for word in args.memory.split(",")):
        env.update(KT_BENCH_MEMORY=str(Path(args.out) / "cases" / f"{case.name}.memory.txt"))
    env.setdefault("KT_BENCH_WATCHED_STEP", str(max(0, args.warmup - 1)))
    if case.trainer == "unsloth":  # its pinned transformers/TRL/datasets first, the rest from the main stack
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.unsloth_site, env.get("PYTHONPATH", "")) if p)
    try:
        with log.open("w") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                                  env=env).returncode
    except subprocess.TimeoutExpired:
        return {**asdict(case), "error": f"timed out after {timeout:.0f} s"}
    if code != 0 or not result.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {**asdict(case), "error": f"exit {code}: {' | '.join(tail)[-300:]}"}
    return json.loads(result.read_text())


def interleaved(cases: list[Case], rounds: int, against: str) -> list[Case]:
    """`cases` `rounds` times over, each KubeTune case followed by the same case on `against`'s trainer.

    Machines differ by more than most levers gain (the same 1B case measured 56.7k-72.1k tokens/s
    on different calls): an A/B is only read inside one call, and alternating the two sides spreads
    any drift of the machine over both.
    """
    label = re.sub(r"[^a-z0-9]+", "-", Path(against).name.lower()).strip("-") if against else ""
    runs = []
    for turn in range(rounds):
        for case in cases:
            name = f"{case.name}-r{turn + 1}" if rounds > 1 else case.name
            runs.append(replace(case, name=name))
            if against and case.trainer == "kubetune":
                runs.append(replace(case, name=f"{name}-{label}", code=str(Path(against).resolve()),
                                    note=f"{case.note}; trainer from {against}"))
    return runs


def estimate_s(case: Case) -> float:
    """A rough wall time for a case, to skip it when the budget cannot hold it."""
    return {"8b": 110.0}.get(case.shape, 40.0) * (2.0 if case.trainer == "unsloth" else 1.0)


def _baseline_of(results: list[dict[str, Any]], r: dict[str, Any], liger: bool = False) -> dict[str, Any] | None:
    """The first TRL run (with Liger or without) on the same shape, bits and data (the plans run mb 16, or 8 for 8B, first)."""
    return next((b for b in results if b["trainer"] == "baseline" and "error" not in b
                 and bool(b["levers"].get("use_liger_kernel")) == liger
                 and (b["shape"], b["bits"], b["data"]) == (r["shape"], r["bits"], r["data"])), None)


def _unsloth_of(results: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    """The Unsloth run at LoRA dropout 0 (its default and fastest) on the same shape, bits and data."""
    return next((u for u in results if u["trainer"] == "unsloth" and "error" not in u and u.get("dropout") == 0.0
                 and (u["shape"], u["bits"], u["data"]) == (r["shape"], r["bits"], r["data"])), None)


def _max_gap(a: list[float], b: list[float]) -> float:
    pairs = list(zip(a, b))
    return max(abs(x - y) / abs(y) for x, y in pairs) if pairs else float("nan")


def parity(results: list[dict[str, Any]]) -> dict[str, str]:
    """Loss curves against the run they should match: baseline at equal micro-batch, and levers on vs off."""
    notes: dict[str, str] = {}
    ok = [r for r in results if "error" not in r and r["losses"]]
    for r in ok:
        if r["trainer"] == "baseline":
            continue
        same = [o for o in ok if (o["shape"], o["bits"], o["data"], o["micro_batch"], o.get("dropout", 0.05))
                == (r["shape"], r["bits"], r["data"], r["micro_batch"], r.get("dropout", 0.05))]
        base = next((o for o in same if o["trainer"] == "baseline" and not o["levers"]), None)
        found = []
        if base is not None:
            found.append(f"loss vs baseline: step 1 {_max_gap(r['losses'][:1], base['losses'][:1]):.1e}, "
                         f"max {_max_gap(r['losses'], base['losses']):.1e}")
        plain = next((o for o in same if o["trainer"] == "kubetune" and not o["levers"]), None)
        if r["trainer"] == "kubetune" and r["levers"] and plain is not None and not r["levers"].get("packing"):
            found.append(f"loss vs levers on: max {_max_gap(r['losses'], plain['losses']):.1e}")
        notes[r["name"]] = "; ".join(found)
    return notes


def table(results: list[dict[str, Any]], ceiling: float) -> str:
    """The markdown table of all cases, with ratios against the baseline of the same shape/bits/data."""
    notes = parity(results)
    columns = ["case", "trainer", "model", "base", "data", "mb", "dropout", "tokens/s", "run tok/s", "× baseline",
               "× TRL+Liger", "× Unsloth (d0)", "peak GiB", "× Unsloth mem", "× baseline mem", "MFU (989)", "MFU (measured)",
               "first step s (set-up + step)", "last loss", "grad norm", "note"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        head = [r["name"], r["trainer"], r["shape"], f"{r['bits']}-bit", r["data"], str(r["micro_batch"]),
                str(r.get("dropout", 0.05))]
        if "error" in r:
            lines.append("| " + " | ".join(head + ["—"] + [""] * 12 + [r["error"].replace("|", "/")]) + " |")
            continue
        b, liger = _baseline_of(results, r), _baseline_of(results, r, liger=True)
        speed = f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}" if b and b["tokens_per_s"] else ""
        over_liger = f"{r['tokens_per_s'] / liger['tokens_per_s']:.2f}" if liger and liger["tokens_per_s"] else ""
        u = _unsloth_of(results, r)
        over_unsloth = f"{r['tokens_per_s'] / u['tokens_per_s']:.2f}" if u and u["tokens_per_s"] else ""
        unsloth_memory = f"{r['peak_gib'] / u['peak_gib']:.2f}" if u and u["peak_gib"] else ""
        memory = f"{r['peak_gib'] / b['peak_gib']:.2f}" if b and b["peak_gib"] else ""
        mfu_measured = f"{r['flops_per_s'] / ceiling:.1%}" if ceiling else ""
        first = f"{r['first_step_s']:.0f}" if r.get("first_step_s") else ""
        if r.get("setup_s") and r.get("first_step_s"):
            first += f" ({r['setup_s']:.0f} + {r['first_step_s'] - r['setup_s']:.0f})"
        loss = f"{r['losses'][-1]:.3f}" if r["losses"] else ""
        grad = f"{r['grad_norms'][-1]:.3g}" if r["grad_norms"] and r["grad_norms"][-1] is not None else ""
        fused = f"{r['fused_modules']} projections fused" if r.get("fused_modules") else ""
        note = "; ".join(x for x in (r.get("note", ""), fused, notes.get(r["name"], ""), r.get("versions", "")) if x)
        run_rate = f"{r['run_tokens_per_s']:,.0f}" if r.get("run_tokens_per_s") else ""
        cells = [f"{r['tokens_per_s']:,.0f}", run_rate, speed, over_liger, over_unsloth, f"{r['peak_gib']:.1f}",
                 unsloth_memory, memory, f"{r['flops_per_s'] / H100_BF16_PEAK:.1%}", mfu_measured, first, loss, grad,
                 note]
        lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines)


def write_doc(path: Path, header: dict[str, Any], body: str) -> None:
    """docs/benchmarks.md: how it was measured, then the table."""
    text = [
        "# Benchmarks: KubeTune's trainer against plain Hugging Face",
        "",
        "Written by `bench/gpu_throughput.py` from one run (see the module docstring for the method).",
        "",
        "| | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in header.items()],
        "",
        ("× baseline: against plain Hugging Face (TRL SFTTrainer defaults) on the same model shape, base "
         "precision and data, in the same run (micro-batch 16, 8 for the 8B shape). Tokens exclude padding."),
        "",
        body,
        "",
    ]
    path.write_text("\n".join(text), encoding="utf-8")


def orchestrate(args: argparse.Namespace) -> int:
    """Build models and data, run the cases within the budget, print and write the table."""
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    small, large = ("1b", None if args.no_8b else "8b") if args.device == "cuda" else ("tiny", None)
    vocab = VOCAB if args.device == "cuda" else 2000
    import torch

    ceiling = matmul_ceiling(args.device)
    header: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "bf16 matmul measured (8192³)": f"{ceiling / 1e12:.0f} TFLOP/s" if ceiling else "n/a",
        "sequence length": args.seq, "warm-up steps": args.warmup, "timed steps": args.steps,
        **versions(),
    }
    print(json.dumps(header), flush=True)
    make_data(out / "data", args.seq, rows=max(64, 34 * (args.warmup + args.steps)), vocab=vocab)
    make_model(small, out / "models" / small, vocab, args.device)
    results: list[dict[str, Any]] = []
    chosen = [case for case in PLANS[args.plan](small, large) if not args.only or any(
        word[1:] == case.name if word.startswith("=") else word in case.name for word in args.only.split(","))]
    for case in interleaved(chosen, args.rounds, args.against):
        left = args.budget_s - (time.monotonic() - started)
        if case.shape == large and not (out / "models" / large / "config.json").exists():
            if left < 3 * estimate_s(case):
                print(f"skip {case.name}: {left:.0f} s left", flush=True)
                continue
            make_model(large, out / "models" / large, vocab, args.device)
            left = args.budget_s - (time.monotonic() - started)
        if left < estimate_s(case):
            print(f"skip {case.name}: {left:.0f} s left", flush=True)
            continue
        result = run_case_process(case, args, timeout=max(30.0, left))
        results.append(result)
        with (out / "results.jsonl").open("a") as sink:
            sink.write(json.dumps(result) + "\n")
        shown = result.get("error") or (f"{result['tokens_per_s']:,.0f} tok/s, {result['peak_gib']:.1f} GiB, "
                                        f"{result['wall_s']:.0f} s, losses {[round(x, 3) for x in result['losses']]}")
        print(f"{case.name}: {shown}", flush=True)
    body = table(results, ceiling)
    print(body, flush=True)
    (out / "table.md").write_text(body + "\n")
    if args.doc:
        write_doc(Path(args.doc), header, body)
    return 0 if results and all("error" not in r for r in results) else 1


# ---------------------------------------------------------------- one layer: peft's LoRA vs the fused projections


def _lora_layers(folder: Path, bits: int, dropout: float, device: str) -> Any:
    """The saved model's decoder stack with peft LoRA (r16, alpha 32, all linear) in the training dtype, adapters random."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"device_map": {"": 0}} if device == "cuda" else {}
    if bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():
        if param.requires_grad:  # bf16 like TRL casts them on a quantized base; B non-zero so both paths do work
            param.data = (torch.randn(param.shape, generator=generator) * 0.02).to(param.device, dtype)
    return model.train()


def layer_bench(args: argparse.Namespace) -> int:
    """Forward + backward of the decoder stack (no LM head, no recomputation): peft's LoRA, the fused one, and fp8.

    The 1B shape cut to 2 layers on the GPU (16 x 2048 tokens, like the throughput cases), the
    tiny one on the CPU. Prints ms per layer, peak memory, and how far the fused output and input
    gradient are from peft's (same dropout masks: one seed).
    """
    import torch
    from kubetune_trainer import fp8_matmul, fused_lora

    on_gpu = args.device == "cuda"
    shape = "1b-2layers" if on_gpu else "tiny"
    SHAPES["1b-2layers"] = {**SHAPES["1b"], "num_hidden_layers": 2, "tie_word_embeddings": False}
    folder = make_model(shape, Path(args.out) / "models" / shape, 1024, args.device)
    config = json.loads((folder / "config.json").read_text())
    rows, seq = (16, args.seq) if on_gpu else (2, 64)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(rows, seq, config["hidden_size"], generator=generator).to(args.device, dtype)
    grad_out = torch.randn(rows, seq, config["hidden_size"], generator=generator).to(args.device, dtype)
    repeats = 10 if on_gpu else 2
    lines = ["| base | dropout | LoRA path | ms per layer (fwd+bwd) | peak GiB | output vs peft | input grad vs peft |",
             "|---|---|---|---|---|---|---|"]
    for bits in (4, 16):
        for dropout in (0.05, 0.0):
            model = _lora_layers(folder, bits, dropout, args.device)
            stack = model.base_model.model.model
            reference: dict[str, Any] = {}
            for path in ("peft", "fused", "fused+fp8")[: 3 if fp8_matmul.available() and on_gpu else 2]:
                if path == "fused":
                    fused_lora.apply(model)
                if path == "fused+fp8":
                    fused_lora.set_fp8_base(model, True)
                x = x0.clone().requires_grad_(True)

                def step(stack: Any = stack, x: Any = x) -> Any:  # bound now: the loops rebind both names
                    torch.manual_seed(0)
                    out = stack(inputs_embeds=x).last_hidden_state
                    out.backward(grad_out)
                    return out

                for _ in range(2):
                    step()
                if on_gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(repeats):
                    x.grad = None
                    start = time.perf_counter()
                    out = step()
                    if on_gpu:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0
                if args.layer_profile and on_gpu:
                    name = f"layer-{bits}bit-d{dropout}-{path.replace('+', '-')}.txt"  # no '+': the device's $OUT drops it
                    _profile_layer_step(step, Path(args.out) / name)
                ms = statistics.median(times) * 1e3 / config["num_hidden_layers"]
                got = {"out": out.detach().double(), "grad": x.grad.detach().double()}
                if path == "peft":
                    reference = got
                    diff = ["", ""]
                else:
                    diff = [f"{float((got[k] - reference[k]).norm() / reference[k].norm()):.1e}" for k in ("out", "grad")]
                lines.append(f"| {bits}-bit | {dropout} | {path} | {ms:.2f} | {peak:.2f} | {diff[0]} | {diff[1]} |")
                print(lines[-1], flush=True)
            del model, stack
            if on_gpu:
                torch.cuda.empty_cache()
    body = "\n".join(lines)
    print(body, flush=True)
    (Path(args.out) / "layer.md").write_text(body + "\n")
    return 0


def _profile_layer_step(step: Any, sink: Path) -> None:
    """One more step under torch.profiler: the CUDA kernels by total time, as a table in `sink`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    sink.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))


def make_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/kubetune-bench", help="models, data, logs and results.jsonl")
    parser.add_argument("--doc", default=None, help="write the report here (docs/benchmarks.md)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting cases after this long")
    parser.add_argument("--rounds", type=int, default=1, help="run the chosen cases this many times over "
                        "(names get -r1, -r2, ...)")
    parser.add_argument("--against", default="", help="a tree (e.g. `git worktree add /tmp/base <rev>`) whose "
                        "trainer runs each KubeTune case again right after this tree's (name suffix: its folder)")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names to run "
                        "(=NAME: that case alone)")
    parser.add_argument("--no-8b", action="store_true", help="leave out the 8B shape")
    parser.add_argument("--unsloth-site", default="/tmp/usite", help="Unsloth's install target (pip --target), "
                        "put first on the PYTHONPATH of its cases")
    parser.add_argument("--plan", choices=sorted(PLANS), default="all", help="which list of cases to run")
    parser.add_argument("--profile", default="", help="comma-separated substrings of case names to profile "
                        "(the last warm-up step; writes OUT/cases/NAME.profile.txt)")
    parser.add_argument("--host-time", default="", help="comma-separated substrings of case names whose last "
                        "warm-up step measures the host's launch time behind a GPU sleep (OUT/cases/NAME.host.json; "
                        "not with --profile)")
    parser.add_argument("--memory", default="", help="comma-separated substrings of case names whose last warm-up "
                        "step records its allocations: what is live at the peak (OUT/cases/NAME.memory.txt)")
    parser.add_argument("--layer", action="store_true", help="time one decoder layer: peft's LoRA vs fused, then exit")
    parser.add_argument("--layer-profile", action="store_true", help="with --layer: a kernel table per path in --out")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: the orchestrator, or one case in a child process."""
    args = make_parser().parse_args(argv)
    case = Case(**json.loads(args.child)) if args.child is not None else None
    code = Path(case.code) if case is not None and case.code else ROOT
    sys.path[:0] = [str(code / "trainer-image"), str(code / "api"), str(ROOT / "operator"), str(ROOT)]
    if args.layer:
        return layer_bench(args)
    if case is None:
        return orchestrate(args)
    result = measure(case, args)
    (Path(args.out) / "cases" / f"{case.name}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
