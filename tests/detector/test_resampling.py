"""Differentiable degradations (detector/resampling.py): resizing against Pillow, integer shifts against numpy,
shift estimation on known translations."""

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from detector.resampling import (
    ShiftEstimate,
    down_up,
    estimate_shift,
    luminance,
    resize,
    resize_matrix,
    shift,
    shift_valid_box,
    shift_valid_mask,
)

PIL_FILTERS = {"lanczos3": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
               "bilinear": Image.Resampling.BILINEAR}
# (height, width) -> (height, width): the sizes issue 26 names, down and up, one not square
SIZES = [((64, 64), (32, 32)), ((64, 64), (48, 48)), ((32, 32), (16, 16)), ((37, 41), (29, 23)),
         ((16, 16), (32, 32)), ((24, 24), (32, 32))]
FFHQ = "data/ffhq_samples/ffhq_00000-00009_256px.zip"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _pillow_f(a: np.ndarray, size_hw, kernel, reducing_gap=None) -> np.ndarray:
    """Pillow's resize of one float32 plane ('F' mode: no 8-bit rounding)."""
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size_hw[1], size_hw[0]), PIL_FILTERS[kernel], reducing_gap=reducing_gap),
                      dtype=np.float64)


def _ours_f(a: np.ndarray, size_hw, kernel, dtype=torch.float64, reducing_gap=None) -> np.ndarray:
    x = torch.tensor(a, dtype=dtype)[None, None]
    return resize(x, size_hw, kernel, reducing_gap=reducing_gap)[0, 0].double().numpy()


def _texture(h, w, sigma=2.0, channels=3, seed=0):
    """A smooth random 'render' (Gaussian-filtered noise), [C, h, w] float64."""
    a = _rng(seed).standard_normal((channels, h, w))
    return np.stack([gaussian_filter(c, sigma) for c in a])


def _faces(shared, n=4):
    with zipfile.ZipFile(shared(FFHQ)) as z:
        names = sorted(m for m in z.namelist() if m.endswith(".png"))[:n]
        return [np.array(Image.open(io.BytesIO(z.read(m))).convert("RGB")) for m in names]


# ----------------------------------------------------------------------------------------------------------------
# resize against Pillow


@pytest.mark.parametrize("kernel", list(PIL_FILTERS))
@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_matches_pillow_float(src, dst, kernel):
    a = _rng(1).random(src).astype(np.float32)
    ref = _pillow_f(a, dst, kernel)
    out64 = _ours_f(a, dst, kernel)
    out32 = _ours_f(a, dst, kernel, dtype=torch.float32)
    assert out64.shape == ref.shape == dst
    # Pillow accumulates in double and stores float32 (~6e-8 on [0, 1]); the measured worst case is ~1.5e-7.
    assert np.abs(out64 - ref).max() < 1e-6
    assert np.abs(out32 - ref).max() < 1e-6


@pytest.mark.parametrize("kernel", list(PIL_FILTERS))
@pytest.mark.parametrize("src,dst,gap", [((200, 150), (20, 31), 2.0), ((200, 150), (20, 31), 3.0),
                                         ((64, 64), (9, 9), 3.0), ((37, 41), (5, 41), 2.0),
                                         ((64, 64), (32, 32), 1.0)])
def test_resize_matches_pillow_reducing_gap(src, dst, gap, kernel):
    """Pillow's reduce() (box means, a partial last block) and resampling of the reduced box, as one matrix."""
    a = _rng(2).random(src).astype(np.float32)
    ref = _pillow_f(a, dst, kernel, reducing_gap=gap)
    assert np.abs(_ours_f(a, dst, kernel, reducing_gap=gap) - ref).max() < 1e-6
    # and the reduction matters here: without it the result is measurably different
    if src[0] / dst[0] / gap >= 2:
        assert np.abs(_ours_f(a, dst, kernel) - ref).max() > 1e-4


