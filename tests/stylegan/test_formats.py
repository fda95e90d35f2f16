"""Model files: our format, NVIDIA network pickles (allow-list unpickler), rosinality checkpoints, bad files."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stylegan.config import DiscriminatorConfig, GeneratorConfig
from stylegan.discriminator import Discriminator
from stylegan.formats import (
    LoadedModel,
    ModelFormatError,
    convert,
    detect_format,
    load_generator,
    load_model,
    read_network_file,
    save_network,
    weights_sha256,
)
from stylegan.formats.base import fir_kernel
from stylegan.formats.nvidia import (
    discriminator_name_map,
    flatten_module,
    generator_name_map,
    load_nvidia_pickle,
    unpickle_nvidia,
)
from stylegan.formats.rosinality import find_channel_params, ours_to_rosinality
from stylegan.generator import Generator
from stylegan.util.files import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_text, sha256_file
from tests.conftest import shared_file

TINY = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)
TINY_D = DiscriminatorConfig(img_resolution=16, channel_base=128, channel_max=16)


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer visible random values (biases and strengths start at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("resample_filter"):
                continue
            t.add_(torch.randn(t.shape, generator=gen) * 0.2)
    return module.eval()


def _tiny_generator(seed: int = 0, config: GeneratorConfig = TINY) -> Generator:
    torch.manual_seed(seed)
    return _randomise(Generator(config), seed)


def _synth(G: Generator, seed: int = 1, n: int = 2) -> torch.Tensor:
    ws = torch.randn([n, G.num_ws, G.w_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.synthesis(ws, noise_mode="const")


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ----------------------------------------------------------------------------------------------------------------
# fileio


def test_atomic_writes_and_sha256(tmp_path):
    p = atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01abc")
    assert p.read_bytes() == b"\x00\x01abc"
    atomic_write_text(tmp_path / "t.txt", "h\u00e9llo\r\nworld")
    assert (tmp_path / "t.txt").read_bytes() == "h\u00e9llo\r\nworld".encode("utf-8")
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "x.pt")
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["x"], torch.arange(3))
    assert sha256_file(p) == hashlib.sha256(b"\x00\x01abc").hexdigest()
    big = os.urandom(3 * (1 << 20) + 17)
    atomic_write_bytes(tmp_path / "big", big)
    assert sha256_file(tmp_path / "big") == hashlib.sha256(big).hexdigest()
    # a failure part-way keeps the old content and leaves no temporary file
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "a.bin") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"\x00\x01abc"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin", "big", "t.txt", "x.pt"]
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Our format


def test_ours_round_trip_with_metadata(tmp_path):
    G_ema = _tiny_generator(0)
    G = _tiny_generator(1)
    D = _randomise(Discriminator(TINY_D), 2)
    training_state = {"G_opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
                                "param_groups": [{"lr": 0.002, "betas": [0.0, 0.99], "params": [0]}]},
                      "cur_nimg": 12000, "pl_mean": torch.tensor(0.25), "done": False, "note": None}
    calibration = {"threshold": 0.125, "fpr": 0.01, "n": 200}
    path = save_network(tmp_path / "net.pt", G_ema, G=G, D=D, training_state=training_state,
                        calibration=calibration,
                        metadata={"training": {"kimg": 12.0}, "dataset_fingerprint": "abc123",
                                  "source": {"note": "trained here"}})
    # plain data only: loadable with weights_only=True
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "stylegan-forensics" and raw["format_version"] == 1 and raw["arch"] == "stylegan2"
    assert raw["G_config"] == TINY.to_dict() and raw["D_config"] == TINY_D.to_dict()
    meta = raw["metadata"]
    created = dt.datetime.fromisoformat(meta["created"].replace("Z", "+00:00"))
    assert created.utcoffset() == dt.timedelta(0)
    try:
        installed = version("stylegan-forensics")
    except PackageNotFoundError:
        installed = "unknown"
    assert meta["tool_version"] == installed
    assert meta["training"] == {"kimg": 12.0} and meta["dataset_fingerprint"] == "abc123"
    assert meta["source"] == {"note": "trained here"}
    assert meta["weights_sha256"] == weights_sha256(G_ema.state_dict())
    assert read_network_file(path)["metadata"] == meta

    assert detect_format(path) == "ours"
    m = load_model(path, with_training=True)
    assert isinstance(m, LoadedModel) and m.source_format == "ours" and m.arch == "stylegan2"
    assert m.file_sha256 == sha256_file(path) and m.calibration == calibration and m.metadata == meta
    assert not m.G_ema.training and not any(p.requires_grad for p in m.G_ema.parameters())
    assert torch.equal(_synth(m.G_ema), _synth(G_ema))
    assert torch.equal(_synth(m.G), _synth(G))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.D(x), D(x))
    assert m.training_state["cur_nimg"] == 12000
    assert torch.equal(m.training_state["G_opt"]["state"][0]["exp_avg"], training_state["G_opt"]["state"][0]["exp_avg"])
    # without with_training only G_ema; loading leaves the global RNG alone
    torch.manual_seed(123)
    m2 = load_model(path)
    after = torch.randn(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.randn(3))
    assert m2.G is None and m2.D is None and m2.training_state is None
    assert torch.equal(_synth(load_generator(path)), _synth(G_ema))


def test_weights_sha256_definition():
    sd = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2)}
    h = weights_sha256(sd)
    assert h == weights_sha256(dict(reversed(list(sd.items()))))  # key order does not matter
    assert h != weights_sha256({"b": sd["b"].double(), "a": sd["a"]})  # dtype matters
    assert h != weights_sha256({"b": sd["b"], "a": sd["a"].reshape(4)})  # shape matters
    assert h != weights_sha256({"c": sd["b"], "a": sd["a"]})  # names matter
    assert h == weights_sha256({"b": sd["b"].clone(), "a": sd["a"].t().t()})


def test_ours_refuses_tampering_and_foreign_versions(tmp_path):
    G = _tiny_generator(0)
    path = save_network(tmp_path / "net.pt", G)
    obj = torch.load(path, weights_only=True)

    def write(name, mutate):
        o = copy.deepcopy(obj)
        mutate(o)
        p = tmp_path / name
        torch.save(o, p)
        return p

    p = write("tampered.pt", lambda o: o["G_ema"]["synthesis.b4.const"].add_(1e-3))
    with pytest.raises(ModelFormatError, match="weights_sha256 mismatch") as e:
        load_model(p)
    _one_line(e)
    with pytest.raises(ModelFormatError, match="weights_sha256 mismatch"):
        read_network_file(p)
    p = write("newer.pt", lambda o: o.update(format_version=2))
    with pytest.raises(ModelFormatError, match="newer version"):
        load_model(p)
    p = write("older.pt", lambda o: o.update(format_version=0))
    with pytest.raises(ModelFormatError, match="format_version"):
        read_network_file(p)
    p = write("foreign.pt", lambda o: o.update(format="something-else"))
    with pytest.raises(ModelFormatError, match="not a stylegan-forensics model file"):
        load_model(p)
    p = write("arch.pt", lambda o: o.update(arch="stylegan9"))
    with pytest.raises(ModelFormatError, match="unknown network architecture"):
        load_model(p)
    p = write("nohash.pt", lambda o: o["metadata"].pop("weights_sha256"))
    with pytest.raises(ModelFormatError, match="weights_sha256 missing"):
        load_model(p)
    # a torch file that is none of our formats
    torch.save({"model": G.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ModelFormatError, match="not a supported model file"):
        detect_format(tmp_path / "other.pt")


def test_save_network_refuses_non_plain_data(tmp_path):
    G = _tiny_generator(0)
    with pytest.raises(ValueError, match="training_state"):
        save_network(tmp_path / "x.pt", G, training_state={"bad": {1, 2}})
    with pytest.raises(ValueError, match="metadata"):
        save_network(tmp_path / "x.pt", G, metadata={"training": {"when": dt.datetime.now()}})
    with pytest.raises(ValueError, match="set by save_network"):
        save_network(tmp_path / "x.pt", G, metadata={"weights_sha256": "0" * 64})
    assert not (tmp_path / "x.pt").exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# NVIDIA network pickles: the shared parity file


@pytest.fixture(scope="module")
def ada32():
    pkl = shared_file("parity/ada32_nosrc.pkl")
    g = torch.load(shared_file("parity/ada32_G.pt"), weights_only=True)
    d = torch.load(shared_file("parity/ada32_D.pt"), weights_only=True)
    return SimpleNamespace(pkl=pkl, g=g, d=d, raw=unpickle_nvidia(pkl), nets=load_nvidia_pickle(pkl))


def _is_filter(k: str) -> bool:
    return k.endswith("resample_filter")


def test_nvidia_parity_pickle_state_dicts(ada32):
    nets, g, d = ada32.nets, ada32.g, ada32.d
    for ours, ref in ((nets.G_ema_state, g["G_state_dict"]), (nets.G_state, g["G_state_dict"]),
                      (nets.D_state, d["D_state_dict"])):
        expected = OrderedDict((k, v) for k, v in ref.items() if not _is_filter(k))
        assert list(ours) == list(expected)
        for k, v in expected.items():
            assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k
        for k, v in ref.items():
            if _is_filter(k):
                assert torch.equal(v, fir_kernel())
    # the raw flattening is bit-identical to NVIDIA's own state_dict (filters included, same order)
    for key, ref in (("G_ema", g["G_state_dict"]), ("G", g["G_state_dict"]), ("D", d["D_state_dict"])):
        flat = flatten_module(ada32.raw[key])
        assert list(flat) == list(ref) and all(torch.equal(flat[k], ref[k]) for k in ref)
    # the name map covers every tensor in both directions
    for name_map, ours_cfg_net, ref in ((generator_name_map(nets.G_ema_config), Generator(nets.G_ema_config),
                                         g["G_state_dict"]),
                                        (discriminator_name_map(nets.D_config), Discriminator(nets.D_config),
                                         d["D_state_dict"])):
        assert set(name_map) == set(ours_cfg_net.state_dict())
        assert set(name_map.values()) == {k for k in ref if not _is_filter(k)}
    assert nets.G_ema_config == GeneratorConfig(img_resolution=32, channel_base=16384, channel_max=128)
    assert nets.D_config == DiscriminatorConfig(img_resolution=32, channel_base=16384, channel_max=128)


def test_nvidia_parity_pickle_reproduces_images(ada32):
    G = Generator(ada32.nets.G_ema_config)
    G.load_state_dict(ada32.nets.G_ema_state)
    G.eval()
    ref = ada32.g["a_img"]
    with torch.no_grad():
        img = G.synthesis(ada32.g["a_ws"], noise_mode="const")
    torch.testing.assert_close(img, ref, rtol=1e-4, atol=2e-5 * ref.abs().max().item())


def test_nvidia_parity_pickle_through_load_model(ada32):
    m = load_model(ada32.pkl)
    assert m.source_format == "nvidia-pkl" and m.G is None and m.D is None and m.arch == "stylegan2"
    assert m.metadata["source"]["format"] == "nvidia-pkl" and m.file_sha256 == sha256_file(ada32.pkl)
    with torch.no_grad():
        ws = m.G_ema.mapping(ada32.g["a_z"])
    ref = ada32.g["a_ws"]
    torch.testing.assert_close(ws, ref, rtol=1e-4, atol=2e-5 * ref.abs().max().item())


# ----------------------------------------------------------------------------------------------------------------
# Synthesised NVIDIA pickles


@pytest.fixture
def fake_nvidia(monkeypatch):
    """Stand-ins for NVIDIA's ``torch_utils.persistence`` and ``dnnlib.util`` so that the test can *write*
    pickles with the structure of NVIDIA's (README §6). The loader must never call them."""
    calls = []

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - must not be reached
        calls.append(meta)
        raise AssertionError("the loader called the real persistence hook")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = EasyDict.__name__ = "EasyDict"
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    for name, mod in (("torch_utils", torch_utils), ("torch_utils.persistence", persistence), ("dnnlib", dnnlib),
                      ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)

    class Persistent:
        def __init__(self, meta):
            self.meta = meta

        def __reduce__(self):
            return _reconstruct_persistent_obj, (self.meta,)

    ada_class = {"ToRGB": "ToRGBLayer"}

    def tree(module, init_kwargs=None, module_src="# source removed", extra_state=None):
        buffers = OrderedDict()
        for n, b in module._buffers.items():
            buffers[n] = fir_kernel() if n == "resample_filter" else b.detach().clone()
        state = {
            "training": False,
            "_parameters": OrderedDict((n, p) for n, p in module._parameters.items()),
            "_buffers": buffers,
            "_non_persistent_buffers_set": set(),
            "_backward_pre_hooks": OrderedDict(), "_backward_hooks": OrderedDict(),
            "_is_full_backward_hook": None, "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict((n, tree(c)) for n, c in module._modules.items()),
            "weight_gain": np.float64(0.125), "act_gain": np.float32(1.5),
            "_init_args": (), "_init_kwargs": EasyDict(init_kwargs or {}),
        }
        state.update(extra_state or {})
        name = type(module).__name__
        return Persistent(dict(type="class", version=6, module_src=module_src,
                               class_name=ada_class.get(name, name), state=state))

    def g_kwargs(cfg, minimal=False):
        kw = EasyDict(z_dim=cfg.z_dim, w_dim=cfg.w_dim)
        if not minimal:
            kw["mapping_kwargs"] = EasyDict(num_layers=cfg.mapping_layers,
                                            lr_multiplier=cfg.mapping_lr_multiplier, w_avg_beta=cfg.w_avg_beta)
            syn = EasyDict(channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=2,
                           conv_clamp=cfg.conv_clamp)
            if cfg.architecture != "skip":
                syn["architecture"] = cfg.architecture
            kw["synthesis_kwargs"] = syn
        kw.update(c_dim=0, img_resolution=cfg.img_resolution, img_channels=cfg.img_channels)
        return kw

    def d_kwargs(cfg, minimal=False):
        kw = EasyDict()
        if minimal:  # only the channel counts (kept small), architecture and minibatch-std from the defaults
            kw.update(channel_base=cfg.channel_base, channel_max=cfg.channel_max)
        else:
            kw.update(block_kwargs=EasyDict(), mapping_kwargs=EasyDict(),
                      epilogue_kwargs=EasyDict(mbstd_group_size=cfg.mbstd_group_size,
                                               mbstd_num_channels=cfg.mbstd_num_channels),
                      channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=2,
                      conv_clamp=cfg.conv_clamp, architecture=cfg.architecture)
        kw.update(c_dim=0, img_resolution=cfg.img_resolution, img_channels=cfg.img_channels)
        return kw

    def snapshot(G_ema, G=None, D=None, protocol=4, minimal=False, g_extra=None, module_src="# source removed"):
        g_ema = tree(G_ema, g_kwargs(G_ema.config, minimal), module_src=module_src, extra_state=g_extra)
        data = {
            "training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", path="faces.zip",
                                            use_labels=False, max_size=1000, xflip=False, resolution=16),
            "G": tree(G, g_kwargs(G.config, minimal)) if G is not None else g_ema,
            "D": tree(D, d_kwargs(D.config, minimal)) if D is not None else None,
            "G_ema": g_ema,
            "augment_pipe": None,
        }
        return pickle.dumps(data, protocol=protocol)

    yield SimpleNamespace(snapshot=snapshot, tree=tree, EasyDict=EasyDict, g_kwargs=g_kwargs, calls=calls)
    assert not calls


