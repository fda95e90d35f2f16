"""Reading, checking and writing the images under examination.

Every way a suspect image can be unusable ends here, as an :class:`ImageInputError` with a one-line message that
names the file. What is done to a usable image to turn it into a network input is recorded, step by step, in
:attr:`LoadedImage.notes`, so that a report can say exactly what was analysed.

Pipeline of :func:`load_image`:

1. Read the bytes (sha256 recorded), let Pillow identify them - only PNG, JPEG (and MPO, the multi-picture JPEG
   cameras write), WebP, TIFF, BMP and GIF decoders are tried, whatever the file's extension - and refuse images above
   :data:`MAX_PIXELS` from their header, before any pixel is decoded (decompression bombs), and images smaller
   than :data:`MIN_SIDE` pixels on a side.
2. Decode, orient, convert, centre-crop and resize exactly as training images are prepared (the rules of
   :mod:`stylegan.images`: first frame of an animated PNG/WebP/GIF or multi-page TIFF (noted), EXIF orientation,
   palette (GIF) to RGB, alpha composited on white, 16-bit scaled by 255/65535, Lanczos). Embedded ICC profiles
   are not applied (noted).
3. ``[1, C, R, R]`` float32 in [-1, 1]: ``v / 127.5 - 1`` for 8-bit ``v``; :func:`save_image` / :func:`to_uint8` invert
   it exactly (``x * 127.5 + 128``, clamped, truncated, as in NVIDIA's tools).
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError

from stylegan.images import ImageRejected, load_first_frame, open_image, prepare
from stylegan.util.files import atomic_write

from .jpeg import estimate_jpeg_quality
from .processing import Preprocessing

PathLike = Union[str, os.PathLike]

MIN_SIDE = 8
MAX_PIXELS = 100_000_000      # per frame, from the header
MAX_FILE_BYTES = 1 << 30      # refuse reading files above 1 GiB
FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # decoders tried; JPEG's may return MPO (multi-picture JPEG)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
_EXT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".webp": "WEBP",
                ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".gif": "GIF"}
_SUPPORTED = "PNG, JPEG, WebP, TIFF, BMP or GIF"
_KNOWN_UNSUPPORTED = [(b"%PDF", "PDF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                      (b"8BPS", "Photoshop PSD"), (b"\x00\x00\x01\x00", "ICO")]


class ImageInputError(ValueError):
    """A suspect image cannot be used; the message (one line) names the file and says why."""


@dataclass(frozen=True)
class LoadedImage:
    """A suspect image ready for the networks, with what was done to it.

    ``tensor``: [1, C, R, R] float32 in [-1, 1]. ``original_size``: (width, height) as stored (before EXIF rotation).
    ``original_mode``: Pillow mode of the decoded frame (e.g. 'RGB', 'I;16', 'CMYK'). ``format``: the format Pillow
    decoded (not the extension). ``notes``: human-readable steps. ``sha256``: of the file's bytes.
    ``preprocessing``: the same steps as a structured record (:class:`detector.processing.Preprocessing`);
    ``jpeg``: the file's quantisation tables and quality (:class:`detector.jpeg.JpegQuality`) when it is a JPEG.
    """

    tensor: torch.Tensor
    original_size: Tuple[int, int]
    original_mode: str
    format: str
    notes: List[str] = field(default_factory=list)
    path: Optional[Path] = None
    sha256: str = ""
    preprocessing: Optional[Preprocessing] = None
    jpeg: Any = None  # detector.jpeg.JpegQuality of a JPEG file (its tables), else None

    @property
    def resolution(self) -> int:
        return int(self.tensor.shape[-1])


def _err(path: PathLike, why: str) -> ImageInputError:
    return ImageInputError(f"{path}: {why}")



def _one_line(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise _err(path, "no such file")
    if path.is_dir():
        raise _err(path, "is a folder, not an image file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _err(path, f"file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _err(path, f"cannot read file ({exc.strerror or _one_line(exc)})") from None
    if not data:
        raise _err(path, "empty file")
    return data


def _open(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow's own bomb check uses the global Image.MAX_IMAGE_PIXELS; ours follows right after.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = open_image(data, FORMATS)
        except Image.DecompressionBombError as exc:
            raise _err(path, f"refused as a possible decompression bomb ({_one_line(exc)})") from None
        except UnidentifiedImageError:
            for magic, name in _KNOWN_UNSUPPORTED:
                if data.startswith(magic):
                    raise _err(path, f"{name} files are not supported (use {_SUPPORTED})") from None
            if data[4:8] == b"ftyp":
                raise _err(path, f"HEIF/AVIF/MP4-family files are not supported (use {_SUPPORTED})") from None
            raise _err(path, f"not a readable {_SUPPORTED} image (unrecognised or damaged header)") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
            raise _err(path, f"corrupt or truncated image ({_one_line(exc)})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise _err(path, f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:g} MP limit "
                         f"(possible decompression bomb)")
    return img


def _decode(path: Path, img: Image.Image, notes: List[str]) -> Image.Image:
    try:
        return load_first_frame(img, notes)
    except Image.DecompressionBombError as exc:
        raise _err(path, f"refused as a possible decompression bomb ({_one_line(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError) as exc:
        raise _err(path, f"corrupt or truncated image data ({_one_line(exc)})") from None


def load_image(path: PathLike, resolution: int, channels: int = 3, *, max_pixels: int = MAX_PIXELS,
               strict: bool = False) -> LoadedImage:
    """Read a suspect image as a ``[1, channels, resolution, resolution]`` tensor in [-1, 1] (see module docstring).

    Raises :class:`ImageInputError` for anything that cannot be analysed, and with ``strict`` for an image that
    would have to be cropped or resized (it is refused rather than changed).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if int(resolution) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    resolution = int(resolution)
    path = Path(path)
    data = _read_bytes(path)
    sha = hashlib.sha256(data).hexdigest()
    notes: List[str] = []

    img = _open(path, data, max_pixels)
    fmt = img.format or "?"
    original_size = tuple(img.size)
    w, h = original_size
    if min(w, h) < MIN_SIDE:
        raise _err(path, f"image is {w}x{h} px, too small to analyse (at least {MIN_SIDE} px on each side needed)")
    ext_fmt = _EXT_FORMATS.get(path.suffix.lower())
    if ext_fmt and ext_fmt != fmt and not (ext_fmt == "JPEG" and fmt == "MPO"):
        notes.append(f"file extension {path.suffix} but content is {fmt}")

    frames = int(getattr(img, "n_frames", 1) or 1)
    jpeg_q = jpeg_quality(img) if fmt in ("JPEG", "MPO") else None
    jpeg = None if jpeg_q is None else {"quality": int(jpeg_q.quality), "exact": bool(jpeg_q.exact),
                                        "subsampling": jpeg_q.subsampling}
    img = _decode(path, img, notes)
    original_mode = img.mode
    if "icc_profile" in img.info and img.info["icc_profile"]:
        notes.append("embedded ICC colour profile not applied (pixel values used as stored)")

    try:
        prepared = prepare(img, resolution, "center", channels)
    except ImageRejected as exc:
        raise _err(path, str(exc)) from None
    pre = Preprocessing(format=fmt, original_size=(int(w), int(h)), oriented_size=prepared.oriented_size or (w, h),
                        resolution=resolution, crop=prepared.crop, resized_from=prepared.resized_from, jpeg=jpeg,
                        frames=frames)
    if strict and pre.changed_geometry:
        ow, oh = pre.oriented_size
        what = " and ".join(x for x, on in (("cropping", pre.crop is not None),
                                              ("resizing", pre.resized_from is not None)) if on)
        raise _err(path, f"{ow}x{oh} px would need {what} to become the network's {resolution}x{resolution}; "
                         f"--strict refuses to change images")
    notes.extend(prepared.notes)
    if jpeg:
        notes.append(f"JPEG file, quality {'' if jpeg['exact'] else '~'}{jpeg['quality']}"
                     + (f", chroma {jpeg['subsampling']}" if jpeg.get("subsampling") else ""))
    t = torch.from_numpy(prepared.array).unsqueeze(0).to(torch.float32) / 127.5 - 1.0
    return LoadedImage(tensor=t.contiguous(), original_size=(int(original_size[0]), int(original_size[1])),
                       original_mode=original_mode, format=fmt, notes=notes, path=path, sha256=sha,
                       preprocessing=pre, jpeg=jpeg_q)


