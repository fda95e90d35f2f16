"""Reading, checking and writing the images under examination.

Every way a suspect image can be unusable ends here, as an :class:`ImageInputError` with a one-line message that
names the file. What is done to a usable image to turn it into a network input is recorded, step by step, in
:attr:`LoadedImage.notes`, so that a report can say exactly what was analysed.

Pipeline of :func:`load_image`:

1. Read the bytes (sha256 recorded), let Pillow identify them - only PNG, JPEG (and MPO, the multi-picture JPEG
   cameras write), WebP, TIFF and BMP decoders are tried, whatever the file's extension - and refuse images above
   :data:`MAX_PIXELS` from their header, before any pixel is decoded (decompression bombs), and images smaller
   than :data:`MIN_SIDE` pixels on a side.
2. Take the first frame of animated / multi-page files; decode it completely (``Image.load()``; Pillow's
   ``LOAD_TRUNCATED_IMAGES`` is left False, so truncated or corrupt data is an error, never silently grey).
3. Apply the EXIF orientation, then convert to 8-bit RGB (or L for ``channels=1``): 16-bit greyscale is scaled
   (``round(v * 255 / 65535)``), not clipped; alpha (RGBA, LA, PA, P with a transparent colour) is composited on
   black; CMYK, YCbCr, LAB, HSV, bilevel and palette images are converted by Pillow. Embedded ICC profiles are not
   applied (noted).
4. Centre-crop to a square (the shorter side; odd remainders lose the extra pixel at the right / bottom), then
   resize to ``resolution`` with Pillow's Lanczos filter (a = 3). Pillow widens the kernel by the reduction factor
   when down-sampling, so the filter is properly antialiased - effectively area-weighted - at any factor, and its
   result is deterministic for given input bytes and Pillow version; the same filter up-samples. This matches the
   ``PIL.Image.LANCZOS`` resize of NVIDIA's dataset_tool.
5. ``[1, C, R, R]`` float32 in [-1, 1]: ``v / 127.5 - 1`` for 8-bit ``v``; :func:`save_image` / :func:`to_uint8` invert
   it exactly (``x * 127.5 + 128``, clamped, truncated, as in NVIDIA's tools).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from stylegan.util.files import atomic_write

PathLike = Union[str, os.PathLike]

MIN_SIDE = 8
MAX_PIXELS = 100_000_000      # per frame, from the header
MAX_FILE_BYTES = 1 << 30      # refuse reading files above 1 GiB
FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")  # decoders tried; JPEG's may return MPO (multi-picture JPEG)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp"})
_EXT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".webp": "WEBP",
                ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_KNOWN_UNSUPPORTED = [(b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"%PDF", "PDF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
                      (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"8BPS", "Photoshop PSD"), (b"\x00\x00\x01\x00", "ICO")]


class ImageInputError(ValueError):
    """A suspect image cannot be used; the message (one line) names the file and says why."""


@dataclass(frozen=True)
class LoadedImage:
    """A suspect image ready for the networks, with what was done to it.

    ``tensor``: [1, C, R, R] float32 in [-1, 1]. ``original_size``: (width, height) as stored (before EXIF rotation).
    ``original_mode``: Pillow mode of the decoded frame (e.g. 'RGB', 'I;16', 'CMYK'). ``format``: the format Pillow
    decoded (not the extension). ``notes``: human-readable steps. ``sha256``: of the file's bytes.
    """

    tensor: torch.Tensor
    original_size: Tuple[int, int]
    original_mode: str
    format: str
    notes: List[str] = field(default_factory=list)
    path: Optional[Path] = None
    sha256: str = ""

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
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
        except Image.DecompressionBombError as exc:
            raise _err(path, f"refused as a possible decompression bomb ({_one_line(exc)})") from None
        except UnidentifiedImageError:
            for magic, name in _KNOWN_UNSUPPORTED:
                if data.startswith(magic):
                    raise _err(path, f"{name} files are not supported (use PNG, JPEG, WebP, TIFF or BMP)") from None
            if data[4:8] == b"ftyp":
                raise _err(path, "HEIF/AVIF/MP4-family files are not supported (use PNG, JPEG, WebP, TIFF or BMP)") \
                    from None
            raise _err(path, "not a readable PNG, JPEG, WebP, TIFF or BMP image (unrecognised or damaged header)") \
                from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
            raise _err(path, f"corrupt or truncated image ({_one_line(exc)})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise _err(path, f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:g} MP limit "
                         f"(possible decompression bomb)")
    return img


def _tile_rawmode(img: Image.Image) -> str:
    try:
        args = img.tile[0][3]
    except (IndexError, TypeError, AttributeError):
        return ""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _decode(path: Path, img: Image.Image, notes: List[str]) -> Image.Image:
    n_frames = getattr(img, "n_frames", 1) or 1
    if n_frames > 1:
        img.seek(0)
        what = "multi-page" if img.format == "TIFF" else "animated/multi-frame"
        if img.format == "MPO":
            what = "multi-picture (MPO) JPEG"
        notes.append(f"{what} file with {n_frames} frames: first frame used")
    rawmode = _tile_rawmode(img)
    # Truncated data must be an error, never padded with grey: force Pillow's process-wide switch off while decoding.
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise _err(path, f"refused as a possible decompression bomb ({_one_line(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError) as exc:
        raise _err(path, f"corrupt or truncated image data ({_one_line(exc)})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    if ";16" in rawmode and img.mode in ("RGB", "RGBA", "LA"):
        notes.append(f"16 bits per channel ({img.mode}) reduced to 8 bits by Pillow (high byte kept)")
    return img


def _to_8bit(path: Path, img: Image.Image, notes: List[str]) -> Image.Image:
    """Any decoded mode -> 'RGB' or 'L' (8-bit), alpha composited on black."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        if a.ndim != 2:
            raise _err(path, f"unsupported {mode} image layout")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise _err(path, f"32-bit integer image with values {lo}..{hi} outside 0..65535 is not supported")
        bits = "16-bit" if mode.startswith("I;16") else f"32-bit integer ({mode}, values {lo}..{hi})"
        a8 = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(f"{bits} greyscale scaled to 8 bits (v * 255 / 65535, rounded)")
        if "transparency" in img.info:
            notes.append("transparent grey level ignored")
        return Image.fromarray(a8, mode="L")
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise _err(path, "floating-point image with values outside [0, 1] (or NaN) is not supported")
        notes.append("32-bit float greyscale scaled from [0, 1] to 8 bits (rounded)")
        return Image.fromarray(np.round(a * 255).astype(np.uint8), mode="L")
    if mode == "1":
        notes.append("bilevel (1-bit) image converted to 8-bit greyscale")
        return img.convert("L")
    if mode in ("RGB", "L"):
        return img
    if mode == "P":
        if "transparency" in img.info:
            return _composite(img.convert("RGBA"), notes, "palette image (P) with a transparent colour")
        notes.append("palette image (P) converted to RGB")
        return img.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite(img, notes, f"{mode} image")
    if mode == "CMYK":
        notes.append("converted from CMYK to RGB (Pillow's naive conversion; no colour management)")
        return img.convert("RGB")
    if mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        notes.append(f"converted from {mode} to RGB")
        return img.convert("RGB")
    try:
        converted = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise _err(path, f"unsupported pixel mode {mode} ({_one_line(exc)})") from None
    notes.append(f"converted from {mode} to RGB")
    return converted