def test_tolerance_separates_kernels_and_antialiasing():
    """The 1e-6 tolerance is meaningful: the other kernels, or Lanczos without Pillow's antialiasing support
    scaling, miss Pillow's Lanczos by orders of magnitude more."""
    a = _rng(3).random((64, 64)).astype(np.float32)
    ref = _pillow_f(a, (32, 32), "lanczos3")
    for other in ("bicubic", "bilinear"):
        assert np.abs(_ours_f(a, (32, 32), other) - ref).max() > 1e-2
    x = torch.tensor(a, dtype=torch.float64)[None, None]
    no_aa = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)[0, 0].numpy()
    assert np.abs(no_aa - ref).max() > 1e-2


def _uint8_images():
    rng = _rng(4)
    imgs = {"noise": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            "smooth": np.asarray(Image.fromarray(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8))
                                 .resize((48, 48), Image.Resampling.BICUBIC))}
    return imgs


UINT8_SIZES = [(24, 24), (36, 36), (29, 23), (96, 96), (64, 64), (7, 7)]


@pytest.mark.parametrize("kernel", list(PIL_FILTERS))
def test_resize_quantized_matches_pillow_uint8_rgb(kernel):
    """uint8 RGB through Pillow vs quantize=True (8-bit stores between passes, as Pillow): within 1 level, and
    off by one only on exact ties of Pillow's fixed-point coefficients (well under 1 % of values)."""
    for name, img in _uint8_images().items():
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].double()
        for oh, ow in UINT8_SIZES:
            for gap in (None, 3.0):
                ref = np.asarray(Image.fromarray(img).resize((ow, oh), PIL_FILTERS[kernel], reducing_gap=gap))
                out = resize(x, (oh, ow), kernel, reducing_gap=gap, quantize=True)
                assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
                d = np.abs(out[0].permute(1, 2, 0).numpy() - ref.astype(np.float64))
                assert d.max() <= 1, (name, (oh, ow), gap, d.max())
                assert (d > 0).mean() < 0.01, (name, (oh, ow), gap, (d > 0).mean())


@pytest.mark.parametrize("kernel", list(PIL_FILTERS))
def test_resize_float_matches_pillow_uint8_rgb_within_one_level(kernel):
    """The plain float result, rounded, is within 1 level of Pillow's 8-bit result when no intermediate value is
    clipped (mid-range content): the difference is Pillow's rounding between its two passes."""
    img = _rng(5).integers(40, 216, (48, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].double()
    for oh, ow in UINT8_SIZES:
        ref = np.asarray(Image.fromarray(img).resize((ow, oh), PIL_FILTERS[kernel])).astype(np.float64)
        out = resize(x, (oh, ow), kernel).round().clamp(0, 255)[0].permute(1, 2, 0).numpy()
        assert np.abs(out - ref).max() <= 1, ((oh, ow), np.abs(out - ref).max())


def test_resize_uint8_faces(shared):
    """Real photographs (FFHQ 256 px) through Pillow: quantize=True within 1 level at every size tried."""
    for img in _faces(shared, 2):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].double()
        for size in (128, 192, 36, 341):
            for gap in (None, 3.0):
                ref = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS,
                                                             reducing_gap=gap)).astype(np.float64)
                out = resize(x, size, reducing_gap=gap, quantize=True)[0].permute(1, 2, 0).numpy()
                assert np.abs(out - ref).max() <= 1