NVIDIA_CASES = {
    # 16 px, conv_clamp set, G differs from G_ema, protocol 4 (sets as EMPTY_SET)
    "res16-clamp-p4": dict(protocol=4, minimal=False,
                           g_cfg=GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2,
                                                 channel_base=128, channel_max=16, conv_clamp=256.0),
                           d_cfg=DiscriminatorConfig(img_resolution=16, channel_base=128, channel_max=16,
                                                     conv_clamp=256.0)),
    # protocol 3 (sets written as builtins.set), only the required kwargs: NVIDIA's defaults must apply
    "defaults-p3": dict(protocol=3, minimal=True, g_cfg=GeneratorConfig(z_dim=32, w_dim=32, img_resolution=8),
                        d_cfg=DiscriminatorConfig(img_resolution=8, channel_base=256, channel_max=32)),
    # other options recorded in the kwargs: 'resnet' G, mapping lr / beta, 'skip' D with 2 mbstd channels
    "options-p4": dict(protocol=4, minimal=False,
                       g_cfg=GeneratorConfig(z_dim=24, w_dim=16, img_resolution=16, mapping_layers=3,
                                             mapping_lr_multiplier=0.1, w_avg_beta=0.99, channel_base=64,
                                             channel_max=8, architecture="resnet"),
                       d_cfg=DiscriminatorConfig(img_resolution=16, channel_base=64, channel_max=8,
                                                 architecture="skip", mbstd_group_size=2, mbstd_num_channels=2)),
}