def _composite(img: Image.Image, notes: List[str], what: str) -> Image.Image:
    grey = img.mode in ("LA", "La")
    rgba = img.convert("RGBA")
    alpha = rgba.getchannel("A")
    lo, _ = alpha.getextrema()
    if lo == 255:
        notes.append(f"{what}: alpha channel dropped (fully opaque)")
        out = rgba.convert("RGB")
    else:
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        out = Image.alpha_composite(black, rgba).convert("RGB")
        notes.append(f"{what}: alpha channel dropped (composited on black)")
    return out.convert("L") if grey else out


def load_image(path: PathLike, resolution: int, channels: int = 3, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read a suspect image as a ``[1, channels, resolution, resolution]`` tensor in [-1, 1] (see module docstring).

    Raises :class:`ImageInputError` for anything that cannot be analysed.
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

    img = _decode(path, img, notes)
    original_mode = img.mode
    if "icc_profile" in img.info and img.info["icc_profile"]:
        notes.append("embedded ICC colour profile not applied (pixel values used as stored)")

    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception as exc:  # malformed EXIF: analyse the pixels as stored, and say so
        orientation = 1
        notes.append(f"unreadable EXIF block ignored ({_one_line(exc, 60)})")
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:  # a broken EXIF block must not stop the analysis; say so
            notes.append(f"EXIF orientation {orientation} not applied ({_one_line(exc)})")
        else:
            notes.append(f"rotated/flipped according to EXIF orientation {orientation}")

    img = _to_8bit(path, img, notes)
    if channels == 3 and img.mode == "L":
        notes.append("converted from L to RGB (grey replicated to 3 channels)")
        img = img.convert("RGB")
    elif channels == 1 and img.mode == "RGB":
        notes.append("converted from RGB to L (ITU-R 601-2 luma)")
        img = img.convert("L")

    w, h = img.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        notes.append(f"centre-cropped {w}x{h} to {side}x{side}")
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
        notes.append(f"resized {side} -> {resolution} (Lanczos, antialiased)")

    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 127.5 - 1.0
    return LoadedImage(tensor=t.contiguous(), original_size=(int(original_size[0]), int(original_size[1])),
                       original_mode=original_mode, format=fmt, notes=notes, path=path, sha256=sha)


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
