"""Reading and writing suspect images (detector/images.py): every bad input, made here with Pillow."""

import dataclasses
import os
import stat
import struct
import zlib

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from detector.images import MIN_SIDE, ImageInputError, LoadedImage, iter_image_files, load_image, save_image, to_uint8
from stylegan.data import build_dataset

RNG = np.random.default_rng(1234)


def _rgb(h=40, w=60):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width, height, bit_depth, colour_type, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _has(notes, text):
    return any(text in n for n in notes)


# ----------------------------------------------------------------------------------------------------------------
# Good images


@pytest.mark.parametrize("fmt,ext,kwargs", [("PNG", ".png", {}), ("JPEG", ".jpg", {"quality": 95}),
                                            ("WEBP", ".webp", {"lossless": True}), ("TIFF", ".tif", {}),
                                            ("BMP", ".bmp", {})])
def test_formats_crop_and_resize(tmp_path, fmt, ext, kwargs):
    path = tmp_path / f"img{ext}"
    Image.fromarray(_rgb(40, 60)).save(path, format=fmt, **kwargs)
    li = load_image(path, 32)
    assert isinstance(li, LoadedImage)
    assert li.format == fmt and li.original_size == (60, 40) and li.original_mode == "RGB"
    assert li.tensor.shape == (1, 3, 32, 32) and li.tensor.dtype == torch.float32
    # the pixels: Pillow's own decode, the centre 40x40 square, one Lanczos resize, mapped to [-1, 1]
    ref = np.asarray(Image.open(path).convert("RGB").crop((10, 0, 50, 40)).resize((32, 32), Image.LANCZOS))
    assert torch.equal(li.tensor[0], torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    jpeg = ["JPEG file, quality 95, chroma 4:2:0"] if fmt == "JPEG" else []
    assert li.notes == ["centre-cropped 60x40 to 40x40", "resized 40 -> 32 (Lanczos, antialiased)"] + jpeg
    pre = li.preprocessing  # the same steps, structured
    assert (pre.format, pre.original_size, pre.crop, pre.resized_from, pre.resolution) == (
        fmt, (60, 40), (10, 0, 50, 40), 40, 32)
    assert pre.jpeg == ({"quality": 95, "exact": True, "subsampling": "4:2:0"} if fmt == "JPEG" else None)
    assert pre.summary().endswith("60x40 -> centre crop 40x40 -> resized 40 -> 32")
    with pytest.raises(ImageInputError, match=r"60x40 px would need cropping and resizing .* --strict refuses"):
        load_image(path, 32, strict=True)
    assert load_image(path, 40, strict=False).preprocessing.resized_from is None
    assert li.path == path and len(li.sha256) == 64
    assert torch.equal(load_image(path, 32).tensor, li.tensor)  # deterministic
    with pytest.raises(dataclasses.FrozenInstanceError):
        li.format = "PNG"


def test_exact_values_crop_position_and_round_trip(tmp_path):
    a = _rgb(20, 24)
    Image.fromarray(a).save(tmp_path / "a.png")
    li = load_image(tmp_path / "a.png", 20)  # crop only, no resampling
    assert li.notes == ["centre-cropped 24x20 to 20x20"]
    expected = torch.from_numpy(a[:, 2:22].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(li.tensor[0], expected)
    save_image(li.tensor, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), a[:, 2:22])


def test_constant_colour_survives_resampling(tmp_path):
    Image.new("RGB", (90, 70), (10, 200, 77)).save(tmp_path / "c.png")
    for r in (16, 128):  # down and up
        t = load_image(tmp_path / "c.png", r).tensor
        assert torch.equal(t, torch.tensor([10, 200, 77]).float().div(127.5).sub(1).view(1, 3, 1, 1).expand_as(t))


def test_greyscale(tmp_path):
    Image.fromarray(_rgb(32, 32)[:, :, 0]).save(tmp_path / "g.png")
    li = load_image(tmp_path / "g.png", 32)
    assert li.original_mode == "L" and _has(li.notes, "converted from L to RGB")
    assert torch.equal(li.tensor[:, 0], li.tensor[:, 2])
    one = load_image(tmp_path / "g.png", 32, channels=1)
    assert one.tensor.shape == (1, 1, 32, 32) and one.notes == []
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "c.png")
    assert _has(load_image(tmp_path / "c.png", 32, channels=1).notes, "converted from RGB to L")
    with pytest.raises(ValueError):
        load_image(tmp_path / "c.png", 32, channels=4)


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    Image.fromarray(a).save(tmp_path / "g16.tif")
    for name in ("g16.png", "g16.tif"):
        li = load_image(tmp_path / name, 32)
        assert li.original_mode.startswith("I;16") and _has(li.notes, "16-bit greyscale scaled to 8 bits")
        v = ((li.tensor[0, 0] + 1) * 127.5).round().to(torch.int64).numpy()
        assert np.array_equal(v, np.round(a / 257.0).astype(np.int64))
        assert v.min() == 0 and v.max() == 255 and len(np.unique(v)) > 200  # clipping would leave ~2 levels


