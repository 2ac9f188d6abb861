"""Ending a multi-process (torchrun / accelerate launch) run without the gloo shutdown deadlock."""

from __future__ import annotations

import gc
import warnings

import torch

__all__ = ["shutdown_distributed"]


def _live_ddp_wrappers() -> int:
    ddp = torch.nn.parallel.DistributedDataParallel
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), ddp))  # type(): no __class__ lookups


def shutdown_distributed(trainer=None) -> bool:
    """Release the Trainer's DDP wrapper, then destroy the process group on every rank; call it last.

    Why the order matters: DDP's ``Reducer`` holds a reference to the process group. If the group is destroyed
    first, the Reducer becomes its last owner, and freeing the model (at the end of ``main``) runs
    ``~ProcessGroupGloo`` from a destructor that keeps the GIL while it joins gloo's worker threads — and a
    worker still freeing the last collective's Python-owned tensors waits for the GIL: the process hangs after
    training has finished (pytorch/pytorch#56297; seen here in about one ``accelerate launch`` run in ten on a
    loaded 2-core CPU). Freeing the wrapper while the group is still registered leaves the last reference to
    ``destroy_process_group``, whose binding releases the GIL.

    Args:
        trainer: a ``transformers.Trainer`` whose wrapped model should be released (its ``model_wrapped`` and
            accelerate's reference); other DDP wrappers must already be unreachable.

    Returns:
        True when a process group was destroyed, False when none was initialised (single process).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if trainer is not None:
        trainer.model_wrapped = trainer.model
        models = getattr(getattr(trainer, "accelerator", None), "_models", None)
        if isinstance(models, list):
            models.clear()
    gc.collect()  # wrappers held only in reference cycles
    if _live_ddp_wrappers():
        warnings.warn("shutdown_distributed: a DistributedDataParallel wrapper is still referenced; the process may "
                      "hang at exit (see the docstring)", RuntimeWarning, stacklevel=2)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return True
