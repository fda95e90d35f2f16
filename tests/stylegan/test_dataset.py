"""Dataset building (folder / zip / HDF5 sources), HDF5 streaming, and the resumable sampler / batch stream."""

import dataclasses
import json
import pickle
import zipfile
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.data import (
    BatchStream,
    BuildReport,
    DatasetError,
    HDF5ImageDataset,
    InfiniteSampler,
    build_dataset,
    celeba_crop_box,
    export_images,
    iter_source_images,
    open_dataset,
    prepare_image,
)
from stylegan.data import sources as dsmod


def _rand_rgb(rng, w, h):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture
def folder(tmp_path):
    """6 valid PNGs (mixed sizes, one in a subfolder), a corrupt PNG, a text file named .jpg and a notes.txt."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    sizes = [(16, 16), (20, 12), (12, 20), (16, 16), (32, 32), (8, 8)]
    for k, (w, h) in enumerate(sizes):
        rel = f"sub/img{k}.png" if k == 2 else f"img{k}.png"
        _rand_rgb(rng, w, h).save(root / rel)
    good = (root / "img0.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_text("this is not a JPEG\n")
    (root / "notes.txt").write_text("ignored\n")
    return root


def _zip_folder(root: Path, zpath: Path) -> Path:
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("sub/", "")  # an explicit directory entry
        for p in sorted(root.rglob("*"), reverse=True):  # reversed on purpose: the build must sort
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    return zpath


def _read(path):
    with h5py.File(path, "r") as f:
        return f["images"][()], dict(f.attrs), [s.decode() if isinstance(s, bytes) else s for s in f["names"][()]]


# ------------------------------------------------------------------------------------------------ build


def test_folder_and_zip_build_identical(folder, tmp_path):
    r1 = build_dataset(folder, tmp_path / "a.h5", 8)
    r2 = build_dataset(_zip_folder(folder, tmp_path / "src.zip"), tmp_path / "b.h5", 8)
    a, attrs_a, names_a = _read(tmp_path / "a.h5")
    b, attrs_b, names_b = _read(tmp_path / "b.h5")
    assert a.shape == (6, 3, 8, 8) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert names_a == names_b == ["img0.png", "img1.png", "img3.png", "img4.png", "img5.png", "sub/img2.png"]
    assert r1.fingerprint == r2.fingerprint == attrs_a["fingerprint"] == attrs_b["fingerprint"]
    assert [f["file"] for f in r1.failed] == [f["file"] for f in r2.failed] == ["corrupt.png", "text.jpg"]
    assert r1.ignored == r2.ignored == ("notes.txt",)
    assert attrs_a["source_type"] == "folder" and attrs_b["source_type"] == "zip"
    items = dict(iter_source_images(folder))
    assert sorted(items) == ["corrupt.png", "img0.png", "img1.png", "img3.png", "img4.png", "img5.png",
                             "sub/img2.png", "text.jpg"]
    assert isinstance(items["text.jpg"], Exception) and isinstance(items["img0.png"], Image.Image)


def test_failed_files_listed_with_reasons(folder, tmp_path):
    rep = build_dataset(folder, tmp_path / "d.h5", 8)
    assert isinstance(rep, BuildReport) and rep.count == 6
    reasons = {f["file"]: f["reason"] for f in rep.failed}
    assert set(reasons) == {"corrupt.png", "text.jpg"}
    assert "truncated" in reasons["corrupt.png"].lower() or "error" in reasons["corrupt.png"].lower()
    assert "identify" in reasons["text.jpg"]  # PIL: cannot identify image file
    assert all(r and "\n" not in r for r in reasons.values())
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert json.loads(f.attrs["failed"]) == [dict(x) for x in rep.failed]
        assert f.attrs["count"] == 6 == f["images"].shape[0]
    d = rep.to_dict()
    assert d["count"] == 6 and d["failed"][0]["file"] == "corrupt.png" and d["out_path"] == str(tmp_path / "d.h5")
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.count = 3  # frozen


def test_attributes_and_fingerprint(folder, tmp_path):
    r1 = build_dataset(folder, tmp_path / "a.h5", 8, max_images=4)
    r2 = build_dataset(folder, tmp_path / "b.h5", 8, max_images=4)
    assert r1.count == 4 and r1.fingerprint == r2.fingerprint and len(r1.fingerprint) == 64
    with h5py.File(tmp_path / "a.h5", "r") as f:
        at = f.attrs
        for key in ("source", "count", "resolution", "channels", "crop", "created", "fingerprint", "format_version",
                    "failed"):
            assert key in at, key
        assert at["source"] == str(folder) and at["resolution"] == 8 and at["channels"] == 3 and at["crop"] == "center"
        assert datetime.fromisoformat(at["created"]).utcoffset().total_seconds() == 0
        assert f["images"].chunks == (1, 3, 8, 8)
        assert "labels" not in f
    ds = open_dataset(tmp_path / "a.h5")
    assert ds.compute_fingerprint() == r1.fingerprint == ds.fingerprint
    # one changed pixel in one source image -> different fingerprint
    im = np.array(Image.open(folder / "img0.png"))
    im[0, 0, 0] ^= 0xFF
    Image.fromarray(im).save(folder / "img0.png")
    assert build_dataset(folder, tmp_path / "c.h5", 8, max_images=4).fingerprint != r1.fingerprint
    # same pixels, different count -> different fingerprint (shape is hashed)
    assert build_dataset(folder, tmp_path / "e.h5", 8, max_images=3).fingerprint != r1.fingerprint


def test_skip_and_png_export_match_the_hdf5_build(folder, tmp_path):
    """A held-out set: --skip leaves out the first K candidates; the PNG export holds exactly the pixels the
    HDF5 build stores, and running it again (after an interruption) rewrites nothing."""
    full, _, names = _read(build_dataset(folder, tmp_path / "all.h5", 8).out_path)
    # candidates in order: corrupt.png, img0, img1, img3, img4, img5, sub/img2, text.jpg; skip 3 -> from img1
    rep = build_dataset(folder, tmp_path / "tail.h5", 8, skip_images=3, max_images=3)
    tail, attrs, tail_names = _read(rep.out_path)
    assert tail_names == ["img3.png", "img4.png", "img5.png"] and attrs["skipped_first"] == 3
    np.testing.assert_array_equal(tail, full[2:5])
    exp = export_images(folder, tmp_path / "png", 8, skip_images=3, max_images=3)
    files = sorted((tmp_path / "png").iterdir())
    assert [f.name for f in files] == ["img3.png", "img4.png", "img5.png"] and exp.count == 3
    back = np.stack([np.array(Image.open(f)).transpose(2, 0, 1) for f in files])
    np.testing.assert_array_equal(back, tail)
    assert exp.fingerprint == rep.fingerprint
    mtimes = [f.stat().st_mtime_ns for f in files]
    export_images(folder, tmp_path / "png", 8, skip_images=3, max_images=3)
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "png").iterdir())] == mtimes
    grey = export_images(folder, tmp_path / "grey", 8, channels=1, skip_images=6)
    assert grey.count == 1 and Image.open(tmp_path / "grey" / "sub__img2.png").mode == "L"
    with pytest.raises(DatasetError, match="leaves nothing"):
        build_dataset(folder, tmp_path / "x.h5", 8, skip_images=8)
    with pytest.raises(DatasetError, match="skip_images"):
        export_images(folder, tmp_path / "y", 8, skip_images=-1)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        export_images(folder, tmp_path / "afile", 8)


def test_celeba_crop_geometry(tmp_path):
    assert celeba_crop_box(178, 218) == (0, 20, 178, 198)
    assert celeba_crop_box(89, 109) == (0, 10, 89, 99)
    # 178x218 black image: white band rows 0-19 and 198-217 (cropped away), red square in the crop's top-left quarter
    a = np.zeros((218, 178, 3), np.uint8)
    a[:20] = 255
    a[198:] = 255
    a[20:109, 0:89] = (255, 0, 0)  # exactly the top-left quarter of the 178x178 box
    out = prepare_image(Image.fromarray(a), 16, crop="celeba")
    assert out.shape == (3, 16, 16)
    red = out[0].astype(float)
    # away from the 1-pixel Lanczos transition at the edge, the red quarter is exactly the top-left 8x8
    assert red[:7, :7].min() >= 250 and red[9:, :].max() <= 5 and red[:, 9:].max() <= 5
    ys, xs = np.mgrid[:16, :16]
    assert abs((red * ys).sum() / red.sum() - 3.5) < 0.25 and abs((red * xs).sum() / red.sum() - 3.5) < 0.25
    assert out[1].max() <= 5  # no white band leaked in
    # for this size the centre square is the same box (rows 20..197)
    assert (prepare_image(Image.fromarray(a), 16, crop="center") == out).all()
    # 'none' needs square images; a non-square file is listed as failed
    src = tmp_path / "s"
    src.mkdir()
    Image.fromarray(a).save(src / "a.png")
    Image.fromarray(a[:178]).save(src / "b.png")
    rep = build_dataset(src, tmp_path / "n.h5", 16, crop="none")
    assert rep.count == 1 and rep.failed[0]["file"] == "a.png" and "not square" in rep.failed[0]["reason"]


def test_greyscale_rgba_and_channels(tmp_path):
    src = tmp_path / "g"
    src.mkdir()
    g = np.tile(np.arange(16, dtype=np.uint8)[None] * 16, (16, 1))
    Image.fromarray(g, "L").save(src / "grey.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    build_dataset(src, tmp_path / "rgb.h5", 16)
    x, at, names = _read(tmp_path / "rgb.h5")
    assert x.shape == (2, 3, 16, 16) and names == ["grey.png", "rgba.png"]
    assert (x[0, 0] == g).all() and (x[0, 1] == g).all() and (x[0, 2] == g).all()
    assert (x[1, :, :8] == np.array([200, 0, 0])[:, None, None]).all()
    assert (x[1, :, 8:] == 255).all()  # composited onto white
    build_dataset(src, tmp_path / "l.h5", 16, channels=1)
    y, at, _ = _read(tmp_path / "l.h5")
    assert y.shape == (2, 1, 16, 16) and at["channels"] == 1
    assert (y[0, 0] == g).all()
    assert open_dataset(tmp_path / "l.h5")[0].shape == (1, 16, 16)


def test_hdf5_source_recrop(folder, tmp_path):
    build_dataset(folder, tmp_path / "a.h5", 16)
    rep = build_dataset(tmp_path / "a.h5", tmp_path / "b.h5", 8)
    x, at, names = _read(tmp_path / "b.h5")
    assert rep.count == 6 and x.shape == (6, 3, 8, 8) and at["source_type"] == "hdf5"
    assert names[0] == "img0.png"
    assert [n for n, _ in iter_source_images(tmp_path / "a.h5")] == names


def test_atomic_write(folder, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    out.write_bytes(b"previous contents")
    real = dsmod._decode
    calls = {"n": 0}

    def flaky(data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a crash, not an unreadable file
        return real(data)

    monkeypatch.setattr(dsmod, "_decode", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(folder, out, 8)
    assert out.read_bytes() == b"previous contents"  # untouched
    assert not Path(str(out) + ".tmp").exists()
    monkeypatch.setattr(dsmod, "_decode", real)

    def progress(done, total):
        if done == 4:
            raise RuntimeError("disk full")

    out2 = tmp_path / "new.h5"
    with pytest.raises(RuntimeError):
        build_dataset(folder, out2, 8, progress=progress)
    assert not out2.exists() and not Path(str(out2) + ".tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "out.h5"]


def test_build_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        build_dataset(tmp_path / "nope", tmp_path / "o.h5", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        build_dataset(tmp_path / "empty", tmp_path / "o.h5", 8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable images"):
        build_dataset(bad, tmp_path / "o.h5", 8)
    Image.new("RGB", (8, 8)).save(bad / "y.png")
    for res in (48, 2, 0, 6):
        with pytest.raises(DatasetError, match="power of two"):
            build_dataset(bad, tmp_path / "o.h5", res)
    (tmp_path / "f.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unsupported source"):
        build_dataset(tmp_path / "f.txt", tmp_path / "o.h5", 8)
    with pytest.raises(DatasetError, match="crop"):
        build_dataset(bad, tmp_path / "o.h5", 8, crop="square")
    with pytest.raises(DatasetError, match="channels"):
        build_dataset(bad, tmp_path / "o.h5", 8, channels=4)
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.tmp").exists()
    assert issubclass(DatasetError, ValueError)


# ------------------------------------------------------------------------------------------------ streaming


@pytest.fixture
def h5(tmp_path):
    """An HDF5 dataset of 10 images 3x8x8 whose pixel [c, y, x] encodes (image, y, x) for easy checks."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        a = np.zeros((8, 8, 3), np.uint8)
        a[..., 0] = i * 20
        a[..., 1] = np.arange(8)[:, None] * 30
        a[..., 2] = np.arange(8)[None, :] * 30
        Image.fromarray(a).save(src / f"{i:02d}.png")
    build_dataset(src, tmp_path / "d.h5", 8)
    return tmp_path / "d.h5"