def test_16bit_rgb_png_is_noted(tmp_path):
    a = RNG.integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(16))
    (tmp_path / "rgb16.png").write_bytes(_png(16, 16, 16, 2, rows))
    li = load_image(tmp_path / "rgb16.png", 16)
    assert _has(li.notes, "16 bits per channel (RGB) reduced to 8 bits")
    v = ((li.tensor[0] + 1) * 127.5).round().to(torch.int64).permute(1, 2, 0).numpy()
    assert np.abs(v - a / 257.0).max() <= 1.0


def test_alpha_is_composited_on_white(tmp_path):
    """As training images are (stylegan.images): a suspect image reaches the networks as the training data did."""
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., :3] = 200
    a[..., 3] = 128
    a[0, 0, 3] = 0
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    li = load_image(tmp_path / "rgba.png", 16)
    assert li.original_mode == "RGBA" and _has(li.notes, "alpha channel dropped (composited on white)")
    v = ((li.tensor[0] + 1) * 127.5).round()
    # (200 * 128 + 255 * 127) / 255 = 227.4
    assert v[:, 0, 0].tolist() == [255, 255, 255] and v[:, 5, 5].tolist() == [227, 227, 227]

    a[..., 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "opaque.png")
    assert _has(load_image(tmp_path / "opaque.png", 16).notes, "alpha channel dropped (fully opaque)")

    Image.fromarray(a[..., [0, 3]].copy(), "LA").save(tmp_path / "la.png")
    li = load_image(tmp_path / "la.png", 16)
    assert li.original_mode == "LA" and _has(li.notes, "LA image: alpha channel dropped")
    assert _has(li.notes, "converted from L to RGB")


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.fromarray(_rgb(16, 16)).quantize(8)
    p.save(tmp_path / "p.png")
    p.save(tmp_path / "pt.png", transparency=0)
    li = load_image(tmp_path / "p.png", 16)
    assert li.original_mode == "P" and li.notes == ["palette image (P) converted to RGB"]
    li = load_image(tmp_path / "pt.png", 16)
    assert _has(li.notes, "transparent colour: alpha channel dropped (composited on white)")
    idx = np.asarray(p)
    v = ((li.tensor[0] + 1) * 127.5).round()
    assert torch.all(v[:, torch.from_numpy(idx == 0)] == 255)


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(_rgb(24, 24)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    li = load_image(tmp_path / "cmyk.jpg", 24)
    assert li.format == "JPEG" and li.original_mode == "CMYK" and _has(li.notes, "converted from CMYK to RGB")
    assert li.tensor.shape == (1, 3, 24, 24)


def test_animated_and_multipage_use_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), (c, c, c)) for c in (50, 150, 250)]
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], lossless=True)
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:])
    for name in ("a.webp", "a.png", "a.tif"):
        li = load_image(tmp_path / name, 16)
        assert _has(li.notes, "3 frames: first frame used"), name
        assert torch.allclose(li.tensor, torch.full_like(li.tensor, 50 / 127.5 - 1)), name


def test_gif_first_frame_as_rgb(tmp_path):
    """A GIF is read like an animated PNG/WebP: its first frame (a palette image) converted to RGB, both noted."""
    frames = [Image.new("RGB", (20, 16), c) for c in ((200, 30, 10), (10, 200, 30))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    li = load_image(tmp_path / "anim.gif", 16)
    assert li.format == "GIF" and li.original_mode == "P" and li.original_size == (20, 16)
    assert _has(li.notes, "animated/multi-frame file with 2 frames: first frame used")
    assert _has(li.notes, "palette image (P) converted to RGB") and _has(li.notes, "centre-cropped 20x16 to 16x16")
    expected = torch.tensor([200, 30, 10], dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    assert torch.allclose(li.tensor, expected.expand_as(li.tensor))
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "still.gif")  # one frame: no frame note
    still = load_image(tmp_path / "still.gif", 16)
    assert still.format == "GIF" and not _has(still.notes, "frame")
    assert iter_image_files(tmp_path) == [tmp_path / "anim.gif", tmp_path / "still.gif"]  # found in folders too


def test_content_decides_the_format_and_exif_rotation(tmp_path):
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "really_jpeg.png", format="JPEG")
    li = load_image(tmp_path / "really_jpeg.png", 16)
    assert li.format == "JPEG" and _has(li.notes, "file extension .png but content is JPEG")

    im = Image.fromarray(_rgb(20, 40))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    li = load_image(tmp_path / "rot.jpg", 20)
    assert li.original_size == (40, 20) and _has(li.notes, "EXIF orientation 6")
    assert _has(li.notes, "centre-cropped 20x40 to 20x20")


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_missing_folder_empty_and_non_image(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "absent.png", 16)
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path, 16)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty file"):
        load_image(tmp_path / "empty.png", 16)
    (tmp_path / "text.png").write_text("this is not a picture\n" * 10)
    with pytest.raises(ImageInputError, match="not a readable PNG, JPEG, WebP, TIFF, BMP or GIF"):
        load_image(tmp_path / "text.png", 16)
    (tmp_path / "x.pdf").write_bytes(b"%PDF-1.4\n" + b"x" * 64)
    with pytest.raises(ImageInputError, match="PDF files are not supported"):
        load_image(tmp_path / "x.pdf", 16)


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_truncated_images_fail_even_if_pillow_is_told_to_tolerate_them(tmp_path, monkeypatch, fmt, ext):
    whole = tmp_path / f"whole{ext}"
    Image.fromarray(_rgb(64, 64)).save(whole, format=fmt)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageInputError, match="corrupt or truncated|not a readable"):
        load_image(cut, 16)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # another library's setting must not matter
    with pytest.raises(ImageInputError, match="corrupt or truncated|not a readable"):
        load_image(cut, 16)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and is restored