@pytest.mark.parametrize("case", list(NVIDIA_CASES))
def test_nvidia_synthesised_pickles(case, fake_nvidia, tmp_path):
    spec = NVIDIA_CASES[case]
    G_ema = _tiny_generator(0, spec["g_cfg"])
    G = _randomise(copy.deepcopy(G_ema), 5)  # the training generator differs
    D = _randomise(Discriminator(spec["d_cfg"]), 3)
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(fake_nvidia.snapshot(G_ema, G=G, D=D, protocol=spec["protocol"], minimal=spec["minimal"]))
    assert detect_format(path) == "nvidia-pkl"

    m = load_model(path, with_training=True)
    expected_g = GeneratorConfig(**{**spec["g_cfg"].to_dict(), "num_fp16_res": 0 if spec["minimal"] else 2})
    assert m.G_ema.config == expected_g
    assert m.D.config == DiscriminatorConfig(**{**spec["d_cfg"].to_dict(), "num_fp16_res": 0 if spec["minimal"] else 2})
    ref_ema, ref_g = _synth(G_ema, n=1), _synth(G, n=1)
    assert not torch.equal(ref_ema, ref_g)
    assert torch.equal(_synth(m.G_ema, n=1), ref_ema)  # G_ema, not G
    assert torch.equal(_synth(m.G, n=1), ref_g)
    x = torch.randn(2, 3, spec["d_cfg"].img_resolution, spec["d_cfg"].img_resolution)
    with torch.no_grad():
        assert torch.equal(m.D(x), D(x))
    z = torch.randn(3, G_ema.z_dim)
    with torch.no_grad():
        assert torch.equal(m.G_ema.mapping(z, truncation_psi=0.7), G_ema.mapping(z, truncation_psi=0.7))
    assert m.metadata["nvidia"]["training_set_kwargs"]["path"] == "faces.zip"
    assert load_generator(path).config == expected_g


