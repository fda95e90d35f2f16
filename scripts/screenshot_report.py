#!/usr/bin/env python
"""Screenshot an HTML report (e.g. ``detect demo``'s ``case/report/report.html``) with headless Chromium, for
``docs/``. Needs Debian's ``chromium`` (or ``chromium-browser``) on PATH; runs it with a fresh profile and the flags
a root shell needs (no sandbox, no GPU, no background networking).

    python scripts/screenshot_report.py detect-demo/case/report/report.html docs/demo-report.png --height 1400
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 1600, timeout: float = 120.0) -> Path:
    """Render ``html`` at ``width`` x ``height`` CSS px into the PNG ``out`` (written via a temporary file)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium is not installed (Debian: apt install chromium)")
    html = Path(html).resolve()
    if not html.is_file():
        raise SystemExit(f"{html} does not exist")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run([exe, *FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}", f"--screenshot={shot}",
                        f"--window-size={width},{height}", html.as_uri()],
                       check=True, timeout=timeout, capture_output=True)
        part = out.with_name(out.name + ".part")
        shutil.copyfile(shot, part)
        part.replace(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=1600)
    args = ap.parse_args(argv)
    print(screenshot(args.html, args.out, args.width, args.height))


if __name__ == "__main__":
    sys.exit(main())
