"""`training.offloadActivations` without a host synchronization per step.

TRL's `OffloadActivations` (the context SFTTrainer enters around every training step) ends each
step with `synchronize()` on its two streams, and starts the next with `empty_cache()` whenever
bitsandbytes is loaded (a `cudaFree`, which waits for the device as well). Either makes the host
wait until the GPU has finished the step's backward, so the Trainer's bookkeeping, the gradient
clipping and the optimizer's launches run while the GPU idles instead of behind the backward's tail.

`StreamOrderedOffload` keeps TRL's offloading as is and changes only those two ends:

- at exit, the tensors still stashed (brought back for the last backward nodes, or still being
  copied out) are handed to the caching allocator with the streams that may still read them
  (`record_stream`): what the synchronization guaranteed, without the host waiting for it;
- at entry, TRL's reset of the previous step's bookkeeping runs (it drops the references whose
  leak TRL's `empty_cache` was added against), but the allocator keeps its cached blocks, which
  the next step reuses instead of asking CUDA for them again.

Why not upstream's: TRL has no switch for either. The class is swapped on the instance SFTTrainer
built (`install`), so TRL's hooks on the LM head and its parameter filter stay as they were.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)


@functools.cache
def _stream_ordered_class() -> type:
    """`StreamOrderedOffload`, made on first use (TRL and torch are imported only when offloading is on)."""
    import types

    from torch.autograd.graph import saved_tensors_hooks
    from trl.models.activation_offloading import OffloadActivations

    class StreamOrderedOffload(OffloadActivations):
        """TRL's activation offloading whose step boundaries are ordered on the GPU's streams, not by the host."""

        def __enter__(self) -> Any:
            """TRL's reset of the step's bookkeeping, with the allocator's cache kept."""
            device_module = self.device_module
            # TRL's __enter__ calls device_module.empty_cache() and nothing else of it.
            self.device_module = types.SimpleNamespace(empty_cache=lambda: None)
            try:
                return super().__enter__()
            finally:
                self.device_module = device_module

        def __exit__(self, *args: object) -> Any:
            """Release the stashes to the allocator stream-ordered; no host synchronization."""
            try:
                if self.use_streams:
                    for tensor in self.bwd_tensor_stash.values():  # brought back on s1, read on the compute stream
                        tensor.record_stream(self.s0)
                    for activation, _ in self.fwd_stash.values():  # made on the compute stream, copied out on s1
                        activation.record_stream(self.s1)
                    self.bwd_tensor_stash.clear()
                    self.bwd_ev_stash.clear()
                    self.fwd_stash.clear()
            finally:
                result = saved_tensors_hooks.__exit__(self, *args)
            return result

    return StreamOrderedOffload


def install(trainer: Any) -> bool:
    """Make the Trainer's activation-offloading context (TRL's, when SFTTrainer built one) stream-ordered; whether it did."""
    from trl.models.activation_offloading import OffloadActivations

    context = getattr(trainer, "maybe_activation_offload_context", None)
    if type(context) is not OffloadActivations:  # none, TRL's no-op, or already ours
        return False
    context.__class__ = _stream_ordered_class()
    log.info("training.offloadActivations: the offload context orders its step boundaries on the GPU's streams")
    return True