def test_nvidia_g_is_g_ema_memo_and_missing_networks(fake_nvidia, tmp_path):
    G_ema = _tiny_generator(0)
    path = tmp_path / "a.pkl"
    path.write_bytes(fake_nvidia.snapshot(G_ema))  # G is the same object as G_ema, D is None
    m = load_model(path, with_training=True)
    assert m.D is None and torch.equal(_synth(m.G), _synth(m.G_ema))


def test_nvidia_stylegan3_repository_layout(fake_nvidia, tmp_path):
    """NVIDIA's stylegan3 repository trains StyleGAN2 too; its G takes the synthesis options at the top level."""
    cfg = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=128,
                          channel_max=16, conv_clamp=256.0)
    G_ema = _tiny_generator(0, cfg)
    kw = fake_nvidia.EasyDict(z_dim=32, w_dim=32, mapping_kwargs=fake_nvidia.EasyDict(num_layers=2),
                              channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=256,
                              fused_modconv_default="inference_only", c_dim=0, img_resolution=16, img_channels=3)
    tree = fake_nvidia.tree(G_ema, kw)
    path = tmp_path / "sg3repo.pkl"
    path.write_bytes(pickle.dumps({"G": tree, "D": None, "G_ema": tree, "augment_pipe": None}, protocol=4))
    G = load_generator(path)
    assert G.config == cfg and torch.equal(_synth(G), _synth(G_ema))


