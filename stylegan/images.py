"""The one way an image file becomes a network input: decode, orient, convert, crop, resize.

Training data (:mod:`stylegan.data`) and suspect images (:mod:`detector.images`) both go through these rules, so a
suspect image reaches the networks exactly as the training images did. Each step appends a human-readable note of
what it changed to ``notes`` (nothing when it changed nothing).

Rules
    * Decoding: the first frame of animated / multi-page files, decoded completely (Pillow's
      ``LOAD_TRUNCATED_IMAGES`` forced off, so truncated data is an error, never padded with grey).
    * Orientation: the EXIF orientation (2..8) is applied (images are used the way viewers show them); a malformed
      EXIF block leaves the pixels as stored (noted).
    * Alpha (RGBA, LA, PA, premultiplied, palette with a transparent colour): composited onto **white**; a fully
      opaque alpha channel is simply dropped (the same pixels).
    * 16-bit: 16-bit greyscale (``I;16*``) and 32-bit integer greyscale (``I``) are read as 16-bit values and scaled
      ``round(v * 255 / 65535)`` (= ``round(v / 257)``), never clipped; values outside 0..65535 are refused.
      Float greyscale (``F``) must lie in [0, 1] and is scaled ``round(v * 255)``. 16-bit RGB(A) is reduced by
      Pillow's decoder (high byte kept).
    * Other modes: bilevel to L; palette, CMYK, YCbCr, LAB, HSV to RGB (Pillow's conversions, no colour
      management); then L <-> RGB as ``channels`` asks (ITU-R 601-2 luma for RGB -> L).
    * Crop: ``'center'`` the central square (odd remainders lose the extra pixel at the right / bottom);
      ``'celeba'`` the aligned-CelebA box ``(0, 20, 178, 198)`` of a 178x218 image, scaled and rounded for other
      sizes; ``'none'`` the whole image, which must be square.
    * Resize: Pillow's Lanczos (a = 3), antialiased at any factor (the kernel widens with the reduction), with
      ``reducing_gap=3`` (a shrink of 6x or more first does an exact box reduction by an integer factor). Images
      already at the target size are not resampled.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = ["CROPS", "ALPHA_BACKGROUND", "RESIZE_FILTER", "ImageRejected", "PreparedImage", "open_image",
           "load_first_frame", "decode_image", "orient", "to_mode", "center_crop_box", "celeba_crop_box", "crop_box",
           "resize", "prepare"]

CROPS = ("center", "celeba", "none")
CELEBA_REFERENCE_SIZE = (178, 218)
CELEBA_REFERENCE_BOX = (0, 20, 178, 198)
ALPHA_BACKGROUND = (255, 255, 255)
REDUCING_GAP = 3.0
RESIZE_FILTER = f"lanczos(reducing_gap={REDUCING_GAP:g})"

_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageRejected(ValueError):
    """An image that decoded but cannot be used under these rules (the message says why, in one line)."""


@dataclass
class PreparedImage:
    """``array``: ``uint8 [C, R, R]``; ``notes``: what was done, step by step; ``mode``: the mode it started in;
    ``oriented_size``: (width, height) after EXIF orientation; ``crop``: the box cropped (None: none needed);
    ``resized_from``: the square's side before resizing to R (None: it was R already)."""

    array: np.ndarray
    notes: List[str] = field(default_factory=list)
    mode: str = ""
    oriented_size: Optional[Tuple[int, int]] = None
    crop: Optional[Tuple[int, int, int, int]] = None
    resized_from: Optional[int] = None


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def open_image(data: bytes, formats: Optional[Iterable[str]] = None) -> Image.Image:
    """Identify ``data`` (only the ``formats`` decoders when given); reads the header, no pixels. Pillow's
    exceptions pass through."""
    return Image.open(io.BytesIO(data), formats=list(formats) if formats is not None else None)


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


def load_first_frame(img: Image.Image, notes: List[str]) -> Image.Image:
    """Decode the first frame of an opened image completely (truncated data raises)."""
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
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    if ";16" in rawmode and img.mode in ("RGB", "RGBA", "LA"):
        notes.append(f"16 bits per channel ({img.mode}) reduced to 8 bits by Pillow (high byte kept)")
    return img


def decode_image(data: bytes, notes: Optional[List[str]] = None) -> Image.Image:
    """Open and fully decode image bytes (first frame)."""
    return load_first_frame(open_image(data), notes if notes is not None else [])


# ----------------------------------------------------------------------------------------------------------------
# Orientation and mode