def test_hdf5_dataset_streams(h5, monkeypatch):
    ds = HDF5ImageDataset(h5)
    assert ds._file is None  # nothing opened until the first read
    assert len(ds) == 10 and ds.resolution == 8 and ds.channels == 3 and ds.attrs["count"] == 10
    assert ds.fingerprint == ds.attrs["fingerprint"]
    reads = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, sel, *a, **k):
        out = real_getitem(self, sel, *a, **k)
        reads.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    x = ds[7]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
    assert (x[0] == 140).all() and x[2, 0, 3] == 90
    assert reads == [3 * 8 * 8]  # one image read, not the whole dataset
    assert ds[-1][0, 0, 0] == 180
    with pytest.raises(IndexError):
        ds[10]
    reads.clear()
    b = ds.get_batch([5, 1, 5, 9])
    assert b.shape == (4, 3, 8, 8) and b[:, 0, 0, 0].tolist() == [100, 20, 100, 180]
    assert reads == [3 * 8 * 8, 3 * 8 * 8, 3 * 8 * 8]  # each of the 3 distinct images read once
    reads.clear()
    b = ds.get_batch([4, 2, 3, 2, 8])
    assert b[:, 0, 0, 0].tolist() == [80, 40, 60, 40, 160]
    assert reads == [3 * 3 * 8 * 8, 3 * 8 * 8]  # consecutive run 2..4 as one slice, then 8
    # picklable (spawned DataLoader workers) with no open handle carried over
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2._file is None and torch.equal(ds2[3], ds[3])
    ds.close()


