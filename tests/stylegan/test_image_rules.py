"""The one image-preparation path (stylegan/images.py): alpha on white, 16-bit scaled, one Lanczos resize."""

import io

import h5py
import numpy as np
import pytest
from PIL import Image

from stylegan.data import build_dataset, prepare_image
from stylegan.images import (
    ALPHA_BACKGROUND,
    RESIZE_FILTER,
    ImageRejected,
    crop_box,
    decode_image,
    prepare,
    resize,
    to_mode,
)

RNG = np.random.default_rng(7)


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Alpha


def test_alpha_is_composited_on_white_for_every_alpha_mode():
    assert ALPHA_BACKGROUND == (255, 255, 255)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[..., 3] = 128
    rgba[0, 0, 3] = 0
    p = prepare(Image.fromarray(rgba, "RGBA"), 8)
    # (v * 128 + 255 * 127) / 255, rounded by Pillow's integer compositing
    assert p.array[:, 0, 0].tolist() == [255, 255, 255]
    assert p.array[:, 5, 5].tolist() == [227, 177, 127]
    assert any("composited on white" in n for n in p.notes)

    la = np.stack([np.full((8, 8), 200, np.uint8), np.full((8, 8), 128, np.uint8)], axis=-1)
    la[0, 0, 1] = 0
    g = prepare(Image.fromarray(la, "LA"), 8, channels=1)
    assert g.array.shape == (1, 8, 8) and g.array[0, 0, 0] == 255 and g.array[0, 5, 5] == 227
    g3 = prepare(Image.fromarray(la, "LA"), 8, channels=3)
    assert (g3.array == g.array).all()  # grey replicated, same values

    pal = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).quantize(4)
    pal.info["transparency"] = 0
    idx = np.asarray(pal)
    assert (idx == 0).any()
    out = prepare(pal, 8).array
    assert (out[:, idx == 0] == 255).all()


def test_opaque_alpha_is_dropped_without_changing_pixels():
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=-1)
    p = prepare(Image.fromarray(rgba, "RGBA"), 8)
    assert (p.array == rgb.transpose(2, 0, 1)).all()
    assert any("fully opaque" in n for n in p.notes)


# ----------------------------------------------------------------------------------------------------------------
# 16-bit and other deep modes


def test_16bit_greyscale_scaled_by_255_over_65535():
    a = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    im = decode_image(_png_bytes(Image.fromarray(a)))
    assert im.mode.startswith("I;16")
    p = prepare(im, 32, channels=1)
    expected = (a.astype(np.int64) * 255 + 32767) // 65535
    assert (p.array[0] == expected).all()
    assert (expected == np.round(a / 257.0)).all()  # the same as round(v / 257)
    assert any("16-bit greyscale scaled" in n for n in p.notes)


def test_32bit_integer_greyscale_is_read_as_16bit_and_range_checked():
    small = np.full((8, 8), 200, np.int32)  # values that would fit 8 bits are still 16-bit values
    p = prepare(Image.fromarray(small, "I"), 8, channels=1)
    assert (p.array == 1).all()  # round(200 / 257)
    with pytest.raises(ImageRejected, match="outside 0..65535"):
        prepare(Image.fromarray(np.full((8, 8), 70000, np.int32), "I"), 8)


def test_float_greyscale_in_unit_range_only():
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    p = prepare(Image.fromarray(a, "F"), 8, channels=1)
    assert (p.array[0] == np.round(a * 255)).all()
    with pytest.raises(ImageRejected, match=r"outside \[0, 1\]"):
        prepare(Image.fromarray(a * 2, "F"), 8)


def test_modes_end_in_l_or_rgb():
    rgb = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "RGBA", "LA"):
        im = rgb.convert(mode)
        assert to_mode(im, 3, []).mode == "RGB" and to_mode(im, 1, []).mode == "L", mode


# ----------------------------------------------------------------------------------------------------------------
# Crop and resize


def test_one_resize_filter():
    assert RESIZE_FILTER == "lanczos(reducing_gap=3)"
    big = Image.fromarray(RNG.integers(0, 256, (192, 192, 3), dtype=np.uint8))
    notes = []
    out = resize(big, 16, notes)  # a 12x shrink: box reduction first, then Lanczos
    ref = big.resize((16, 16), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    assert notes == ["resized 192 -> 16 (Lanczos, antialiased)"]
    same = Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    notes = []
    assert resize(same, 16, notes) is same and notes == []  # no resampling at the target size


def test_constant_colour_survives_resize_both_ways():
    for side, res in ((100, 8), (8, 64)):
        p = prepare(Image.new("RGB", (side, side), (10, 200, 77)), res)
        assert (p.array == np.array([10, 200, 77])[:, None, None]).all()


def test_crop_boxes():
    assert crop_box(60, 40, "center") == (10, 0, 50, 40)
    assert crop_box(61, 40, "center") == (10, 0, 50, 40)  # the odd pixel is lost at the right
    assert crop_box(178, 218, "celeba") == (0, 20, 178, 198)
    assert crop_box(16, 16, "none") == (0, 0, 16, 16)
    with pytest.raises(ImageRejected, match="not square"):
        crop_box(16, 12, "none")
    with pytest.raises(ValueError):
        crop_box(16, 16, "middle")


def test_dataset_and_prepare_agree(tmp_path):
    """build_dataset stores exactly what prepare() returns: one path for training data and suspect images."""
    src = tmp_path / "src"
    src.mkdir()
    rgba = RNG.integers(0, 256, (100, 140, 4), dtype=np.uint8)
    g16 = (RNG.integers(0, 65536, (50, 50))).astype(np.uint16)
    Image.fromarray(rgba, "RGBA").save(src / "a.png")
    Image.fromarray(g16).save(src / "b.png")
    build_dataset(src, tmp_path / "d.h5", 16)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        stored = f["images"][()]
    for i, name in enumerate(("a.png", "b.png")):
        im = decode_image((src / name).read_bytes())
        assert np.array_equal(stored[i], prepare(im, 16).array)
        assert np.array_equal(stored[i], prepare_image(decode_image((src / name).read_bytes()), 16))
