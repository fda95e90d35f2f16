"""Reading a JPEG's stored coefficients (detector/jpeg_coefficients.py), checked against Pillow's libjpeg.

Measured (Pillow 13, libjpeg-turbo; the images of test_jpeg.py and odd sizes, qualities 50-95, 4:2:0, 4:2:2 and
4:4:4, default, optimised and restart-marked files): the image a file was made from, through
DifferentiableJpeg.coefficients, is within 2.1e-5 of the file's own intervals (consistency residual, the encoder's
dummy blocks left out), where intervals re-derived from the decoded pixels put it at 1e-4 to 0.3; 97.5-100 % of
its coefficients round to the stored integer (the rest: libjpeg's integer DCT at a rounding boundary).
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.jpeg import DifferentiableJpeg, consistency_residual, estimate_jpeg_quality
from detector.jpeg_coefficients import JpegFormatError, read_jpeg_coefficients
from tests.detector.test_jpeg import SUBSAMPLING_CODES, _jpeg_bytes, _open, _to_tensor, natural_image

SIZES = [((64, 64), 0), ((29, 37), 3), ((30, 38), 4), ((17, 9), 5)]


@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"restart_marker_blocks": 3}])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:2:2", "4:4:4"])
@pytest.mark.parametrize("quality", [50, 90])
def test_the_image_a_file_was_made_from_is_inside_its_intervals(quality, subsampling, options):
    for (h, w), seed in SIZES:
        arr = natural_image(h, w, seed)
        data = _jpeg_bytes(arr, quality=quality, subsampling=SUBSAMPLING_CODES[subsampling], **options)
        stored = read_jpeg_coefficients(data)
        assert (stored.height, stored.width) == (h, w)
        model = DifferentiableJpeg(estimate_jpeg_quality(_open(data)))
        assert np.array_equal(stored.tables[0], model.luma_table.numpy())
        assert np.array_equal(stored.tables[1], model.chroma_table.numpy())
        c, k, mask = model.coefficients(_to_tensor(arr)), stored.flat(), stored.mask()
        assert c.shape == k.shape == mask.shape and mask.dtype == torch.bool
        assert float(consistency_residual(c, k, mask)) < 1e-4
        assert float(((c.round() == k) | ~mask).float().mean()) > 0.97
        # another image of the same kind is far outside
        other = model.coefficients(_to_tensor(natural_image(h, w, seed + 10)))
        assert float(consistency_residual(other, k, mask)) > 0.1


def test_dummy_blocks_are_masked():
    # 29 x 37 at 4:2:0: MCUs of 16 px, 2 x 3 of them; luma holds 4 x 5 blocks of samples in a 4 x 6 grid
    stored = read_jpeg_coefficients(_jpeg_bytes(natural_image(29, 37, 3), quality=75, subsampling=2))
    assert [b.shape[:2] for b in stored.blocks] == [(4, 6), (2, 3), (2, 3)]
    assert stored.own_blocks == ((4, 5), (2, 3), (2, 3)) and stored.sampling == ((2, 2), (1, 1), (1, 1))
    assert int(stored.mask().sum()) == 64 * (20 + 6 + 6)


def test_greyscale_coefficients_decode_to_pillows_pixels():
    arr = natural_image(29, 37, 1).mean(-1).round().astype(np.uint8)
    data = _jpeg_bytes(arr, quality=75)
    stored = read_jpeg_coefficients(data)
    assert len(stored.blocks) == 1 and stored.blocks[0].shape[:2] == (4, 5)
    # dequantise and invert the DCT ourselves: Pillow's decoded pixels to within its integer IDCT (1 level)
    d = DifferentiableJpeg(75).dct.double().numpy()
    coef = stored.blocks[0] * stored.tables[0]
    pixels = np.einsum("ki,rckl,lj->ricj", d, coef, d).reshape(32, 40) + 128
    ref = np.asarray(_open(data), dtype=np.float64)
    assert np.abs(np.clip(np.round(pixels), 0, 255)[:29, :37] - ref).max() <= 1
    model = DifferentiableJpeg(estimate_jpeg_quality(_open(data)))
    x = torch.from_numpy(arr.astype(np.float32))[None, None] / 127.5 - 1
    assert float(consistency_residual(model.coefficients(x), stored.flat(), stored.mask())) < 1e-4


def test_files_it_does_not_read_are_refused_clearly():
    arr = natural_image(32, 32, 0)
    with pytest.raises(JpegFormatError, match="progressive"):
        read_jpeg_coefficients(_jpeg_bytes(arr, quality=75, progressive=True))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    with pytest.raises(JpegFormatError, match="not a JPEG"):
        read_jpeg_coefficients(buf.getvalue())
    data = _jpeg_bytes(arr, quality=75)
    with pytest.raises(JpegFormatError):
        read_jpeg_coefficients(data[: len(data) // 2])


def test_damaged_files_give_its_own_error_only():
    data = _jpeg_bytes(natural_image(32, 32, 0), quality=75)
    rng = np.random.default_rng(1)
    damaged = [data[:cut] for cut in range(2, len(data), 5)]
    for _ in range(300):
        x = bytearray(data)
        for _ in range(3):
            x[rng.integers(2, len(x))] = rng.integers(0, 256)
        damaged.append(bytes(x))
    for d in damaged:
        try:
            read_jpeg_coefficients(d)
        except JpegFormatError:
            pass  # anything else (IndexError, OverflowError, ...) fails the test
