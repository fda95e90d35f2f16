"""What was done to a suspect image before it reached the networks, and which of it makes a verdict weaker than its
calibration promises (issue 26: suspect images as they really arrive).

:class:`Preprocessing` is the structured record every verdict carries (text, ``--json``, case files and reports):
the decoded format and sizes, the centre crop, the resize to the network's resolution, the JPEG quality the file
was saved at (estimated from its quantisation tables) and an alignment shift when one was applied.
:func:`weaknesses` names what of it the calibration's images did not go through: calibrations are measured on
lossless images at the network's exact size and framing, so a JPEG, a resize or a crop makes the calibrated
error rates an optimistic bound for that image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

#: The processing of a calibration's images (generated ones rendered at the network's size and quantised to 8 bits,
#: real ones prepared to PNGs at that size): none of the steps :func:`weaknesses` looks for.
CLEAN: Dict[str, Any] = {"jpeg": None, "resized": False, "cropped": False}


@dataclass(frozen=True)
class Preprocessing:
    """One suspect image's path to the network input.

    format          what Pillow decoded (not the extension); ``frames``: frames in the file (the first is used)
    original_size   (width, height) as stored; ``oriented_size`` after EXIF orientation
    crop            (left, top, right, bottom) of the centre crop in the oriented image, None when square already
    resized_from    the square's side before it was resized to ``resolution`` (Lanczos), None when no resize
    jpeg            ``{"quality", "exact", "subsampling"}`` for a JPEG file (quality estimated from its tables;
                    ``exact``: they are the IJG tables of that quality), None otherwise
    shift           (dy, dx) pixels the image was aligned by before projection, None when not aligned
    """

    format: str
    original_size: Tuple[int, int]
    oriented_size: Tuple[int, int]
    resolution: int
    crop: Optional[Tuple[int, int, int, int]] = None
    resized_from: Optional[int] = None
    jpeg: Optional[Dict[str, Any]] = None
    frames: int = 1
    shift: Optional[Tuple[int, int]] = None

    @property
    def resize_factor(self) -> Optional[float]:
        """resolution / side before resizing (> 1: upscaled), None without a resize."""
        return None if self.resized_from is None else self.resolution / self.resized_from

    @property
    def changed_geometry(self) -> bool:
        """Whether the image had to be cropped or resized to become the network's input."""
        return self.crop is not None or self.resized_from is not None

    def summary(self) -> str:
        """One line: 'JPEG q75 (4:2:0), 48x40 -> centre crop 40x40 -> resized 40 -> 32' (or 'PNG 32x32, as is')."""
        fmt = self.format
        if self.jpeg:
            q = self.jpeg.get("quality")
            fmt += f" q{q}" if self.jpeg.get("exact") else f" ~q{q} (not IJG tables)"
            if self.jpeg.get("subsampling"):
                fmt += f" ({self.jpeg['subsampling']})"
        parts = [f"{fmt} {self.oriented_size[0]}x{self.oriented_size[1]}"]
        if self.crop is not None:
            parts.append(f"centre crop {self.crop[2] - self.crop[0]}x{self.crop[3] - self.crop[1]}")
        if self.resized_from is not None:
            parts.append(f"resized {self.resized_from} -> {self.resolution}")
        if self.shift is not None and any(self.shift):
            parts.append(f"aligned by {self.shift[0]:+d},{self.shift[1]:+d} px (dy,dx)")
        return " -> ".join(parts) + ("" if len(parts) > 1 else ", as is")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["resize_factor"] = self.resize_factor
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        def pair(v):
            return None if v is None else tuple(int(x) for x in v)

        return cls(format=str(d["format"]), original_size=pair(d["original_size"]),
                   oriented_size=pair(d["oriented_size"]), resolution=int(d["resolution"]), crop=pair(d.get("crop")),
                   resized_from=None if d.get("resized_from") is None else int(d["resized_from"]),
                   jpeg=d.get("jpeg"), frames=int(d.get("frames", 1)), shift=pair(d.get("shift")))


def weaknesses(p: Preprocessing, calibrated: Optional[Mapping[str, Any]] = None) -> List[str]:
    """What was done to the image that the calibration's images (``calibrated``: their processing, default
    :data:`CLEAN`) did not go through, one short reason each; empty when the calibration covers it."""
    cal = dict(CLEAN if calibrated is None else calibrated)
    out = []
    if p.jpeg and not cal.get("jpeg"):
        q = p.jpeg.get("quality")
        out.append(f"JPEG (quality {'~' if not p.jpeg.get('exact') else ''}{q}): the calibration was measured on "
                   f"lossless images, and compression moves generated images away from their network")
    factor = p.resize_factor
    if factor is not None and not cal.get("resized"):
        if factor > 1:  # measured in issue 26's robustness run: see the README, "What to feed it"
            out.append(f"upscaled {factor:.2f}x to the network's {p.resolution} px: with less detail than the "
                       f"network's images, real images come back about as close as generated ones, so "
                       f"'generated' is not evidence")
        else:
            out.append(f"downscaled {1 / factor:.2f}x to the network's {p.resolution} px: the calibration's images "
                       f"were at that size")
    if p.crop is not None and not cal.get("cropped"):
        out.append("centre-cropped to a square: the framing may differ from the network's")
    return out


__all__ = ["Preprocessing", "weaknesses", "CLEAN"]
