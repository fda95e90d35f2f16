"""Building an HDF5 image dataset (or a folder of PNGs) from an image folder, a zip file or another HDF5 file.

:func:`build_dataset`: every candidate of the source (:mod:`stylegan.data.sources`) is prepared by
:func:`prepare_image` (the rules of :mod:`stylegan.images`: EXIF orientation, alpha on white, 16-bit scaled, crop,
Lanczos resize) and written to dataset ``images`` (``uint8``, NCHW ``[N, C, R, R]``, one image per HDF5 chunk so that
reading one image is a single chunk read). Files that cannot be read are never skipped silently: each is listed
with the reason, in the returned :class:`BuildReport` and in the file attribute ``failed``. Files without an image
extension are not attempted; their names are listed in ``ignored``. Dataset ``names`` holds the source name of
every stored image, so an index can always be traced back to the file it came from.

Attributes: ``source``, ``source_type``, ``count``, ``resolution``, ``channels``, ``crop``, ``resize_filter``,
``created`` (ISO 8601, UTC), ``fingerprint``, ``format_version``, ``failed`` and ``ignored`` (JSON lists),
``skipped_first``.

``fingerprint`` is ``sha256(pixels_0 || pixels_1 || ... || pixels_{N-1} || b"shape=N,C,R,R")`` in hex, where
``pixels_i`` are the C-contiguous ``uint8`` bytes of stored image ``i`` (``[C, R, R]``). It is computed while
writing and can be recomputed from the file with :meth:`HDF5ImageDataset.compute_fingerprint`.

Writing is atomic: the file is written to ``OUT.tmp`` and moved onto ``OUT`` with :func:`os.replace` only when
complete, so an interrupted build never leaves a partial file at ``OUT`` (an existing ``OUT`` stays untouched).
:func:`export_images` writes the same selection as PNG files instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import h5py
import numpy as np
from PIL import Image

from ..imageio import png_bytes
from ..images import CROPS, RESIZE_FILTER, ImageRejected, prepare
from ..util.files import atomic_write_bytes, sha256_bytes
from .sources import IMAGE_EXTENSIONS, DatasetError, PathLike, _reason, _Source

__all__ = ["FORMAT_VERSION", "BuildReport", "build_dataset", "export_images", "prepare_image"]

FORMAT_VERSION = 1
_WRITE_BLOCK = 256  # images buffered before one HDF5 write

_Rejected = ImageRejected  # an image that decoded but cannot be stored under the requested settings (``failed``)


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_dataset` wrote. ``failed`` lists ``{'file', 'reason'}`` for every unreadable file."""

    out_path: str
    count: int
    failed: Tuple[Dict[str, str], ...]
    fingerprint: str
    source: str = ""
    resolution: int = 0
    channels: int = 0
    crop: str = ""
    ignored: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failed"] = [dict(f) for f in self.failed]
        d["ignored"] = list(self.ignored)
        return d

    def summary(self) -> str:
        s = (f"wrote {self.count} images ({self.channels}x{self.resolution}x{self.resolution}, crop={self.crop}) "
             f"to {self.out_path}")
        if self.failed:
            s += f"; {len(self.failed)} file(s) could not be read"
        if self.ignored:
            s += f"; {len(self.ignored)} non-image file(s) ignored"
        return s


# ----------------------------------------------------------------------------------------------------------------
# Image preparation


def _check_settings(resolution: int, crop: str, channels: int) -> None:
    if (isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 4
            or resolution & (resolution - 1)):
        raise DatasetError(f"resolution must be a power of two >= 4, got {resolution!r}")
    if crop not in CROPS:
        raise DatasetError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels!r}")


def prepare_image(im: Image.Image, resolution: int, crop: str = "center", channels: int = 3) -> np.ndarray:
    """Orient, convert, crop and resize one image to a ``uint8`` array ``[channels, resolution, resolution]``
    (:func:`stylegan.images.prepare`).

    Raises :class:`DatasetError` for invalid settings. An image that cannot be stored under these settings (e.g. a
    non-square image with ``crop='none'``) raises an exception whose message is the reason listed in ``failed``.
    """
    _check_settings(resolution, crop, channels)
    return prepare(im, resolution, crop, channels).array


# ----------------------------------------------------------------------------------------------------------------
# Build


def _checked_source(src: PathLike, resolution: int, crop: str, channels: int, max_images: Optional[int],
                    skip_images: int) -> "_Source":
    _check_settings(resolution, crop, channels)
    if max_images is not None and (isinstance(max_images, bool) or int(max_images) < 1):
        raise DatasetError(f"max_images must be >= 1 or None, got {max_images!r}")
    if isinstance(skip_images, bool) or int(skip_images) != skip_images or skip_images < 0:
        raise DatasetError(f"skip_images must be an integer >= 0, got {skip_images!r}")
    source = _Source(src)
    if not source.names:
        extensions = "/".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
        raise DatasetError(f"no images in {source.path} (no files with extension {extensions})")
    if skip_images >= len(source.names):
        raise DatasetError(f"skip_images={skip_images} leaves nothing: {source.path} has {len(source.names)} images")
    source.names = source.names[int(skip_images):]
    return source