def test_corrupt_png_data(tmp_path):
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 10:start + 40] = bytes(30)  # zeroed compressed data (the CRC no longer matches either)
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageInputError, match="corrupt"):
        load_image(tmp_path / "bad.png", 16)


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(tmp_path, size):
    Image.new("RGB", size).save(tmp_path / "small.png")
    with pytest.raises(ImageInputError, match="too small to analyse") as e:
        load_image(tmp_path / "small.png", 16)
    assert f"{size[0]}x{size[1]} px" in str(e.value)
    Image.new("RGB", (MIN_SIDE, MIN_SIDE)).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png", 16).tensor.shape == (1, 3, 16, 16)


def test_decompression_bombs(tmp_path):
    # headers declaring 30000 x 30000 (900 MP: Pillow's own limit) and 10001 x 10001 (100.02 MP: ours)
    (tmp_path / "huge.png").write_bytes(_png(30000, 30000, 8, 2, b"\x00" * 100))
    (tmp_path / "big.png").write_bytes(_png(10001, 10001, 8, 0, b"\x00" * 100))
    with pytest.raises(ImageInputError, match="decompression bomb"):
        load_image(tmp_path / "huge.png", 16)
    with pytest.raises(ImageInputError, match="above the 100 MP limit"):
        load_image(tmp_path / "big.png", 16)
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    with pytest.raises(ImageInputError, match="decompression bomb"):
        load_image(tmp_path / "ok.png", 16, max_pixels=4000)
    assert load_image(tmp_path / "ok.png", 16, max_pixels=4096).tensor.shape == (1, 3, 16, 16)


def test_messages_are_one_line_and_name_the_file(tmp_path):
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ImageInputError) as e:
        load_image(tmp_path / "t.png", 16)
    assert str(e.value).startswith(str(tmp_path / "t.png")) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def test_to_uint8_and_save_image(tmp_path):
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 7)
    assert to_uint8(x).flatten().tolist() == [0, 0, 0, 128, 191, 255, 255]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([float("nan")]))

    t = torch.rand(3, 8, 8) * 2 - 1
    out = save_image(t.unsqueeze(0), tmp_path / "sub" / "o.png")
    assert out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["o.png"]  # no temp file left
    mask = os.umask(0o22)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask  # like open(), not mkstemp's 0600
    back = np.asarray(Image.open(out))
    assert back.dtype == np.uint8 and back.shape == (8, 8, 3)
    assert np.array_equal(back, to_uint8(t).permute(1, 2, 0).numpy())
    save_image(torch.zeros(1, 8, 8), tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode == "L"
    for bad in (torch.zeros(2, 3, 8, 8), torch.zeros(4, 8, 8), torch.zeros(8, 8)):
        with pytest.raises(ValueError):
            save_image(bad, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="PNG"):
        save_image(t, tmp_path / "o.jpg")


def test_iter_image_files(tmp_path):
    for rel in ("b/2.png", "b/10.JPG", "a.webp", "z/deep/x.tiff", "notes.txt", ".hidden/h.png", "b/._mac.png"):
        p = tmp_path / "in" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    extra = tmp_path / "extra.dat"
    extra.write_bytes(b"x")
    got = iter_image_files([tmp_path / "in", extra, tmp_path / "in" / "a.webp"])
    root = tmp_path / "in"
    assert got == [root / "a.webp", root / "b/10.JPG", root / "b/2.png", root / "z/deep/x.tiff", extra]
    assert iter_image_files(extra) == [extra]
    with pytest.raises(ImageInputError, match="no such file"):
        iter_image_files([tmp_path / "missing"])


def test_suspect_images_are_prepared_like_training_images(tmp_path):
    """load_image and build_dataset share stylegan.images: the same file gives the same pixels (alpha on white,
    16-bit scaled, centre crop, the same Lanczos resize, here a 7x shrink that uses the box pre-reduction)."""
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(RNG.integers(0, 256, (120, 150, 4), dtype=np.uint8), "RGBA").save(src / "a.png")
    Image.fromarray(RNG.integers(0, 65536, (112, 112)).astype(np.uint16)).save(src / "b.png")
    Image.fromarray(_rgb(40, 60)).save(src / "c.png")
    build_dataset(src, tmp_path / "d.h5", 16)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        stored = f["images"][()]
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        t = load_image(src / name, 16).tensor[0]
        assert np.array_equal(((t + 1) * 127.5).round().to(torch.uint8).numpy(), stored[i]), name
