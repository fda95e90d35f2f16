"""The training data stream: an endless, deterministic, per-rank sharded index stream (:class:`InfiniteSampler`)
and the float batches in [-1, 1] drawn with it (:class:`BatchStream`); both save and restore their position
exactly, so that a resumed run sees the same batches as one that never stopped."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import torch

from .hdf5 import HDF5ImageDataset
from .sources import DatasetError

__all__ = ["InfiniteSampler", "BatchStream"]


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, deterministic index stream for one rank, resumable exactly.

    Epoch ``e`` uses a permutation of ``range(size)`` drawn from ``numpy.random.RandomState([seed, e])`` (the
    legacy generator, whose stream numpy keeps stable across versions; seeding with the pair rather than
    ``seed + e`` keeps different seeds from producing shifted copies of the same epoch sequence). Rank ``r``
    takes ``perm[r::world_size]``, so ranks see disjoint indices within an epoch. ``shuffle=False`` uses
    ``range(size)`` every epoch.

    The state counts indices *yielded*: after ``k`` indices have been drawn, ``state_dict()`` restores to the
    index ``k``. (A DataLoader that prefetches would draw ahead of what was consumed; :class:`BatchStream` draws
    exactly what it returns.)
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        size, rank, world_size, seed = int(size), int(rank), int(world_size), int(seed)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if size < world_size:
            raise ValueError(f"dataset of {size} items cannot be sharded over {world_size} ranks")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, bool(shuffle)
        self.epoch = 0
        self.pos = 0
        self._shard: Optional[np.ndarray] = None
        self._shard_epoch = -1

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``, in order."""
        if self._shard is None or self._shard_epoch != epoch:
            if self.shuffle:
                perm = np.random.RandomState([self.seed, epoch % 2**32]).permutation(self.size)
            else:
                perm = np.arange(self.size)
            self._shard = perm[self.rank :: self.world_size].astype(np.int64)
            self._shard_epoch = epoch
        return self._shard

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` indices (advancing the state)."""
        out = []
        need = int(n)
        while need > 0:
            shard = self.shard(self.epoch)
            chunk = shard[self.pos : self.pos + need]
            out.append(chunk)
            need -= len(chunk)
            self.pos += len(chunk)
            if self.pos >= len(shard):
                self.epoch += 1
                self.pos = 0
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        while True:
            yield int(self.take(1)[0])

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "pos": self.pos,
            "size": self.size,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("size", "rank", "world_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state is for {key}={state[key]!r}, "
                                 f"this sampler has {key}={getattr(self, key)!r}")
        epoch, pos = int(state["epoch"]), int(state["pos"])
        self.seed = int(state["seed"])
        self._shard = None
        if epoch < 0 or not 0 <= pos < len(self.shard(epoch)):
            raise ValueError(f"sampler state out of range: epoch={epoch}, pos={pos}")
        self.epoch, self.pos = epoch, pos


class BatchStream:
    """Endless batches ``float32 [B, C, R, R]`` in ``[-1, 1]`` (``x / 127.5 - 1``) on ``device``.

    ``state_dict()`` / ``load_state_dict()`` save and restore the position exactly: a stream restored from a state
    returns the same batches the original returned after that state was taken. The state records the dataset
    fingerprint, and restoring onto a different dataset raises :class:`DatasetError`.
    """

    def __init__(
        self,
        dataset: HDF5ImageDataset,
        batch_size: int,
        sampler: Optional[InfiniteSampler] = None,
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.sampler = sampler if sampler is not None else InfiniteSampler(len(dataset), rank, world_size, seed)
        if self.sampler.size != len(dataset):
            raise ValueError(f"sampler size {self.sampler.size} != dataset length {len(dataset)}")
        self.device = torch.device(device)
        self.batches = 0

    def next_uint8(self) -> torch.Tensor:
        """Next batch as ``uint8`` on the CPU (advances the stream)."""
        x = self.dataset.get_batch(self.sampler.take(self.batch_size))
        self.batches += 1
        return x

    def __next__(self) -> torch.Tensor:
        x = self.next_uint8().to(self.device)
        return x.to(torch.float32).div_(127.5).sub_(1.0)

    def __iter__(self) -> "BatchStream":
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {
            "sampler": self.sampler.state_dict(),
            "batch_size": self.batch_size,
            "batches": self.batches,
            "fingerprint": getattr(self.dataset, "fingerprint", None),
            "xflip": getattr(self.dataset, "xflip", False),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        fp, mine = state.get("fingerprint"), getattr(self.dataset, "fingerprint", None)
        if fp is not None and mine is not None and fp != mine:
            raise DatasetError(f"cannot resume: the saved stream is for dataset {fp[:12]}..., "
                               f"this dataset is {mine[:12]}...")
        if int(state.get("batch_size", self.batch_size)) != self.batch_size:
            raise ValueError(f"cannot resume: saved batch_size={state['batch_size']}, "
                             f"this stream has {self.batch_size}")
        self.sampler.load_state_dict(state["sampler"])
        self.batches = int(state.get("batches", 0))
