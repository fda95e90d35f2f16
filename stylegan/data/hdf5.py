"""Reading an HDF5 image dataset for training (the file :func:`stylegan.data.build.build_dataset` writes).

The HDF5 file is opened lazily, once per process (h5py handles must not cross a fork), and images are read on
demand; with ``xflip`` every image also appears mirrored left-right (StyleGAN's ``--mirror``).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from .sources import DatasetError, PathLike, _reason

__all__ = ["HDF5ImageDataset", "open_dataset"]


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


class HDF5ImageDataset(torch.utils.data.Dataset):
    """Images of an HDF5 dataset, read on demand: ``ds[i]`` is a ``uint8`` tensor ``[C, R, R]``.

    The file is validated (briefly opened) on construction, then opened lazily on first read in each process, so
    the object can be handed to DataLoader workers (forked or spawned). With ``xflip=True`` the dataset has
    ``2 * N`` items and item ``i >= N`` is item ``i - N`` mirrored left-right (StyleGAN's ``--mirror``).
    """

    def __init__(self, path: PathLike, xflip: bool = False):
        self.path = Path(path)
        self.xflip = bool(xflip)
        _validate_h5_path(self.path)
        try:
            with h5py.File(self.path, "r") as f:
                images = f.get("images")
                if not isinstance(images, h5py.Dataset):
                    raise DatasetError(f"{self.path} has no 'images' dataset; "
                                       "build it with `stylegan dataset SRC OUT.h5 --res R`")
                shape = images.shape
                dtype = images.dtype
                self._attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
        except OSError as e:
            raise DatasetError(f"cannot read HDF5 file {self.path}: {_reason(e)}") from None
        if len(shape) != 4 or dtype != np.uint8:
            raise DatasetError(f"{self.path}: 'images' must be uint8 [N, C, R, R], got {dtype} {list(shape)}")
        n, c, h, w = shape
        if h != w:
            raise DatasetError(f"{self.path}: images are not square ({h}x{w})")
        if h < 4 or h & (h - 1):
            raise DatasetError(f"{self.path}: resolution {h} is not a power of two >= 4")
        if c not in (1, 3):
            raise DatasetError(f"{self.path}: images have {c} channels, expected 1 or 3")
        if n == 0:
            raise DatasetError(f"{self.path}: dataset holds no images")
        self._shape = (int(n), int(c), int(h), int(w))
        self._file: Optional[h5py.File] = None
        self._images: Optional[h5py.Dataset] = None
        self._pid: Optional[int] = None

    # -- lazy per-process handle
    def _dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            # A handle inherited through fork is dropped (not closed: closing would touch the parent's state).
            self._file = h5py.File(self.path, "r")
            self._images = self._file["images"]
            self._pid = os.getpid()
        return self._images  # type: ignore[return-value]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:  # noqa: BLE001
                pass
        self._file = self._images = self._pid = None

    def __enter__(self) -> "HDF5ImageDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = state["_images"] = state["_pid"] = None
        return state

    # -- metadata
    @property
    def num_images(self) -> int:
        """Images stored in the file (``len(self)`` is twice this with ``xflip``)."""
        return self._shape[0]

    @property
    def resolution(self) -> int:
        return self._shape[2]

    @property
    def channels(self) -> int:
        return self._shape[1]

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self._shape[1:]  # type: ignore[return-value]

    @property
    def fingerprint(self) -> Optional[str]:
        """The ``fingerprint`` attribute written at build time (None if the file has none)."""
        return self._attrs.get("fingerprint")

    @property
    def attrs(self) -> Dict[str, Any]:
        """A copy of the file attributes as plain Python values (``failed``/``ignored`` stay JSON strings)."""
        return dict(self._attrs)

    @property
    def failed(self) -> List[Dict[str, str]]:
        return json.loads(self._attrs.get("failed", "[]"))

    def name(self, i: int) -> str:
        """Source name of item ``i`` (``... [xflip]`` for mirrored items)."""
        j = self._raw_index(i)
        with h5py.File(self.path, "r") as f:
            names = f.get("names")
            s = names[j] if isinstance(names, h5py.Dataset) and names.shape[0] == self.num_images else f"images[{j}]"
        s = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
        return s + " [xflip]" if self.xflip and i >= self.num_images else s

    def compute_fingerprint(self, block: int = 256) -> str:
        """Recompute the pixel fingerprint from the file (compare with :attr:`fingerprint` to verify it)."""
        h = hashlib.sha256()
        images = self._dataset()
        for start in range(0, self.num_images, block):
            h.update(np.ascontiguousarray(images[start : start + block]).tobytes())
        h.update("shape={},{},{},{}".format(*self._shape).encode())
        return h.hexdigest()

    # -- reading
    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def _raw_index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for dataset of length {n}")
        return i % self.num_images

    def __getitem__(self, i: int) -> torch.Tensor:
        j = self._raw_index(i)
        a = self._dataset()[j]
        if self.xflip and int(i) % len(self) >= self.num_images:
            a = a[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(a))

    def get_batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Items ``indices`` as one ``uint8`` tensor ``[B, C, R, R]``.

        The distinct stored images are read once each in file order (runs of consecutive indices as one slice),
        then put back in the requested order (not h5py's list "fancy" selection, which builds a hyperslab union in
        Python and is much slower).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size == 0:
            return torch.empty((0,) + self.image_shape, dtype=torch.uint8)
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"batch index out of range for dataset of length {n}")
        idx = idx % n
        raw = idx % self.num_images
        uniq, inverse = np.unique(raw, return_inverse=True)
        images = self._dataset()
        block = np.empty((uniq.size,) + self.image_shape, dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, uniq.size]):
            first = int(uniq[start])
            block[start:stop] = images[first : first + (stop - start)]
        out = block[inverse.reshape(-1)]
        if self.xflip:
            flip = idx >= self.num_images
            if flip.any():
                out[flip] = out[flip][:, :, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(out))


def _validate_h5_path(path: Path) -> None:
    hint = f"build an HDF5 dataset first: `stylegan dataset {path} OUT.h5 --res R`"
    if not path.exists():
        raise DatasetError(f"dataset file not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder, not an HDF5 dataset; {hint}")
    if zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is a zip file, not an HDF5 dataset; {hint}")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{path} is not an HDF5 file")


def open_dataset(path: PathLike, xflip: bool = False) -> HDF5ImageDataset:
    """Open an HDF5 dataset for training. Folders and zip files must go through :func:`build_dataset` first."""
    return HDF5ImageDataset(path, xflip=xflip)

