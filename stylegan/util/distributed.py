"""torch.distributed set-up shared by training and batch projection (torchrun: gloo on CPU, NCCL on GPU)."""

from __future__ import annotations


def init_distributed() -> int:
    """Join the torchrun process group when launched under torchrun (gloo on CPU, NCCL on GPU)."""
    import os

    import torch

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.distributed.get_rank()