def test_dataloader_workers(h5):
    ds = open_dataset(h5)
    ds[0]  # open a handle in the parent; forked workers must open their own
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    got = torch.cat(list(dl))
    assert got[:, 0, 0, 0].tolist() == [i * 20 for i in range(10)]


def test_xflip(h5):
    ds = HDF5ImageDataset(h5, xflip=True)
    assert len(ds) == 20 and ds.num_images == 10
    for i in (0, 4, 9):
        assert torch.equal(ds[i + 10], torch.flip(ds[i], dims=[2]))
    assert ds[13][2, 0, 0] == 7 * 30
    b = ds.get_batch([13, 3, 3, 19])
    assert (torch.equal(b[0], ds[13]) and torch.equal(b[1], ds[3]) and torch.equal(b[2], ds[3])
            and torch.equal(b[3], ds[19]))
    assert ds.name(13) == "03.png [xflip]" and ds.name(3) == "03.png"


def test_open_errors(tmp_path, folder):
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing.h5")
    with pytest.raises(DatasetError, match="stylegan dataset"):
        open_dataset(folder)
    with pytest.raises(DatasetError, match="stylegan dataset"):
        open_dataset(_zip_folder(folder, tmp_path / "z.zip"))
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="not an HDF5"):
        open_dataset(tmp_path / "x.h5")
    with h5py.File(tmp_path / "noimg.h5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(DatasetError, match="'images'"):
        open_dataset(tmp_path / "noimg.h5")
    with h5py.File(tmp_path / "rect.h5", "w") as f:
        f["images"] = np.zeros((2, 3, 8, 16), np.uint8)
    with pytest.raises(DatasetError, match="not square"):
        open_dataset(tmp_path / "rect.h5")
    with h5py.File(tmp_path / "npot.h5", "w") as f:
        f["images"] = np.zeros((2, 3, 12, 12), np.uint8)
    with pytest.raises(DatasetError, match="power of two"):
        open_dataset(tmp_path / "npot.h5")


# ------------------------------------------------------------------------------------------------ sampling


def test_sampler_sharding_disjoint():
    n = 11
    s0, s1 = InfiniteSampler(n, 0, 2, seed=3), InfiniteSampler(n, 1, 2, seed=3)
    e0, e1 = s0.take(6), s1.take(5)  # epoch 0 of each rank
    assert not set(e0) & set(e1) and sorted(np.concatenate([e0, e1])) == list(range(n))
    assert s0.state_dict()["epoch"] == 1 and s1.state_dict()["epoch"] == 1
    # the next epoch is reshuffled, and still disjoint
    f0, f1 = s0.take(6), s1.take(5)
    assert not set(f0) & set(f1) and sorted(np.concatenate([f0, f1])) == list(range(n))
    assert list(f0) != list(e0)
    # iteration protocol and determinism
    it = iter(InfiniteSampler(n, 0, 2, seed=3))
    assert [next(it) for _ in range(12)] == list(e0) + list(f0)
    assert list(InfiniteSampler(n, 0, 1, seed=4).take(n)) != list(InfiniteSampler(n, 0, 1, seed=3).take(n))
    assert list(InfiniteSampler(5, shuffle=False).take(7)) == [0, 1, 2, 3, 4, 0, 1]
    with pytest.raises(ValueError):
        InfiniteSampler(1, 1, 2)


def test_sampler_resume():
    s = InfiniteSampler(7, seed=9)
    s.take(10)
    state = s.state_dict()
    assert {"seed", "epoch", "pos"} <= set(state) and (state["epoch"], state["pos"]) == (1, 3)
    expect = s.take(20)
    r = InfiniteSampler(7, seed=0)
    r.load_state_dict(state)
    assert list(r.take(20)) == list(expect)
    with pytest.raises(ValueError):
        InfiniteSampler(8).load_state_dict(state)


def test_batch_stream_resume(h5):
    ds = open_dataset(h5, xflip=True)
    stream = BatchStream(ds, batch_size=6, seed=5)
    first = next(stream)
    assert first.dtype == torch.float32 and first.shape == (6, 3, 8, 8)
    u = stream.dataset.get_batch(InfiniteSampler(20, seed=5).take(6))
    torch.testing.assert_close(first, u.float() / 127.5 - 1)
    for _ in range(3):
        next(stream)  # crosses an epoch boundary (20 items, 6 per batch)
    state = stream.state_dict()
    expect = [next(stream) for _ in range(5)]
    # fresh objects (as after a restart) restored from a serialised state
    restored = BatchStream(open_dataset(h5, xflip=True), batch_size=6, seed=123)
    restored.load_state_dict(json.loads(json.dumps(state)))
    for e in expect:
        assert torch.equal(next(restored), e)
    assert restored.batches == stream.batches == 9


def test_batch_stream_rejects_other_dataset(h5, folder, tmp_path):
    build_dataset(folder, tmp_path / "other.h5", 8)
    state = BatchStream(open_dataset(h5), 2).state_dict()
    other = BatchStream(open_dataset(tmp_path / "other.h5"), 2)
    with pytest.raises(DatasetError, match="resume"):
        other.load_state_dict(state)
