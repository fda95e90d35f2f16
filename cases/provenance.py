"""What made a case's results: the tool, its command line and the versions of the libraries that shape them."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, Optional


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries that shape the results (recorded in the manifest and the report)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "h5py", "lpips", "pillow", "stylegan-forensics"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def tool_info() -> Dict[str, Optional[str]]:
    vers = library_versions()
    return {"name": "stylegan-forensics", "version": vers.get("stylegan-forensics"),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else None}