def _prepared_images(source: "_Source", resolution: int, crop: str, channels: int, max_images: Optional[int],
                     failed: List[Dict[str, str]], progress: Optional[Callable[[int, int], None]]
                     ) -> Iterator[Tuple[str, np.ndarray]]:
    """(name, uint8 CHW array) for each readable candidate, until ``max_images`` are yielded; every unreadable or
    unconvertible file is appended to ``failed`` with its reason."""
    total = len(source.names)
    limit = total if max_images is None else min(int(max_images), total)
    done = stored = 0
    for name, item in source:
        done += 1
        arr = None
        if isinstance(item, Exception):
            failed.append({"file": name, "reason": _reason(item)})
        else:
            try:
                arr = prepare_image(item, resolution, crop, channels)
            except _Rejected as e:
                failed.append({"file": name, "reason": str(e)})
            except Exception as e:  # noqa: BLE001 - decoded but unconvertible (odd mode, bad EXIF ...)
                failed.append({"file": name, "reason": _reason(e)})
        if arr is not None:
            stored += 1
            yield name, arr
        if progress is not None:
            progress(done, total)
        if stored >= limit:
            break


def _none_readable(source: "_Source", failed: List[Dict[str, str]]) -> DatasetError:
    first = f" ({failed[0]['file']}: {failed[0]['reason']})" if failed else ""
    return DatasetError(f"no readable images in {source.path}: {len(failed)} file(s) failed{first}")


def build_dataset(
    src: PathLike,
    out_h5: PathLike,
    resolution: int,
    crop: str = "center",
    channels: int = 3,
    max_images: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    skip_images: int = 0,
) -> BuildReport:
    """Build an HDF5 dataset at ``out_h5`` from an image folder, a zip file or an HDF5 file (see the module doc).

    ``skip_images`` leaves out the first K candidates (in build order, e.g. the training images when building a
    held-out set); ``max_images`` stops after that many images are stored. ``progress(done, total)`` is called
    after each candidate file with the number processed so far and the number of candidates. Raises
    :class:`DatasetError` for a missing/unsupported source, bad settings, or when no image could be read (no
    file is written then).
    """
    source = _checked_source(src, resolution, crop, channels, max_images, skip_images)
    out = Path(out_h5)
    if out.exists() and out.is_dir():
        raise DatasetError(f"output path is a folder: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")

    failed: List[Dict[str, str]] = []
    stored_names: List[str] = []
    hasher = hashlib.sha256()
    shape1 = (channels, resolution, resolution)
    try:
        with h5py.File(tmp, "w") as f:
            images = f.create_dataset(
                "images", shape=(0,) + shape1, maxshape=(None,) + shape1, dtype=np.uint8, chunks=(1,) + shape1
            )
            buffer: List[np.ndarray] = []

            def flush() -> None:
                if buffer:
                    n0 = images.shape[0]
                    images.resize(n0 + len(buffer), axis=0)
                    images[n0:] = np.stack(buffer)
                    buffer.clear()

            for name, arr in _prepared_images(source, resolution, crop, channels, max_images, failed, progress):
                hasher.update(arr.tobytes())
                buffer.append(arr)
                stored_names.append(name)
                if len(buffer) >= _WRITE_BLOCK:
                    flush()
            flush()
            count = len(stored_names)
            if count == 0:
                raise _none_readable(source, failed)
            hasher.update(f"shape={count},{channels},{resolution},{resolution}".encode())
            fingerprint = hasher.hexdigest()
            f.create_dataset("names", data=np.array(stored_names, dtype=object), dtype=h5py.string_dtype("utf-8"))
            attrs = {
                "source": str(source.path),
                "source_type": source.kind,
                "count": count,
                "resolution": resolution,
                "channels": channels,
                "crop": crop,
                "resize_filter": RESIZE_FILTER,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "fingerprint": fingerprint,
                "format_version": FORMAT_VERSION,
                "failed": json.dumps(failed),
                "ignored": json.dumps(source.ignored),
                "skipped_first": int(skip_images),
            }
            for k, v in attrs.items():
                f.attrs[k] = v
        with open(tmp, "rb+") as fp:
            os.fsync(fp.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return BuildReport(out_path=str(out), count=count, failed=tuple(failed), fingerprint=fingerprint,
                       source=str(source.path), resolution=resolution, channels=channels, crop=crop,
                       ignored=tuple(source.ignored))


def export_images(
    src: PathLike,
    out_dir: PathLike,
    resolution: int,
    crop: str = "center",
    channels: int = 3,
    max_images: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    skip_images: int = 0,
) -> BuildReport:
    """Write the images :func:`build_dataset` would store as PNG files in ``out_dir`` instead: the same
    selection, crop and resize, so that real images held out from a training set reach ``detect calibrate`` /
    ``detect batch`` exactly as the network saw its training data. File names are the source names with
    ``/`` replaced by ``__`` and the extension ``.png``; each file is written atomically, and an existing file
    with the same content is left alone, so an interrupted export can simply be run again."""
    source = _checked_source(src, resolution, crop, channels, max_images, skip_images)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output path exists and is not a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    failed: List[Dict[str, str]] = []
    hasher = hashlib.sha256()
    count = 0
    for name, arr in _prepared_images(source, resolution, crop, channels, max_images, failed, progress):
        hasher.update(arr.tobytes())
        data = png_bytes(arr.transpose(1, 2, 0))
        path = out / (Path(name.replace("/", "__")).stem + ".png")
        if not (path.is_file() and sha256_bytes(path.read_bytes()) == sha256_bytes(data)):
            atomic_write_bytes(path, data)
        count += 1
    if count == 0:
        raise _none_readable(source, failed)
    hasher.update(f"shape={count},{channels},{resolution},{resolution}".encode())
    return BuildReport(out_path=str(out), count=count, failed=tuple(failed), fingerprint=hasher.hexdigest(),
                       source=str(source.path), resolution=resolution, channels=channels, crop=crop,
                       ignored=tuple(source.ignored))