def test_nvidia_conv_clamp_changes_output(fake_nvidia, tmp_path):
    """The clamp recorded in the pickle is applied: a tiny clamp must change the image."""
    cfg = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=128,
                          channel_max=16, conv_clamp=0.05)
    G_ema = _tiny_generator(0, cfg)
    path = tmp_path / "clamp.pkl"
    path.write_bytes(fake_nvidia.snapshot(G_ema))
    G = load_generator(path)
    assert G.config.conv_clamp == 0.05
    unclamped = Generator(GeneratorConfig(**{**cfg.to_dict(), "conv_clamp": None}))
    unclamped.load_state_dict(G_ema.state_dict())
    assert torch.equal(_synth(G), _synth(G_ema)) and not torch.allclose(_synth(G), _synth(unclamped.eval()))


def test_nvidia_refuses_unmapped_and_bad_filters(fake_nvidia, tmp_path):
    G_ema = _tiny_generator(0)

    def write(mutate, name):
        tree = fake_nvidia.tree(G_ema, fake_nvidia.g_kwargs(G_ema.config))
        mutate(tree.meta["state"])
        p = tmp_path / name
        p.write_bytes(pickle.dumps({"G": None, "D": None, "G_ema": tree, "augment_pipe": None}, protocol=4))
        return p

    def synthesis_b8(state):
        return state["_modules"]["synthesis"].meta["state"]["_modules"]["b8"].meta["state"]

    p = write(lambda s: s["_buffers"].__setitem__("extra_tensor", torch.zeros(3)), "extra.pkl")
    with pytest.raises(ModelFormatError, match="no counterpart.*extra_tensor") as e:
        load_model(p)
    _one_line(e)
    p = write(lambda s: synthesis_b8(s)["_modules"]["conv0"].meta["state"]["_buffers"].pop("noise_const"),
              "missing.pkl")
    with pytest.raises(ModelFormatError, match="missing from the file.*synthesis.b8.conv0.noise_const"):
        load_model(p)
    p = write(lambda s: synthesis_b8(s)["_buffers"].__setitem__("resample_filter", torch.ones(4, 4) / 16),
              "filter.pkl")
    with pytest.raises(ModelFormatError, match="synthesis.b8.resample_filter.*FIR kernel"):
        load_model(p)
    p = write(lambda s: s["_init_kwargs"].__setitem__("c_dim", 10), "cond.pkl")
    with pytest.raises(ModelFormatError, match=r"conditional networks \(c_dim=10\) are not supported"):
        load_model(p)
    p = write(lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__("channel_max", 8), "shape.pkl")
    with pytest.raises(ModelFormatError, match="shape"):
        load_model(p)
    p = write(lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__("magnitude_ema_beta", 0.9), "opt.pkl")
    with pytest.raises(ModelFormatError, match="unsupported constructor options.*magnitude_ema_beta"):
        load_model(p)
    no_gema = tmp_path / "no_gema.pkl"
    no_gema.write_bytes(pickle.dumps({"G": None, "D": None}, protocol=4))
    with pytest.raises(ModelFormatError, match="no G_ema"):
        load_model(no_gema)


