"""A case's inputs as hashed now: content identifies an input, the path is only where it was found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from PIL import Image

from stylegan.util.files import sha256_file


@dataclass(frozen=True)
class InputFile:
    """One input as hashed now: path (as given), sha256 of its bytes, size, format (Pillow's, from the header;
    None when Pillow does not recognise it). ``error`` when it could not be read at all."""

    path: str
    sha256: Optional[str]
    size: Optional[int]
    format: Optional[str]
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        d = {"path": self.path, "sha256": self.sha256, "size": self.size, "format": self.format}
        if self.error is not None:
            d["error"] = self.error
        return d


def describe_input(path: Path) -> InputFile:
    """Hash one input file (streamed) and sniff its format; an unreadable file gives an ``error``."""
    try:
        size = os.stat(path).st_size
        sha = sha256_file(path)
    except OSError as exc:
        return InputFile(str(path), None, None, None, f"{path}: cannot read ({exc.strerror or exc})")
    fmt = None
    try:
        with Image.open(path) as im:
            fmt = im.format
    except Exception:
        fmt = None
    return InputFile(str(path), sha, size, fmt)
