"""Reading the images of a dataset source: an image folder, a zip file or an HDF5 file, in build order.

Folder: recursive, names are posix paths relative to the folder, sorted. Zip: member names, sorted, directories
skipped. Both only consider files with an image extension (:data:`IMAGE_EXTENSIONS`); other files are listed as
``ignored``. HDF5: the stored ``images`` in order, named by the ``names`` dataset when present, else ``images[i]``.
Each file is decoded completely by :func:`stylegan.images.decode_image`; a file that cannot be read yields the
exception instead of an image, so that the caller can list it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator, List, Tuple, Union

import h5py
import numpy as np
from PIL import Image

from ..images import decode_image

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "iter_source_images"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

PathLike = Union[str, os.PathLike]
SourceItem = Tuple[str, Union[Image.Image, Exception]]


class DatasetError(ValueError):
    """A dataset that cannot be built or opened (the message is one line, meant for the user)."""


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _decode(data: bytes) -> Image.Image:
    """Decode image bytes fully (so truncated files fail here, not later). First frame of multi-frame files."""
    return decode_image(data)


def _source_type(src: Path) -> str:
    if not os.path.exists(src):
        raise DatasetError(f"source not found: {src}")
    if src.is_dir():
        return "folder"
    if src.is_file():
        if zipfile.is_zipfile(src):
            return "zip"
        if h5py.is_hdf5(src):
            return "hdf5"
    raise DatasetError(f"unsupported source type: {src} (expected an image folder, a .zip or an HDF5 file)")


class _Source:
    """A scanned source: candidate names in order, ignored names, and a lazy reader."""

    def __init__(self, src: PathLike):
        self.path = Path(src)
        self.kind = _source_type(self.path)
        self.ignored: List[str] = []
        if self.kind == "folder":
            names = []
            for root, _dirs, files in os.walk(self.path):
                for fn in files:
                    rel = Path(root, fn).relative_to(self.path).as_posix()
                    (names if _is_image_name(fn) else self.ignored).append(rel)
            self.names = sorted(names)
            self.ignored.sort()
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
            self.names = sorted(i.filename for i in infos if _is_image_name(i.filename))
            self.ignored = sorted(i.filename for i in infos if not _is_image_name(i.filename))
        else:
            with h5py.File(self.path, "r") as f:
                images = f.get("images")
                if not isinstance(images, h5py.Dataset) or images.ndim != 4 or images.shape[1] not in (1, 3):
                    raise DatasetError(f"HDF5 source {self.path} has no 'images' dataset of shape [N, C, H, W], "
                                       "C in (1, 3)")
                n = images.shape[0]
                names = f.get("names")
                if isinstance(names, h5py.Dataset) and names.shape == (n,):
                    self.names = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in names[()]]
                else:
                    self.names = [f"images[{i}]" for i in range(n)]

    def __iter__(self) -> Iterator[SourceItem]:
        if self.kind == "folder":
            for name in self.names:
                try:
                    with open(self.path / name, "rb") as fp:
                        data = fp.read()
                    item: Union[Image.Image, Exception] = _decode(data)
                except Exception as e:  # noqa: BLE001 - every unreadable file is reported, not raised
                    item = e
                yield name, item
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                for name in self.names:
                    try:
                        item = _decode(zf.read(name))
                    except Exception as e:  # noqa: BLE001
                        item = e
                    yield name, item
        else:
            with h5py.File(self.path, "r") as f:
                images = f["images"]
                block = 256
                for start in range(0, images.shape[0], block):
                    arr = images[start : start + block]
                    for j, a in enumerate(arr):
                        name = self.names[start + j]
                        try:
                            hwc = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
                            item = Image.fromarray(np.ascontiguousarray(hwc))
                        except Exception as e:  # noqa: BLE001
                            item = e
                        yield name, item


def iter_source_images(src: PathLike) -> Iterator[SourceItem]:
    """Yield ``(name, image)`` for every candidate in ``src`` in build order; ``image`` is a decoded ``PIL.Image``
    or the exception that prevented reading it.

    Folder: recursive, names are posix paths relative to the folder, sorted. Zip: member names, sorted, directories
    skipped. Both only consider files with an image extension. HDF5: stored images in order, named by the ``names``
    dataset when present, else ``images[i]``. Raises :class:`DatasetError` for a missing or unsupported source.
    """
    return iter(_Source(src))