# ----------------------------------------------------------------------------------------------------------------
# Security: nothing in a pickle is executed


def _call_pickle(module: str, name: str, *args: str) -> bytes:
    """A protocol-2 pickle whose only content is ``module.name(*args)``."""
    out = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"("
    for a in args:
        data = a.encode()
        out += b"X" + struct.pack("<I", len(data)) + data
    return out + b"tR."


@pytest.mark.parametrize("module,name,kind", [("os", "system", "shell"), ("posix", "system", "shell"),
                                              ("builtins", "open", "open"), ("io", "open", "open"),
                                              ("builtins", "exec", "code"), ("builtins", "eval", "code"),
                                              ("subprocess", "Popen", "argv"), ("pathlib", "Path", "path")])
def test_pickle_payloads_are_refused(module, name, kind, tmp_path):
    marker = tmp_path / "pwned"
    args = {"shell": (f"touch {marker}",), "open": (str(marker), "w"),
            "code": (f"open({str(marker)!r}, 'w').close()",), "argv": ("touch", str(marker)),
            "path": (str(marker),)}[kind]
    path = tmp_path / "evil.pkl"
    path.write_bytes(_call_pickle(module, name, *args))
    with pytest.raises(ModelFormatError, match=rf"refused: the pickle references {module}\.{name}, which is not on "
                                               rf"the allow-list") as e:
        load_model(path)
    _one_line(e)
    with pytest.raises(ModelFormatError, match=rf"{module}\.{name}"):
        unpickle_nvidia(path.read_bytes())
    assert not marker.exists()


