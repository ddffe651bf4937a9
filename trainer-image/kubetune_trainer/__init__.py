"""The KubeTune trainer: recipe → data → model → train → checkpoint → export (see train.py).

Importing the package quiets two kinds of library noise that a run cannot act on, here
because this runs before the trainer imports torch, transformers or bitsandbytes:

- bitsandbytes logs a warning at import, on CPUs with AVX512-BF16, when the optional
  `kernels` package (which would fetch a kernel from the hub) is missing; its built-in
  CPU kernel is then used, which is what a CPU run wants anyway.
- transformers, peft, trl and accelerate warn (FutureWarning) about their own APIs that
  they call each other through: deprecations for their maintainers, not for the user.
- peft, saving an adapter whose base is a GGUF file (a folder without config.json),
  warns that it cannot check the vocabulary for resized embeddings; LoRA never resizes it.
"""

from __future__ import annotations

import logging
import warnings

NOISY_LIBRARIES = r"(transformers|peft|trl|accelerate)(\.|$)"
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


class _MissingKernelsFilter(logging.Filter):
    """Drops bitsandbytes' 'pip install kernels' warning, and only that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pip install kernels" not in record.getMessage()


logging.getLogger(BITSANDBYTES_CPU_LOGGER).addFilter(_MissingKernelsFilter())
warnings.filterwarnings("ignore", category=FutureWarning, module=NOISY_LIBRARIES)
warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning, module=r"peft\.")
