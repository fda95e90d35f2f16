"""Degradation-aware projection (issue 26): which processing is modelled for which image, the modelled processing
against Pillow, the shift search, and images of different processing projected together as one by one."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app
from detector.degradation import (
    DegradationBank,
    DegradationSpec,
    describe_spec,
    project_degraded,
    search_cost,
    search_grid,
    spec_for,
)
from detector.images import load_image
from detector.jpeg import DifferentiableJpeg
from detector.processing import Preprocessing
from detector.resampling import shift
from detector.settings import ProjectorSettings
from stylegan.imageio import save_png
from tests.conftest import tiny_network


def _texture(h=32, w=32, seed=0):
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 3.0)[..., None] * np.cos(y / 4.0)[..., None] + rng.randn(h, w, 3) * 20
    return np.clip(base, 0, 255).astype(np.uint8)


def _tensor(a):
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_which_processing_is_modelled(tmp_path):
    a = _texture()
    Image.fromarray(a).save(tmp_path / "at_r.jpg", quality=75)
    Image.fromarray(_texture(40, 48)).save(tmp_path / "cropped.jpg", quality=75)
    Image.fromarray(a[:16, :16]).save(tmp_path / "small.png")
    at_r, cropped, small = (load_image(tmp_path / n, 32) for n in ("at_r.jpg", "cropped.jpg", "small.png"))
    on = ProjectorSettings(model_jpeg=True, model_resize=True)
    spec = spec_for(at_r, on, 32)
    assert spec.jpeg is not None and spec.jpeg[0] == "4:2:0" and spec.jpeg_quality == 75 and spec.via_size is None
    assert describe_spec(spec) == "the re-synthesis JPEG q75 (4:2:0, the file's tables)"
    # a JPEG that was cropped and resized afterwards: its blocks are off the network's grid, so not modelled
    assert spec_for(cropped, on, 32).jpeg is None and spec_for(cropped, on, 32).via_size == 40
    assert spec_for(small, on, 32) == DegradationSpec(via_size=16)
    assert spec_for(small, ProjectorSettings(), 32).is_identity
    assert spec_for(at_r, ProjectorSettings(source_size=24), 32).via_size == 24
    assert spec_for(small, ProjectorSettings(source_size=24, model_resize=True), 32).via_size == 16  # its own size


def test_modelled_processing_matches_pillow():
    a = _texture()
    x = _tensor(a)
    # down to 16 and back up, as a file on disk: Pillow's 8-bit Lanczos both ways
    pil = np.asarray(Image.fromarray(a).resize((16, 16), Image.LANCZOS, reducing_gap=3.0)
                     .resize((32, 32), Image.LANCZOS, reducing_gap=3.0))
    got = DegradationSpec(via_size=16).build(32)(x)
    diff = (got[0].permute(1, 2, 0) * 127.5 + 127.5).round() - torch.from_numpy(pil.astype(np.float32))
    assert float(diff.abs().max()) <= 1
    # JPEG with the file's own tables: the same module the JPEG tests measure against Pillow
    q = load_image_from_array(a, quality=75)
    spec = DegradationSpec(jpeg=DegradationSpec.jpeg_key(q), jpeg_quality=75)
    torch.testing.assert_close(spec.build(32)(x), DifferentiableJpeg(q)(x))
    # a shift: the re-synthesis moved and both cropped to the pixels the shift did not invent
    d = DegradationSpec(shift=(2, -3)).build(32)
    assert d(x).shape == d.target(x).shape == (1, 3, 30, 29)
    torch.testing.assert_close(d(x), shift(x, 2, -3)[..., 2:32, 0:29])
    torch.testing.assert_close(d.target(shift(x, 2, -3)), d(x))  # a shifted copy matches exactly


def load_image_from_array(a, quality):
    import io

    from detector.jpeg import estimate_jpeg_quality

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return estimate_jpeg_quality(Image.open(buf))


class _StubProjector:
    """A projector whose distance is the squared distance between the shift it is compared at and image k's true
    shift (``truth[k]``, k its seed), plus 0.5 outside the search (no window); records what it was asked."""

    def __init__(self, truth, settings, calls):
        self.G = SimpleNamespace(img_resolution=32)
        self.distance = None
        self.settings = settings
        self.truth = truth
        self.calls = calls

    def project(self, targets, seeds, progress=None, degradation=None):
        specs = [DegradationSpec() if degradation is None else degradation.image_spec(j) for j in range(len(seeds))]
        self.calls.append((self.settings.steps, tuple(int(k) for k in seeds), specs))
        if progress is not None:
            progress(self.settings.steps, self.settings.steps, np.zeros(len(seeds)))
        out = []
        for k, spec in zip(seeds, specs):
            (ty, tx), (dy, dx) = self.truth[int(k)], spec.shift
            out.append(SimpleNamespace(distance=float((dy - ty) ** 2 + (dx - tx) ** 2) + (0 if spec.window else .5)))
        return out


@pytest.mark.parametrize("align,truth", [(8, [(4, 4), (0, 0), (-3, 7), (8, -8)]), (2, [(1, -2), (0, 1)]),
                                         (5, [(5, 5), (-1, 3)])])
def test_shift_search_finds_each_shift_on_windows_of_one_size(monkeypatch, align, truth):
    settings = ProjectorSettings(steps=10, align=align, align_steps=5)
    calls = []
    import detector.projector as projector_module

    monkeypatch.setattr(projector_module, "Projector", lambda G, dist, s: _StubProjector(truth, s, calls))
    main = _StubProjector(truth, settings, calls)
    seen = []
    targets = torch.zeros(len(truth), 3, 32, 32)
    res, specs = project_degraded(main, targets, [DegradationSpec()] * len(truth), list(range(len(truth))),
                                  progress=lambda done, total, losses: seen.append((done, total)))
    assert [sp.shift for sp in specs] == truth and all(sp.window == 0 for sp in specs)
    short = [c for c in calls if c[0] == 5]
    assert len(short) == 1 + len(search_grid(align)[1])  # a round's candidates of all images in one batch
    assert all(sp.window == 32 - align for _, _, sps in short for sp in sps)  # every candidate on one size
    per_image = [sum(seeds.count(k) for _, seeds, _ in short) for k in range(len(truth))]
    assert max(per_image) <= search_cost(align)
    # the projection proper: at each image's own shift, on that shift's crop
    assert sorted((seeds, sps[0].shift) for n, seeds, sps in calls if n == 10) == sorted(
        ((k,), t) for k, t in enumerate(truth))
    assert [r.distance for r in res] == [0.5] * len(truth)
    assert seen[-1][0] == seen[-1][1] and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


def test_a_search_window_is_centred_in_the_pixels_of_its_shift():
    x = _tensor(_texture())
    d = DegradationSpec(shift=(3, -4), window=24).build(32)
    assert d(x).shape == d.target(x).shape == (1, 3, 24, 24)
    assert d.box == (3 + 2, 3 + 2 + 24, 0 + 2, 2 + 24)  # centred in rows 3-31, columns 0-27
    torch.testing.assert_close(d.target(shift(x, 3, -4)), d(x))
    with pytest.raises(ValueError, match="does not fit"):
        DegradationSpec(shift=(9, 0), window=24).build(32)


def test_a_bank_applies_each_images_own_degradation():
    x = torch.cat([_tensor(_texture()), -_tensor(_texture())])
    specs = [DegradationSpec(shift=(3, -4), window=24), DegradationSpec(shift=(-8, 8), window=24)]
    bank = DegradationBank(specs, 32)
    alone = [sp.build(32) for sp in specs]
    torch.testing.assert_close(bank.target(x), torch.cat([alone[k].target(x[k:k + 1]) for k in range(2)]))
    torch.testing.assert_close(bank(x[[1, 0, 1]], images=[1, 0, 1]),
                               torch.cat([alone[1](x[1:2]), alone[0](x[:1]), alone[1](x[1:2])]))
    assert bank.image_spec(1) == specs[1]
    with pytest.raises(ValueError, match="one size"):
        DegradationBank([DegradationSpec(shift=(2, 0)), DegradationSpec(shift=(0, 0))], 32)


@pytest.fixture
def tiny(tmp_path, lpips_weights):
    G = tiny_network(tmp_path / "g.pt")
    with torch.no_grad():
        imgs = G(torch.randn(2, 32, generator=torch.Generator().manual_seed(3)), noise_mode="const")
    save_png(imgs[0], tmp_path / "a.png")
    Image.open(tmp_path / "a.png").save(tmp_path / "a.jpg", quality=60)
    save_png(imgs[1], tmp_path / "b.png")
    return tmp_path, G


def test_mixed_processing_in_one_run_equals_one_by_one(tiny):
    """A JPEG and a PNG checked together with --model-jpeg get the results each gets alone, and the JPEG is
    compared through the JPEG of its re-synthesis."""
    t, G = tiny
    from detector.check import check_images
    from stylegan.perceptual import load_lpips

    dist = load_lpips("vgg")
    s = ProjectorSettings(steps=6, w_avg_samples=256, model_jpeg=True)
    both = check_images(G, [t / "a.jpg", t / "b.png"], dist, settings=s, threshold=0.5)
    alone = [check_images(G, [p], dist, settings=s, threshold=0.5)[0] for p in (t / "a.jpg", t / "b.png")]
    for x, y in zip(both, alone):
        assert x.distance == pytest.approx(y.distance, abs=1e-6)
    assert both[0].notes[-1] == "compared through the re-synthesis JPEG q60 (4:2:0, the file's tables)"
    assert both[1].notes[-1] == "compared through the re-synthesis as is"
    assert both[0].result.settings["degradation"]["jpeg_quality"] == 60
    plain = check_images(G, [t / "a.jpg"], dist, settings=ProjectorSettings(steps=6, w_avg_samples=256),
                         threshold=0.5)[0]
    assert plain.distance != pytest.approx(both[0].distance, abs=1e-6)  # the comparison did change


def test_degrade_from_one_optimises_plainly_and_reports_through_the_model(tiny):
    """degrade_from=1: the optimisation is plain projection's (same w and noise), only the reported distance is
    taken through the modelled JPEG; 0.5: the model enters the loss half-way, so the path differs."""
    t, G = tiny
    from detector.check import check_images
    from detector.degradation import Degradation
    from detector.images import load_image
    from stylegan.perceptual import load_lpips

    dist = load_lpips("vgg")
    kw = dict(steps=6, w_avg_samples=256)
    plain = check_images(G, [t / "a.jpg"], dist, settings=ProjectorSettings(**kw), threshold=0.5)[0]
    late = check_images(G, [t / "a.jpg"], dist, settings=ProjectorSettings(**kw, model_jpeg=True, degrade_from=1.0),
                        threshold=0.5)[0]
    # equal up to the run-to-run jitter of multi-threaded CPU kernels (~4e-7 on two threads; 0 on one)
    assert torch.allclose(plain.result.w, late.result.w, rtol=0, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(plain.result.noise, late.result.noise))
    settings = ProjectorSettings(**kw, model_jpeg=True)
    spec = spec_for(load_image(t / "a.jpg", 16, 3), settings, 16)
    assert spec.jpeg_quality == 60
    through = Degradation(spec, 16)(late.result.image[None])
    assert late.distance == pytest.approx(float(dist(through, late.target[None])), abs=1e-5)
    assert late.distance != pytest.approx(plain.distance, abs=1e-6)
    half = check_images(G, [t / "a.jpg"], dist, settings=ProjectorSettings(**kw, model_jpeg=True, degrade_from=0.5),
                        threshold=0.5)[0]
    assert float((half.result.w - late.result.w).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="degrade_from"):
        ProjectorSettings(degrade_from=1.5)


def test_candidates_in_one_batch_get_what_each_gets_alone(tiny):
    """The shift search's batch: one image at three shifts through a bank gives each shift the projection it
    gets alone (same seed), and each result records its own spec."""
    _, G = tiny
    from detector.projector import Projector
    from stylegan.perceptual import load_lpips

    proj = Projector(G, load_lpips("vgg"), ProjectorSettings(steps=5, w_avg_samples=256))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    specs = [DegradationSpec(shift=c, window=12) for c in [(0, 0), (2, -1), (-2, 2)]]
    together = proj.project(x.expand(3, -1, -1, -1), seeds=[7, 7, 7], degradation=DegradationBank(specs, 16))
    for spec, r in zip(specs, together):
        alone = proj.project(x, seeds=[7], degradation=spec.build(16))[0]
        assert r.distance == pytest.approx(alone.distance, abs=1e-6)
        assert r.settings["degradation"] == spec.to_dict()
    assert len({round(r.distance, 6) for r in together}) == 3  # the shifts did compare different pixels


def test_cli_options_reach_the_settings_and_the_record(tiny):
    t, _ = tiny
    r = CliRunner().invoke(app, ["check", str(t / "a.jpg"), "--model", str(t / "g.pt"), "--steps", "4",
                                 "--threshold", "0.5", "--device", "cpu", "--model-jpeg", "--align", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["settings"]["model_jpeg"] is True and doc["settings"]["align"] == 2
    res = doc["results"][0]
    shift_found = res["preprocessing"]["shift"]
    assert shift_found is not None and all(abs(v) <= 2 for v in shift_found)
    assert any(n.startswith("compared through the re-synthesis JPEG q60") for n in res["notes"])
    assert Preprocessing.from_dict(res["preprocessing"]).jpeg["quality"] == 60


def test_a_search_wider_than_the_network_allows_is_refused(tiny):
    t, _ = tiny
    r = CliRunner().invoke(app, ["check", str(t / "b.png"), "--model", str(t / "g.pt"), "--steps", "2",
                                 "--threshold", "0.5", "--device", "cpu", "--align", "12"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "error: --align 12 leaves 4 px to compare at 16 px; at most 8 there"]


def test_a_calibration_compares_like_check(tiny):
    """With --align, a calibration searches each image's shift as `detect check` does, and records the setting."""
    t, G = tiny
    from detector.calibration_run import calibrate

    def mse(a, b):
        return (a - b).square().mean(dim=[1, 2, 3])

    s = ProjectorSettings(steps=3, w_avg_samples=256, align=2, align_steps=2)
    rec = calibrate(t / "g.pt", [t / "b.png", t / "a.jpg"], n_generated=2, settings=s, distance=mse,
                    target_fpr=0.5)
    assert rec.settings["projector"]["align"] == 2 and rec.n_real == 2 and rec.n_generated == 2
    plain = calibrate(t / "g.pt", [t / "b.png", t / "a.jpg"], n_generated=2, distance=mse, target_fpr=0.5,
                      settings=ProjectorSettings(steps=3, w_avg_samples=256))
    assert rec.generated_distances != plain.generated_distances  # the shift search ran (a second pass)