def test_payload_hidden_in_a_valid_nvidia_structure(fake_nvidia, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    G_ema = _tiny_generator(0)
    # deep inside the module tree, after many valid objects; and malicious module_src that must not run
    path = tmp_path / "evil.pkl"
    path.write_bytes(fake_nvidia.snapshot(G_ema, g_extra={"magnitude": [1, 2, {"x": Evil()}]},
                                          module_src=f"open({str(marker)!r}, 'w').close()"))
    with pytest.raises(ModelFormatError, match=rf"refused: the pickle references {os.system.__module__}\.system"):
        load_model(path)
    assert not marker.exists()
    # the same structure without the payload loads, and its module_src is never executed
    path.write_bytes(fake_nvidia.snapshot(G_ema, module_src=f"open({str(marker)!r}, 'w').close()"))
    assert torch.equal(_synth(load_generator(path)), _synth(G_ema))
    assert not marker.exists()


def test_persistent_ids_and_evil_torch_files_are_refused(tmp_path):
    p = tmp_path / "persid.pkl"
    p.write_bytes(b"\x80\x02Pabc\n.")
    with pytest.raises(ModelFormatError, match="persistent IDs"):
        load_model(p)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    G = _tiny_generator(0)
    sd, latent_avg = ours_to_rosinality(G)
    torch.save({"g_ema": sd, "latent_avg": latent_avg, "evil": Evil()}, tmp_path / "evil_rosinality.pt")
    with pytest.raises(ModelFormatError, match="refused or unreadable") as e:
        load_model(tmp_path / "evil_rosinality.pt")
    _one_line(e)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# rosinality


def test_rosinality_round_trip(tmp_path):
    G = _tiny_generator(0)
    G_train = _tiny_generator(7)
    sd, latent_avg = ours_to_rosinality(G)
    assert sd["convs.0.conv.weight"].shape == (1, 16, 16, 3, 3) and sd["to_rgb1.bias"].shape == (1, 3, 1, 1)
    assert sd["noises.noise_4"].shape == (1, 1, 16, 16) and sd["conv1.noise.weight"].shape == (1,)
    g_sd, _ = ours_to_rosinality(G_train)
    args = argparse.Namespace(size=16, latent=32, n_mlp=2, channel_multiplier=2, lr_mlp=0.01, path="lmdb/",
                              iter=800000, r1=10.0, augment=False)
    ckpt = {"g": g_sd, "d": {"convs.0.0.weight": torch.randn(16, 3, 1, 1)}, "g_ema": sd, "latent_avg": latent_avg,
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]}, "args": args,
            "ada_aug_p": 0.0}
    path = tmp_path / "550000.pt"
    torch.save(ckpt, path)
    assert detect_format(path) == "rosinality"
    m = load_model(path, with_training=True)
    assert m.source_format == "rosinality" and m.D is None
    assert m.G_ema.config == TINY
    assert torch.equal(_synth(m.G_ema), _synth(G)) and torch.equal(_synth(m.G), _synth(G_train))
    assert torch.equal(m.G_ema.mapping.w_avg, G.mapping.w_avg)
    z = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(m.G_ema(z, truncation_psi=0.5, noise_mode="const"),
                           G(z, truncation_psi=0.5, noise_mode="const"))
    assert m.metadata["rosinality"]["args"]["channel_multiplier"] == 2
    # the inverse of the loaded network is the checkpoint again
    back, back_avg = ours_to_rosinality(m.G_ema)
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert torch.equal(back_avg, latent_avg)


def test_rosinality_checkpoint_variants(tmp_path):
    G = _tiny_generator(0)
    sd, latent_avg = ours_to_rosinality(G)
    # no latent_avg and no args: w_avg is estimated from the mapping
    torch.save({"g_ema": sd}, tmp_path / "bare.pt")
    m = load_model(tmp_path / "bare.pt")
    assert torch.equal(_synth(m.G_ema), _synth(G))
    with torch.no_grad():
        est = G.mapping(torch.randn([4096, 32], generator=torch.Generator().manual_seed(0)))[:, 0].mean(0)
    torch.testing.assert_close(m.G_ema.mapping.w_avg, est)
    assert "estimated" in m.metadata["rosinality"]["w_avg"]
    # an extra or a missing tensor is refused
    torch.save({"g_ema": {**sd, "mystery.weight": torch.zeros(2)}, "latent_avg": latent_avg}, tmp_path / "x.pt")
    with pytest.raises(ModelFormatError, match="no counterpart.*mystery.weight"):
        load_model(tmp_path / "x.pt")
    torch.save({"g_ema": {k: v for k, v in sd.items() if k != "convs.1.noise.weight"}}, tmp_path / "y.pt")
    with pytest.raises(ModelFormatError, match="missing.*convs.1.noise.weight"):
        load_model(tmp_path / "y.pt")
    bad = dict(sd)
    bad["to_rgbs.0.upsample.kernel"] = fir_kernel(1.0)
    torch.save({"g_ema": bad}, tmp_path / "z.pt")
    with pytest.raises(ModelFormatError, match="to_rgbs.0.upsample.kernel"):
        load_model(tmp_path / "z.pt")


