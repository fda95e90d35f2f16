"""torch.distributed helpers shared by training and batch projection (torchrun: gloo on CPU, NCCL on GPU).

Every helper is a no-op on a single process (no initialised process group). torch is imported inside the
functions on purpose: the command-line front doors import this module at start-up, and importing torch there would
add about a second to every command, ``--help`` included.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, List, Tuple

if TYPE_CHECKING:
    import torch


def init_distributed() -> int:
    """Join the torchrun process group when launched under torchrun (gloo on CPU, NCCL on GPU)."""
    import torch  # lazy: see the module docstring

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.distributed.get_rank()


def process_group():
    """``torch.distributed`` when a process group is initialised, else None."""
    import torch  # lazy: see the module docstring

    return torch.distributed if torch.distributed.is_available() and torch.distributed.is_initialized() else None


def rank_and_world_size() -> Tuple[int, int]:
    d = process_group()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def sync_params(module: "torch.nn.Module") -> None:
    """Start every rank from rank 0's weights and buffers."""
    d = process_group()
    if d:
        for t in list(module.parameters()) + list(module.buffers()):
            d.broadcast(t.data, src=0)


def average_grads(params: List["torch.nn.Parameter"]) -> None:
    """All-reduce the gradients (mean over ranks) in one flat buffer."""
    d = process_group()
    if not d:
        return
    import torch  # lazy: see the module docstring

    world = d.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    d.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def mean_over_ranks(x: "torch.Tensor") -> "torch.Tensor":
    d = process_group()
    if not d:
        return x
    x = x.detach().clone()
    d.all_reduce(x)
    return x / d.get_world_size()


def gather(obj: Any) -> List[Any]:
    d = process_group()
    if not d:
        return [obj]
    out: List[Any] = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself on a single process)."""
    d = process_group()
    if not d:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing on a single process)."""
    d = process_group()
    if d:
        d.barrier()