def test_resize_matrix_properties():
    for kernel in PIL_FILTERS:
        for n, m in [(64, 32), (37, 29), (16, 32), (10, 37), (300, 7)]:
            mat = resize_matrix(n, m, kernel)
            assert mat.shape == (m, n)
            np.testing.assert_allclose(mat.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(resize_matrix(20, 20, kernel), np.eye(20))
    # antialiasing: a 4x reduction uses 4x wider Lanczos support (6 * 4 = 24 taps away from the borders)
    assert np.count_nonzero(resize_matrix(256, 64)[32]) == 24
    assert np.count_nonzero(resize_matrix(64, 256)[128]) == 6


def test_resize_same_size_is_a_copy_and_checks_arguments():
    x = torch.randn(2, 3, 16, 16)
    y = resize(x, 16)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()
    with pytest.raises(ValueError):
        resize(x, 8, "nearest")
    with pytest.raises(ValueError):
        resize(x, 8, reducing_gap=0.5)
    with pytest.raises(TypeError):
        resize(x.to(torch.uint8), 8)
    with pytest.raises(ValueError):
        resize(x[0], 8)


def test_resize_any_range_and_non_square_batch():
    x = torch.randn(2, 3, 37, 41, dtype=torch.float64) * 1000 - 50
    y = resize(x, (29, 23))
    assert y.shape == (2, 3, 29, 23)
    for n in range(2):
        for c in range(3):
            ref = _pillow_f(x[n, c].numpy(), (29, 23), "lanczos3")
            assert np.abs(y[n, c].numpy() - ref).max() < 1e-6 * 4000


def test_resize_batch_of_three_equals_three_singles():
    x = torch.randn(3, 3, 40, 40, dtype=torch.float64)
    for size in (17, 64):
        batch = resize(x, size)
        singles = torch.cat([resize(x[i:i + 1], size) for i in range(3)])
        torch.testing.assert_close(batch, singles, rtol=0, atol=1e-12)
        # each image's result depends on that image alone
        x2 = x.clone()
        x2[1] += 1
        moved = resize(x2, size)
        assert torch.equal(moved[0], batch[0]) and torch.equal(moved[2], batch[2])
        assert not torch.equal(moved[1], batch[1])


def test_resize_gradients():
    x = torch.randn(1, 2, 12, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize(t, (7, 15)), (x,))
    assert torch.autograd.gradcheck(lambda t: down_up(t, 0.5), (x,))
    # d(sum)/dx = column sums of M_h times column sums of M_w
    resize(x, (7, 15)).sum().backward()
    expect = np.outer(resize_matrix(12, 7).sum(0), resize_matrix(10, 15).sum(0))
    np.testing.assert_allclose(x.grad[0, 0].numpy(), expect, atol=1e-12)
    np.testing.assert_allclose(x.grad[0, 1].numpy(), expect, atol=1e-12)
    # quantize=True: rounding passes gradients straight through (0 only where clipped)
    z = (torch.rand(1, 1, 16, 16, dtype=torch.float64) * 200 + 20).requires_grad_(True)
    resize(z, 8, quantize=True).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_resize_on_other_devices():
    x = torch.randn(2, 3, 20, 20)
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        y = resize(x.to(dev), 13)
        assert y.device.type == dev and y.shape == (2, 3, 13, 13)
        if dev != "meta":
            torch.testing.assert_close(y.cpu(), resize(x, 13), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# down_up


@pytest.mark.parametrize("factor", [0.5, 0.25, 0.75, 0.6])
def test_down_up_matches_two_pillow_resizes(factor):
    for h, w in [(64, 64), (37, 50)]:
        a = _rng(6).random((h, w)).astype(np.float32)
        small = (round(h * factor), round(w * factor))
        ref = _pillow_f(_pillow_f(a, small, "lanczos3").astype(np.float32), (h, w), "lanczos3")
        out = down_up(torch.tensor(a, dtype=torch.float64)[None, None], factor)[0, 0].numpy()
        assert out.shape == (h, w)
        assert np.abs(out - ref).max() < 2e-6


def test_down_up_sizes_and_kernels():
    x = torch.randn(1, 3, 37, 37, dtype=torch.float64)
    # round(37 * 0.5) = round(18.5) = 18 (Python's round), as a Pillow user's script would compute it
    torch.testing.assert_close(down_up(x, 0.5), resize(resize(x, 18), 37), rtol=0, atol=0)
    torch.testing.assert_close(down_up(x, 0.5, "bicubic", up_kernel="bilinear"),
                               resize(resize(x, 18, "bicubic"), 37, "bilinear"), rtol=0, atol=0)
    assert torch.equal(down_up(x, 1.0), x)
    assert torch.equal(down_up(x, 0.99), x)                  # rounds back to 37: nothing to do
    assert not torch.allclose(down_up(x, 0.5), x, atol=1e-2)  # a real degradation
    with pytest.raises(ValueError):
        down_up(x, 0)


# ----------------------------------------------------------------------------------------------------------------
# shift


def _np_shift(a: np.ndarray, dy: int, dx: int, mode: str) -> np.ndarray:
    """Reference: out[i, j] = a[i - dy, j - dx] with numpy's padding / roll."""
    if mode == "circular":
        return np.roll(a, (dy, dx), axis=(-2, -1))
    h, w = a.shape[-2:]
    py, px = abs(dy), abs(dx)
    pad = [(0, 0)] * (a.ndim - 2) + [(py, py), (px, px)]
    padded = np.pad(a, pad, mode="edge" if mode == "replicate" else "constant")
    return padded[..., py - dy:py - dy + h, px - dx:px - dx + w]


@pytest.mark.parametrize("mode", ["replicate", "zeros", "circular"])
@pytest.mark.parametrize("dy,dx", [(3, -2), (0, 0), (-5, 7), (1, 0), (0, -1), (12, 15), (-20, 3)])
def test_shift_matches_numpy(dy, dx, mode):
    a = _rng(7).standard_normal((2, 3, 12, 15))
    out = shift(torch.from_numpy(a), dy, dx, mode)
    np.testing.assert_array_equal(out.numpy(), _np_shift(a, dy, dx, mode))


def test_shift_direction_is_np_roll():
    a = np.arange(36.0).reshape(1, 1, 6, 6)
    out = shift(torch.from_numpy(a), 3, -2).numpy()
    assert np.array_equal(out[0, 0, 3:, :4], np.roll(a, (3, -2), axis=(-2, -1))[0, 0, 3:, :4])
    assert out[0, 0, 3, 0] == a[0, 0, 0, 2]  # content moved 3 down and 2 left


def test_shift_per_image_equals_singles_and_gradients():
    x = torch.randn(3, 2, 10, 11, dtype=torch.float64, requires_grad=True)
    dys, dxs = [3, -1, 0], [-2, 4, 0]
    batch = shift(x, dys, dxs)
    singles = torch.cat([shift(x[i:i + 1], dys[i], dxs[i]) for i in range(3)])
    assert torch.equal(batch, singles)
    assert torch.equal(shift(x, torch.tensor(dys), torch.tensor(dxs)), batch)
    for mode in ("replicate", "zeros", "circular"):
        assert torch.autograd.gradcheck(lambda t, m=mode: shift(t, dys, dxs, m), (x,))
    # replicate: each output pixel's gradient lands on its source pixel
    y = torch.zeros(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    shift(y, 2, 0).sum().backward()
    assert y.grad[0, 0, 0].tolist() == [3.0] * 5 and y.grad[0, 0, -2:].sum() == 0
    with pytest.raises(ValueError):
        shift(x, [1, 2], 0)
    with pytest.raises(ValueError):
        shift(x, 1.5, 0)
    with pytest.raises(ValueError):
        shift(x, 1, 0, mode="reflect")


@pytest.mark.parametrize("dy,dx", [(3, -2), (0, 0), (-4, 5), (7, 7)])
def test_shift_valid_mask_and_box(dy, dx):
    h, w = 9, 12
    m = shift_valid_mask(h, w, dy, dx, dtype=torch.float64)
    assert m.shape == (1, 1, h, w)
    ones_shifted = shift(torch.ones(1, 1, h, w, dtype=torch.float64), dy, dx, "zeros")
    assert torch.equal(m, ones_shifted)
    # the masked replicate shift is the zero-filled shift: the mask removes exactly the made-up pixels
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert torch.equal(shift(x, dy, dx) * m, shift(x, dy, dx, "zeros"))
    top, bottom, left, right = shift_valid_box(h, w, dy, dx)
    rows, cols = torch.nonzero(m[0, 0], as_tuple=True)
    assert (top, bottom, left, right) == (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
    assert m[0, 0, top:bottom, left:right].all() and m.sum() == (bottom - top) * (right - left)


def test_shift_valid_mask_per_image_and_box_intersection():
    m = shift_valid_mask(8, 8, [2, -3, 0], [0, 1, -2])
    assert m.shape == (3, 1, 8, 8)
    for i, (dy, dx) in enumerate([(2, 0), (-3, 1), (0, -2)]):
        assert torch.equal(m[i:i + 1], shift_valid_mask(8, 8, dy, dx))
    assert shift_valid_box(8, 8, [2, -3, 0], [0, 1, -2]) == (2, 5, 1, 6)
    assert shift_valid_box(8, 8, 9, 0)[1] == shift_valid_box(8, 8, 9, 0)[0]  # empty


def test_masked_loss_ignores_the_border():
    """The documented use: a shifted prediction that equals the target wherever both are real gives loss 0."""
    big = torch.from_numpy(_texture(40, 40))[None]
    target = big[..., 5:35, 8:38]             # window 3 higher and 2 right of the reference's
    ref = big[..., 8:38, 6:36]
    dy, dx = 3, -2
    m = shift_valid_mask(30, 30, dy, dx, dtype=target.dtype)
    pred = shift(ref, dy, dx)
    assert ((pred - target) ** 2).sum() > 1                     # the made-up border differs...
    assert ((pred - target) ** 2 * m).sum() < 1e-20             # ...and is all that differs
    t, b, l, r = shift_valid_box(30, 30, dy, dx)
    assert torch.equal(pred[..., t:b, l:r], target[..., t:b, l:r])


# ----------------------------------------------------------------------------------------------------------------
# estimate_shift


def test_estimate_shift_roll():
    ref = torch.from_numpy(_texture(64, 64, sigma=1.5))[None]
    target = torch.from_numpy(np.roll(ref.numpy(), (3, -2), axis=(-2, -1)))
    (est,) = estimate_shift(target, ref, 8)
    assert isinstance(est, ShiftEstimate)
    assert (est.dy, est.dx) == (3, -2) and isinstance(est.dy, int) and not est.clipped
    assert est.raw == (3.0, -2.0)
    # the other way round, the opposite shift
    (back,) = estimate_shift(ref, target, 8)
    assert (back.dy, back.dx) == (-3, 2)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_estimate_shift_crop_of_a_larger_render(sigma):
    big = _texture(96, 96, sigma=sigma)
    ref = torch.from_numpy(big[:, 16:80, 16:80])[None]
    target = torch.from_numpy(big[:, 13:77, 18:82])[None]   # target[i, j] = ref[i - 3, j + 2]
    (est,) = estimate_shift(target, ref, 8)
    assert (est.dy, est.dx) == (3, -2)
    # the convention: shifting the reference by the estimate reproduces the target (exactly, where real)
    t, b, l, r = shift_valid_box(64, 64, est.dy, est.dx)
    assert torch.equal(shift(ref, est.dy, est.dx)[..., t:b, l:r], target[..., t:b, l:r])


def test_estimate_shift_many_shifts_and_degradations():
    big = _texture(160, 160, sigma=2.0, seed=11)
    o, n = 24, 112
    ref = torch.from_numpy(big[:, o:o + n, o:o + n])[None]
    for dy, dx in [(3, -2), (-6, 5), (0, 1), (8, 8), (-1, -7), (0, 0)]:
        target = torch.from_numpy(big[:, o - dy:o - dy + n, o - dx:o - dx + n])[None]
        for degraded in (target, down_up(target, 0.5), down_up(target, 0.25),
                         target + 0.05 * torch.randn_like(target)):
            (est,) = estimate_shift(degraded, ref, 10)
            assert (est.dy, est.dx) == (dy, dx)


def test_estimate_shift_faces(shared):
    """FFHQ photographs: 224 px crops of the 256 px image at known offsets, plain and downscaled 2x and back."""
    for img in _faces(shared, 4):
        t = torch.from_numpy(img).permute(2, 0, 1)[None].double()
        o, n = 16, 224
        ref = t[..., o:o + n, o:o + n]
        for dy, dx in [(3, -2), (-5, 4), (7, 0)]:
            target = t[..., o - dy:o - dy + n, o - dx:o - dx + n]
            for degraded in (target, down_up(target, 0.5)):
                (est,) = estimate_shift(degraded, ref, 8)
                assert (est.dy, est.dx) == (dy, dx)


def test_estimate_shift_batch_and_broadcast():
    big = _texture(100, 100, seed=12)
    o, n = 18, 64
    shifts = [(3, -2), (-4, 1), (0, 5)]
    ref = torch.from_numpy(big[:, o:o + n, o:o + n])[None]
    targets = torch.cat([torch.from_numpy(big[:, o - dy:o - dy + n, o - dx:o - dx + n])[None] for dy, dx in shifts])
    batch = estimate_shift(targets, ref, 8)            # one reference for three targets
    assert [(e.dy, e.dx) for e in batch] == shifts
    singles = [estimate_shift(targets[i:i + 1], ref, 8)[0] for i in range(3)]
    paired = estimate_shift(targets, ref.expand(3, -1, -1, -1), 8)
    for a, b, c in zip(batch, singles, paired):
        assert (a.dy, a.dx, a.raw, a.clipped) == (b.dy, b.dx, b.raw, b.clipped) == (c.dy, c.dx, c.raw, c.clipped)
        assert a.error == pytest.approx(b.error, abs=1e-12) and a.error == pytest.approx(c.error, abs=1e-12)
    # each pair is estimated on its own: changing one target changes only its result
    other = targets.clone()
    other[1] = torch.from_numpy(_texture(64, 64, seed=99))
    changed = estimate_shift(other, ref, 8)
    assert changed[0] == batch[0] and changed[2] == batch[2] and changed[1].error > 0.9
    # one target, three references: the reference shifted by the result matches the target
    back = estimate_shift(ref, targets, 8)
    assert [(e.dy, e.dx) for e in back] == [(-dy, -dx) for dy, dx in shifts]
    with pytest.raises(ValueError):
        estimate_shift(targets, targets[:2], 8)


def test_estimate_shift_clipping_flat_and_error():
    big = _texture(100, 100, seed=13)
    ref = torch.from_numpy(big[:, 18:82, 18:82])[None]
    target = torch.from_numpy(big[:, 11:75, 24:88])[None]    # (7, -6)
    (est,) = estimate_shift(target, ref, 4)
    assert (est.dy, est.dx) == (4, -4) and est.clipped and est.raw == (7.0, -6.0)
    (free,) = estimate_shift(target, ref, None)
    assert (free.dy, free.dx) == (7, -6) and not free.clipped
    # error: small for the same picture, near 1 for an unrelated one
    other = torch.from_numpy(_texture(64, 64, seed=14))[None]
    (unrelated,) = estimate_shift(other, ref, None)
    assert free.error < 0.5 < 0.9 < unrelated.error
    # nothing to register
    (flat,) = estimate_shift(torch.ones_like(ref), ref, 4)
    assert (flat.dy, flat.dx) == (0, 0) and np.isnan(flat.error)
    with pytest.raises(ValueError):
        estimate_shift(target, ref[..., :32], 4)


def test_estimate_shift_subpixel():
    """Quarter-pixel shifts: crops of a 4x larger render at offsets of whole pixels, downscaled by 4."""
    big = _texture(512, 512, sigma=3.0, seed=15)
    ref = resize(torch.from_numpy(big[:, 64:448, 64:448])[None], 96)
    for d4y, d4x in [(5, -2), (-3, 7), (2, 2)]:
        target = resize(torch.from_numpy(big[:, 64 - d4y:448 - d4y, 64 - d4x:448 - d4x])[None], 96)
        (est,) = estimate_shift(target, ref, 4, upsample_factor=4)
        assert (est.dy, est.dx) == (d4y / 4, d4x / 4)
        (whole,) = estimate_shift(target, ref, 4)
        assert abs(whole.dy - d4y / 4) <= 0.5 and abs(whole.dx - d4x / 4) <= 0.5


def test_estimate_shift_phase_normalisation_option():
    ref = torch.from_numpy(_texture(64, 64, sigma=0.7, seed=16))[None]
    target = torch.roll(ref, (3, -2), (-2, -1))
    (est,) = estimate_shift(target, ref, 8, normalization="phase")
    assert (est.dy, est.dx) == (3, -2)
    assert est.error < 0.5  # taken from the unnormalised correlation: scikit-image's 'phase' error is always ~1
    with pytest.raises(ValueError):
        estimate_shift(target, ref, 8, normalization="zncc")


def test_luminance():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    expect = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(luminance(x), expect)
    assert torch.equal(luminance(x[:, :1]), x[:, 0])