def _one_line(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def orient(img: Image.Image, notes: List[str]) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the image as stored (noted)."""
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception as exc:  # malformed EXIF: use the pixels as stored, and say so
        notes.append(f"unreadable EXIF block ignored ({_one_line(exc, 60)})")
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not stop the work; say so
        notes.append(f"EXIF orientation {orientation} not applied ({_one_line(exc)})")
    else:
        notes.append(f"rotated/flipped according to EXIF orientation {orientation}")
    return img


def _composite(img: Image.Image, notes: List[str], what: str) -> Image.Image:
    grey = img.mode in ("LA", "La")
    rgba = img.convert("RGBA")
    lo, _ = rgba.getchannel("A").getextrema()
    if lo == 255:
        notes.append(f"{what}: alpha channel dropped (fully opaque)")
        out = rgba.convert("RGB")
    else:
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        out = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append(f"{what}: alpha channel dropped (composited on white)")
    return out.convert("L") if grey else out


def _to_8bit(img: Image.Image, notes: List[str]) -> Image.Image:
    """Any decoded mode -> 'RGB' or 'L' (8-bit)."""
    mode = img.mode
    if mode in _INT_MODES:
        a = np.asarray(img)
        if a.ndim != 2:
            raise ImageRejected(f"unsupported {mode} image layout")
        lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
        if lo < 0 or hi > 65535:
            raise ImageRejected(f"32-bit integer image with values {lo}..{hi} outside 0..65535 is not supported")
        bits = "16-bit" if mode.startswith("I;16") else f"32-bit integer ({mode}, values {lo}..{hi})"
        a8 = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(f"{bits} greyscale scaled to 8 bits (v * 255 / 65535, rounded)")
        if "transparency" in img.info:
            notes.append("transparent grey level ignored")
        return Image.fromarray(a8, mode="L")
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > 1)):
            raise ImageRejected("floating-point image with values outside [0, 1] (or NaN) is not supported")
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
    if mode in _ALPHA_MODES:
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
        raise ImageRejected(f"unsupported pixel mode {mode} ({_one_line(exc)})") from None
    notes.append(f"converted from {mode} to RGB")
    return converted


def to_mode(img: Image.Image, channels: int, notes: List[str]) -> Image.Image:
    """8-bit 'L' (``channels=1``) or 'RGB' (``channels=3``) by the module's rules; :class:`ImageRejected` for
    pixel values those rules do not cover."""
    img = _to_8bit(img, notes)
    if channels == 3 and img.mode == "L":
        notes.append("converted from L to RGB (grey replicated to 3 channels)")
        img = img.convert("RGB")
    elif channels == 1 and img.mode == "RGB":
        notes.append("converted from RGB to L (ITU-R 601-2 luma)")
        img = img.convert("L")
    return img


# ----------------------------------------------------------------------------------------------------------------
# Crop and resize


def center_crop_box(width: int, height: int) -> Tuple[int, int, int, int]:
    """Central square ``(left, top, right, bottom)`` of side ``min(width, height)``."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def celeba_crop_box(width: int, height: int) -> Tuple[int, int, int, int]:
    """The aligned-CelebA face box ``(0, 20, 178, 198)`` scaled from 178x218 to ``width`` x ``height``."""
    rw, rh = CELEBA_REFERENCE_SIZE
    l, t, r, b = CELEBA_REFERENCE_BOX
    sx, sy = width / rw, height / rh
    return round(l * sx), round(t * sy), round(r * sx), round(b * sy)


def crop_box(width: int, height: int, crop: str = "center") -> Tuple[int, int, int, int]:
    """The box ``crop`` (one of :data:`CROPS`) takes; :class:`ImageRejected` when the image does not allow it."""
    if crop == "center":
        box = center_crop_box(width, height)
    elif crop == "celeba":
        box = celeba_crop_box(width, height)
    elif crop == "none":
        if width != height:
            raise ImageRejected(f"image is {width}x{height}, not square; crop='none' needs square images "
                                f"(use crop='center')")
        box = (0, 0, width, height)
    else:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise ImageRejected(f"image is {width}x{height}, too small for crop={crop!r}")
    return box


def resize(img: Image.Image, resolution: int, notes: List[str]) -> Image.Image:
    """Square image -> ``resolution`` x ``resolution`` with the module's Lanczos filter (no-op at that size)."""
    if img.size == (resolution, resolution):
        return img
    notes.append(f"resized {img.size[0]} -> {resolution} (Lanczos, antialiased)")
    return img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def prepare(img: Image.Image, resolution: int, crop: str = "center", channels: int = 3) -> PreparedImage:
    """Orient, convert, crop and resize a decoded image to ``uint8 [channels, resolution, resolution]``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    notes: List[str] = []
    mode = img.mode
    img = orient(img, notes)
    img = to_mode(img, channels, notes)
    w, h = img.size
    box = crop_box(w, h, crop)
    cropped = box != (0, 0, w, h)
    if cropped:
        img = img.crop(box)
        side = f"{box[2] - box[0]}x{box[3] - box[1]}"
        notes.append(f"centre-cropped {w}x{h} to {side}" if crop == "center" else f"{crop} crop {box} of {w}x{h}")
    side_before = img.size[0]
    img = resize(img, resolution, notes)
    a = np.asarray(img, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return PreparedImage(np.array(a, dtype=np.uint8, order="C"), notes, mode, (int(w), int(h)),  # a writable copy
                         tuple(int(v) for v in box) if cropped else None,
                         None if side_before == resolution else int(side_before))