def test_find_channel_params():
    def rosinality_channels(cm, size):
        ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
              1024: 16 * cm}
        return {r: c for r, c in ch.items() if r <= size}

    assert find_channel_params(rosinality_channels(2, 1024)) == (32768, 512)
    assert find_channel_params(rosinality_channels(1, 256)) == (16384, 512)
    assert find_channel_params(rosinality_channels(2, 32), preferred=[32768]) == (32768, 512)
    assert find_channel_params(rosinality_channels(4, 256)) is None
    assert find_channel_params({4: 16, 8: 16, 16: 8}) == (128, 16)
    for base, cmax in ((16384, 128), (128, 16), (1000, 100)):
        ch = {r: min(base // r, cmax) for r in (4, 8, 16, 32, 64)}
        found = find_channel_params(ch)
        assert found is not None and all(min(found[0] // r, found[1]) == c for r, c in ch.items())


# ----------------------------------------------------------------------------------------------------------------
# convert


def test_convert_records_the_source(fake_nvidia, tmp_path):
    G_ema = _tiny_generator(0)
    D = _randomise(Discriminator(TINY_D), 3)
    src = tmp_path / "snap.pkl"
    src.write_bytes(fake_nvidia.snapshot(G_ema, D=D))
    out = convert(src, tmp_path / "snap.pt")
    assert detect_format(out) == "ours"
    m = load_model(out, with_training=True)
    assert m.metadata["source"] == {"file_name": "snap.pkl", "format": "nvidia-pkl", "sha256": sha256_file(src)}
    assert torch.equal(_synth(m.G_ema), _synth(G_ema))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(m.D(x), D(x))  # the discriminator came along, weights and all
    # G_ema only: the same generator, no training networks, a smaller file
    small = convert(src, tmp_path / "snap-g.pt", g_ema_only=True)
    m_small = load_model(small, with_training=True)
    assert torch.equal(_synth(m_small.G_ema), _synth(G_ema)) and m_small.D is None and m_small.G is None
    assert m_small.training_state is None and small.stat().st_size < out.stat().st_size
    # rosinality -> ours -> ours
    sd, latent_avg = ours_to_rosinality(G_ema)
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, tmp_path / "r.pt")
    out2 = convert(tmp_path / "r.pt", tmp_path / "r_ours.pt")
    out3 = convert(out2, tmp_path / "r_ours2.pt")
    m3 = load_model(out3)
    assert m3.metadata["source"]["format"] == "ours"
    assert m3.metadata["source"]["original"]["format"] == "rosinality"
    assert torch.equal(_synth(m3.G_ema), _synth(G_ema))


# ----------------------------------------------------------------------------------------------------------------
# Bad files


def _bad_files(tmp_path: Path) -> dict:
    G = _tiny_generator(0)
    good_pt = save_network(tmp_path / "good.pt", G)
    sd, latent_avg = ours_to_rosinality(G)
    legacy = io.BytesIO()
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "empty": b"",
        "truncated-pt": good_pt.read_bytes()[: good_pt.stat().st_size // 2],
        "truncated-legacy-pt": legacy.getvalue()[: len(legacy.getvalue()) // 2],
        "truncated-pickle": pickle.dumps({"G_ema": {"a": list(range(1000))}}, protocol=4)[:300],
        "random": np.random.RandomState(0).bytes(4096),
        "random-after-pickle-header": b"\x80\x04" + np.random.RandomState(1).bytes(4096),
        "text": "just some text\nnot a model\n".encode(),
        "zip-without-torch": None,
        "pickle-of-a-list": pickle.dumps([1, 2, 3], protocol=4),
    }
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name}.bin"
        if name == "zip-without-torch":
            with zipfile.ZipFile(p, "w") as zf:
                zf.writestr("readme.txt", "hello")
        else:
            p.write_bytes(data)
        out[name] = p
    (tmp_path / "a_directory").mkdir()
    out["directory"] = tmp_path / "a_directory"
    out["missing"] = tmp_path / "does_not_exist.pt"
    return out


def test_bad_files_fail_cleanly(tmp_path):
    expected = {"empty": "is empty", "directory": "is a directory", "missing": "not found",
                "text": "not a supported model file", "random": "not a supported model file",
                "truncated-pt": "truncated or corrupt zip", "truncated-pickle": "truncated pickle",
                "truncated-legacy-pt": "truncated", "zip-without-torch": "zip archive without torch data",
                "random-after-pickle-header": "corrupt pickle", "pickle-of-a-list": "not an NVIDIA network pickle"}
    for name, path in _bad_files(tmp_path).items():
        for fn in (load_model, detect_format, load_generator, read_network_file):
            if fn is detect_format and name in ("random-after-pickle-header", "truncated-pickle",
                                                "pickle-of-a-list"):
                assert detect_format(path) == "nvidia-pkl"  # by its header; the loader reports the problem
                continue
            with pytest.raises(ModelFormatError) as e:
                fn(path)
            msg = _one_line(e)
            if fn is read_network_file and name in ("random-after-pickle-header", "truncated-pickle",
                                                    "pickle-of-a-list", "truncated-legacy-pt"):
                assert "not a stylegan-forensics model file" in msg, (name, msg)
            else:
                assert expected[name] in msg, (name, fn.__name__, msg)
        with pytest.raises(ModelFormatError):
            convert(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