def jpeg_quality(img: Image.Image):
    """The :class:`detector.jpeg.JpegQuality` of an opened JPEG (:func:`detector.jpeg.estimate_jpeg_quality`),
    None when its tables cannot be read."""
    try:
        return estimate_jpeg_quality(img)
    except Exception:  # noqa: BLE001 - an odd table must not stop the analysis; the image is used as decoded
        return None


# ----------------------------------------------------------------------------------------------------------------
# Writing


def to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 of the same shape: ``x * 127.5 + 128``, clamped to [0, 255], truncated (NVIDIA's
    convention; the exact inverse of :func:`load_image`'s ``v / 127.5 - 1``)."""
    x = tensor.detach()
    if not torch.isfinite(x).all():
        raise ValueError("image tensor contains NaN or infinite values")
    return (x.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def save_image(tensor: torch.Tensor, path: PathLike) -> Path:
    """Write a [C, H, W] or [1, C, H, W] tensor in [-1, 1] (C = 1 or 3) as an 8-bit PNG, atomically (temporary file
    in the same folder, then ``os.replace``). Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_image writes PNG files; got {path.name!r}")
    t = tensor
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"save_image takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"save_image needs [C, H, W] or [1, C, H, W] with C = 1 or 3, got {list(tensor.shape)}")
    a = to_uint8(t).permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(a[:, :, 0], mode="L") if a.shape[2] == 1 else Image.fromarray(a, mode="RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Batches


def iter_image_files(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Files to analyse: each given file as it is (its content is checked when loaded); each folder searched
    recursively for files with an image extension (case-insensitive), hidden files and folders skipped, sorted.
    The order of the arguments is kept and duplicates are dropped. A missing path is an :class:`ImageInputError`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    seen = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = []
            for q in p.rglob("*"):
                rel = q.relative_to(p).parts
                if any(part.startswith(".") for part in rel):
                    continue
                if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file():
                    found.append(q)
            for q in sorted(found, key=lambda q: q.relative_to(p).parts):
                add(q)
        elif p.exists():
            add(p)
        else:
            raise ImageInputError(f"{p}: no such file or folder")
    return out


__all__ = ["ImageInputError", "LoadedImage", "load_image", "save_image", "to_uint8", "iter_image_files",
           "IMAGE_EXTENSIONS", "MAX_PIXELS", "MIN_SIDE", "FORMATS"]
