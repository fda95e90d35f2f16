"""Crafted model files: the loader refuses what would make it allocate far more than the file holds (huge
networks, tensors past their storage, storages larger than their bytes, compressed or reused records), quickly
and within 100 MB; the recorded file hash is that of the bytes parsed."""

from __future__ import annotations

import builtins
import collections
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from stylegan.config import DiscriminatorConfig, GeneratorConfig
from stylegan.discriminator import Discriminator
from stylegan.formats import ModelFormatError, load_model, save_network, weights_sha256
from stylegan.formats import base as formats_base
from stylegan.formats.base import LEGACY_TORCH_MAGIC
from stylegan.formats.limits import (
    MAX_NETWORK_VALUES,
    check_network_config,
    check_tensor_geometry,
    check_torch_storages,
    network_values_bound,
)
from stylegan.formats.rosinality import ours_to_rosinality
from stylegan.generator import Generator
from stylegan.stylegan1 import StyleGAN1Config, StyleGAN1Discriminator, StyleGAN1Generator

REPO = Path(__file__).resolve().parents[2]
TINY = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)
TINY_D = DiscriminatorConfig(img_resolution=16, channel_base=128, channel_max=16)
MB = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Writing crafted pickles: any global by name, storages as persistent IDs


class _Global:
    """Pickled as the global ``module.name`` (which need not exist here)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pragma: no cover - only pickled
        raise AssertionError("a crafting stand-in was called")


class _Call:
    """Pickled as ``func(*args)``."""

    def __init__(self, func: _Global, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _StorageRef:
    """Pickled as a torch storage persistent ID (zip layout: 5 fields, legacy layout: 6)."""

    def __init__(self, key: str, numel: int, storage_type: str = "FloatStorage"):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class _CraftPickler(pickle._Pickler):
    def __init__(self, file, legacy: bool = False, protocol: int = 2):
        super().__init__(file, protocol=protocol)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            pid = ("storage", _Global("torch", obj.storage_type), obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def _dumps(obj, legacy: bool = False, protocol: int = 2) -> bytes:
    f = io.BytesIO()
    _CraftPickler(f, legacy=legacy, protocol=protocol).dump(obj)
    return f.getvalue()


def _tensor(storage, size, stride, offset: int = 0) -> _Call:
    return _Call(_Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(size), tuple(stride), False,
                 collections.OrderedDict())


def _torch_zip(obj, records: dict, deflate: set = frozenset()) -> bytes:
    """A torch.save-style zip: ``archive/data.pkl`` (``obj`` with _StorageRef persistent IDs) and the records
    ``archive/data/<key>`` (bytes, or an int: that many zero bytes, written deflate-compressed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", _dumps(obj))
        zf.writestr("archive/byteorder", "little")
        for key, data in records.items():
            if isinstance(data, int):
                info = zipfile.ZipInfo(f"archive/data/{key}")
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as w:
                    for _ in range(data // MB):
                        w.write(bytes(MB))
            else:
                zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return out.getvalue()


def _legacy(obj, storages: list, listed=None) -> bytes:
    """torch.save's legacy (non-zip) layout: ``obj`` (with _StorageRef persistent IDs), the storage keys
    (``listed``, default: the keys of ``storages``), then per storage (key, element count, bytes)."""
    f = io.BytesIO()
    sys_info = dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
    for head in (LEGACY_TORCH_MAGIC, 1001, sys_info):
        pickle.dump(head, f, protocol=2)
    f.write(_dumps(obj, legacy=True))
    pickle.dump([k for k, _, _ in storages] if listed is None else listed, f, protocol=2)
    for _, count, data in storages:
        f.write(struct.pack("<q", count) + data)
    return f.getvalue()


def _storage_payload(numel_declared: int, data: bytes) -> _Call:
    """An NVIDIA-pickle storage: ``torch.storage._load_from_bytes(<legacy file of one float storage>)``."""
    payload = _legacy(_StorageRef("0", numel_declared), [("0", len(data) // 4, data)])
    return _Call(_Global("torch.storage", "_load_from_bytes"), payload)


def _persistent(class_name: str, init_kwargs: dict, parameters=None) -> _Call:
    state = {"_parameters": collections.OrderedDict(parameters or {}), "_buffers": collections.OrderedDict(),
             "_modules": collections.OrderedDict(), "_init_args": (), "_init_kwargs": init_kwargs}
    meta = dict(type="class", version=6, module_src="# never run", class_name=class_name, state=state)
    return _Call(_Global("torch_utils.persistence", "_reconstruct_persistent_obj"), meta)


def _nvidia(G_ema, **extra) -> bytes:
    return _dumps({"G": None, "D": None, "G_ema": G_ema, "augment_pipe": None, **extra}, protocol=4)


def _nvidia_g_kwargs(**overrides) -> dict:
    kw = dict(z_dim=32, w_dim=32, c_dim=0, img_resolution=16, img_channels=3,
              mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    kw.update(overrides)
    return kw


def _ours(G_config: dict, arch: str = "stylegan2") -> bytes:
    """Our format with no weights (their hash matches) and the given generator config."""
    obj = {"format": "stylegan-forensics", "format_version": 1, "arch": arch, "G_config": G_config, "G_ema": {},
           "metadata": {"weights_sha256": weights_sha256({})}}
    f = io.BytesIO()
    torch.save(obj, f)
    return f.getvalue()


def _g_dict(**overrides) -> dict:
    return {**TINY.to_dict(), **overrides}


def _sg1_dict(**overrides) -> dict:
    return {**StyleGAN1Config(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=128,
                              channel_max=16).to_dict(), **overrides}


# ----------------------------------------------------------------------------------------------------------------
# The crafted files, all loaded in one child process (address space capped at 1 GiB above the warm-up load's)


def _crafted_files(folder: Path) -> dict:
    """name -> (path, with_training, expected message part)."""
    good = save_network(folder / "good.pt", _seed_generator())
    good_obj = torch.load(good, weights_only=True)
    huge_d = dict(good_obj, D={}, D_config={**TINY_D.to_dict(), "channel_base": 10**7, "channel_max": 10**6})
    d_buf = io.BytesIO()
    torch.save(huge_d, d_buf)
    meta = io.BytesIO()
    torch.save(dict(good_obj, G_ema={"w": torch.empty(2**28, device="meta")}), meta)
    payload = _storage_payload(MB // 4, bytes(MB)).args[0]  # one 1 MB payload, referenced 200 times
    reused = [_Call(_Global("torch.storage", "_load_from_bytes"), payload) for _ in range(200)]
    files = {
        # our format: configs that would build enormous networks
        "ours-resolution-2**20": (_ours(_g_dict(img_resolution=2**20, channel_base=2**20, channel_max=1)),
                                  False, "img_resolution=1048576"),
        "ours-channels-10**6": (_ours(_g_dict(img_resolution=8, channel_base=4 * 10**6, channel_max=10**6)),
                                False, "1000000 channels"),
        "ours-4096-channels-everywhere": (_ours(_g_dict(img_resolution=1024, channel_base=4096 * 1024,
                                                        channel_max=4096)), False, "values"),
        "ours-z_dim-10**7": (_ours(_g_dict(z_dim=10**7)), False, "z_dim=10000000"),
        "ours-mapping-layers-10**6": (_ours(_g_dict(mapping_layers=10**6, w_dim=512)), False, "mapping_layers"),
        "ours-stylegan1-resolution-2**20": (_ours(_sg1_dict(img_resolution=2**20, channel_base=2**20,
                                                            channel_max=1), arch="stylegan1"),
                                            False, "img_resolution=1048576"),
        "ours-discriminator-channels-10**6": (d_buf.getvalue(), True, "1000000 channels"),
        # NVIDIA pickles
        "nvidia-resolution-2**20": (_nvidia(_persistent("Generator", _nvidia_g_kwargs(
            img_resolution=2**20, synthesis_kwargs=dict(channel_base=2**20, channel_max=1)))),
            False, "img_resolution=1048576"),
        "nvidia-tensor-past-its-storage": (_nvidia(_persistent("Generator", _nvidia_g_kwargs(), {
            "w": _tensor(_storage_payload(16, bytes(64)), (2**30,), (1,))})), False, "does not fit its storage"),
        "nvidia-storage-declares-2**28-floats": (_nvidia(_persistent("Generator", _nvidia_g_kwargs(), {
            "w": _tensor(_storage_payload(2**28, bytes(64)), (16,), (1,))})), False, "declares 268435456"),
        "nvidia-storage-payload-reused": (_nvidia(_persistent("Generator", _nvidia_g_kwargs()),
                                                  extra=reused), False, "more than once"),
        # torch zip files
        "zip-storage-declares-2**28-floats": (_torch_zip({"w": _tensor(_StorageRef("0", 2**28), (16,), (1,))},
                                                         {"0": bytes(64)}), False, "declares 268435456"),
        "zip-tensor-past-its-storage": (_torch_zip({"w": _tensor(_StorageRef("0", 16), (2**30,), (1,))},
                                                   {"0": bytes(64)}), False, "does not fit its storage"),
        "zip-meta-tensor-2**28-floats": (meta.getvalue(), False, "refused: torch._utils._rebuild_meta_tensor"),
        "zip-deflated-128MB-record": (_torch_zip({"w": _tensor(_StorageRef("0", 32 * MB), (32 * MB,), (1,))},
                                                 {"0": 128 * MB}), False, "is compressed"),
        # legacy (non-zip) torch files
        "legacy-storage-declares-2**28-floats": (_legacy({"g_ema": _tensor(_StorageRef("0", 2**28), (16,), (1,))},
                                                         [("0", 16, bytes(64))]), False, "declares 268435456"),
        "legacy-v1-tensor-past-its-storage": (_legacy({"g_ema": _Call(
            _Global("torch._utils", "_rebuild_tensor"), _StorageRef("0", 16), 0, (2**28,), (1,))},
            [("0", 16, bytes(64))]), False, "does not fit its storage"),
        "legacy-storage-not-listed": (_legacy({"g_ema": _tensor(_StorageRef("0", 2**28), (16,), (1,))}, [],
                                              listed=[]), False, "storage list does not match"),
    }
    out = {"warm-up": (good, False, "")}
    for name, (data, with_training, expected) in files.items():
        path = folder / f"{name}.bin"
        path.write_bytes(data)
        out[name] = (path, with_training, expected)
    return out


def _seed_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(TINY)


_CHILD = r"""
import json, resource, sys, time
from stylegan.formats import ModelFormatError, load_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

cases = json.loads(sys.argv[1])
results = {}
for i, (name, path, with_training) in enumerate(cases):
    if i == 1:  # after the warm-up load: a safety net of 1 GiB of address space more
        limit = status("VmSize") + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        base_vm = status("VmPeak")
    t0 = time.perf_counter()
    try:
        load_model(path, with_training=with_training)
        outcome, message = "loaded", ""
    except ModelFormatError as exc:
        outcome, message = "ModelFormatError", str(exc)
    except BaseException as exc:
        outcome, message = type(exc).__name__, str(exc)[:300]
    seconds = time.perf_counter() - t0
    if i:
        results[name] = dict(outcome=outcome, message=message, seconds=seconds,
                             rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss,
                             vm=status("VmPeak") - base_vm)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    if not Path("/proc/self/status").exists():
        pytest.skip("measures memory through /proc/self/status (Linux)")
    files = _crafted_files(tmp_path_factory.mktemp("crafted"))
    cases = [[name, str(path), with_training] for name, (path, with_training, _) in files.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: (results[name], files[name][2]) for name in results}


CRAFTED = ["ours-resolution-2**20", "ours-channels-10**6", "ours-4096-channels-everywhere", "ours-z_dim-10**7",
           "ours-mapping-layers-10**6", "ours-stylegan1-resolution-2**20", "ours-discriminator-channels-10**6",
           "nvidia-resolution-2**20", "nvidia-tensor-past-its-storage", "nvidia-storage-declares-2**28-floats",
           "nvidia-storage-payload-reused", "zip-storage-declares-2**28-floats", "zip-tensor-past-its-storage",
           "zip-meta-tensor-2**28-floats", "zip-deflated-128MB-record", "legacy-storage-declares-2**28-floats",
           "legacy-v1-tensor-past-its-storage", "legacy-storage-not-listed"]


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_file_is_refused_quickly_and_within_100MB(crafted, name):
    result, expected = crafted[name]
    assert result["outcome"] == "ModelFormatError", result
    assert expected in result["message"] and "\n" not in result["message"], result
    assert result["seconds"] < 1.0, result
    # resident (touched) and virtual (merely reserved) memory peaks over the warm-up load's
    assert result["rss"] < 100 * MB, result
    assert result["vm"] < 100 * MB, result


def test_crafted_cases_are_all_run(crafted):
    assert sorted(crafted) == sorted(CRAFTED)


# ----------------------------------------------------------------------------------------------------------------
# The hash is that of the parsed bytes; the file-size bound comes before reading


def test_file_sha256_is_of_the_bytes_parsed(tmp_path, monkeypatch):
    torch.manual_seed(1)
    a = save_network(tmp_path / "a.pt", Generator(TINY))
    torch.manual_seed(2)
    b = save_network(tmp_path / "b.pt", Generator(TINY))
    contents = [a.read_bytes(), b.read_bytes()]
    target = tmp_path / "model.pt"
    target.write_bytes(contents[0])
    opened = []
    real_open = builtins.open

    def swapping_open(file, mode="r", *args, **kwargs):
        """Every read of the model file gets the current content, and the file then changes to the other one."""
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and Path(file) == target and "r" in mode:
            opened.append(len(opened))
            nxt = tmp_path / "next.tmp"
            nxt.write_bytes(contents[len(opened) % 2])
            os.replace(nxt, target)
        return f

    monkeypatch.setattr(builtins, "open", swapping_open)
    m = load_model(target)
    monkeypatch.setattr(builtins, "open", real_open)
    assert opened, "the loader did not read the file through open()"
    parsed = [c for c in contents if torch.load(io.BytesIO(c), weights_only=True)["metadata"]["weights_sha256"]
              == m.metadata["weights_sha256"]]
    assert len(parsed) == 1
    assert m.file_sha256 == hashlib.sha256(parsed[0]).hexdigest()


def test_file_sha256_of_every_format(tmp_path):
    G = _seed_generator()
    ours = save_network(tmp_path / "ours.pt", G)
    sd, latent_avg = ours_to_rosinality(G)
    rosinality = tmp_path / "r.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, rosinality)
    legacy = tmp_path / "legacy.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, legacy, _use_new_zipfile_serialization=False)
    for path in (ours, rosinality, legacy):
        m = load_model(path)
        assert m.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert torch.equal(m.G_ema.synthesis.b16.torgb.weight, G.synthesis.b16.torgb.weight)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = save_network(tmp_path / "big.pt", _seed_generator())
    monkeypatch.setattr(formats_base, "MAX_MODEL_FILE_BYTES", path.stat().st_size - 1)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise AssertionError("the oversized file was opened")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(ModelFormatError, match=r"refused: .*big\.pt has [\d,]+ bytes, more than the [\d,]+ a model"):
        load_model(path)
    monkeypatch.setattr(formats_base, "MAX_MODEL_FILE_BYTES", path.stat().st_size)
    monkeypatch.setattr(builtins, "open", real_open)
    assert load_model(path).G_ema.config == TINY


# ----------------------------------------------------------------------------------------------------------------
# The bounds themselves


def _values(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values())


REAL_NETWORKS = {
    # FFHQ 1024 px config F (the largest real StyleGAN2 network) and its discriminator
    "ffhq-1024-config-F": (Generator, GeneratorConfig()),
    "ffhq-1024-config-F-D": (Discriminator, DiscriminatorConfig()),
    # ADA's paper256 and CIFAR-10 configs
    "ada-paper256": (Generator, GeneratorConfig(img_resolution=256, channel_base=16384, channel_max=512)),
    "ada-cifar": (Generator, GeneratorConfig(img_resolution=32, channel_base=16384, channel_max=512,
                                             mapping_layers=2)),
    "ada-cifar-D": (Discriminator, DiscriminatorConfig(img_resolution=32, channel_base=16384, channel_max=512)),
    # StyleGAN (config A) at 1024 px and its progressive discriminator
    "stylegan-1024": (StyleGAN1Generator, StyleGAN1Config()),
    "stylegan-1024-D": (StyleGAN1Discriminator, DiscriminatorConfig(channel_base=16384, architecture="orig")),
}


@pytest.mark.parametrize("name", list(REAL_NETWORKS))
def test_real_networks_are_within_the_bounds(name):
    cls, config = REAL_NETWORKS[name]
    assert check_network_config(config, name) is config
    torch.manual_seed(0)
    actual = _values(cls(config))
    bound = network_values_bound(config)
    assert actual <= bound <= 2 * actual, (actual, bound)
    assert bound * 8 <= MAX_NETWORK_VALUES  # far inside: 8x headroom at least


SMALL_NETWORKS = [
    (Generator, GeneratorConfig(z_dim=24, w_dim=16, img_resolution=16, mapping_layers=3, channel_base=64,
                                channel_max=8, architecture="resnet")),
    (Generator, GeneratorConfig(z_dim=64, w_dim=16, img_resolution=8, mapping_layers=1, channel_base=256,
                                channel_max=32, architecture="orig", img_channels=1)),
    (Generator, TINY),
    (StyleGAN1Generator, StyleGAN1Config(z_dim=16, w_dim=48, img_resolution=32, mapping_layers=2, channel_base=256,
                                         channel_max=32, img_channels=4)),
    (Discriminator, DiscriminatorConfig(img_resolution=16, channel_base=64, channel_max=8, architecture="skip",
                                        mbstd_group_size=2, mbstd_num_channels=2)),
    (Discriminator, TINY_D),
    (StyleGAN1Discriminator, DiscriminatorConfig(img_resolution=32, channel_base=256, channel_max=32,
                                                 architecture="orig")),
    (StyleGAN1Discriminator, DiscriminatorConfig(img_resolution=16, channel_base=128, channel_max=16)),
]


@pytest.mark.parametrize("cls,config", SMALL_NETWORKS)
def test_values_bound_holds_for_every_architecture(cls, config):
    actual = _values(cls(config))
    assert actual <= network_values_bound(config) <= 3 * actual + 64


@pytest.mark.parametrize("field,value,message", [
    ("img_resolution", 8192, "img_resolution=8192 is outside"),
    ("img_channels", 0, "img_channels=0 is outside"),
    ("z_dim", 4097, "z_dim=4097"),
    ("w_dim", 10**9, "w_dim=1000000000"),
    ("mapping_layers", 65, "mapping_layers=65"),
    ("channel_max", 8192, "8192 channels"),
    ("z_dim", 3.5, "z_dim must be an integer"),
    ("img_resolution", True, "img_resolution must be an integer"),
])
def test_config_bounds(field, value, message):
    config = GeneratorConfig(img_resolution=1024, channel_base=2**24, channel_max=512)
    check_network_config(config)
    object.__setattr__(config, field, value)  # past the dataclass's own checks
    with pytest.raises(ModelFormatError, match=message):
        check_network_config(config, "G")
    big_d = DiscriminatorConfig(img_resolution=1024, channel_base=2**24, channel_max=4096)
    with pytest.raises(ModelFormatError, match="values; at most"):
        check_network_config(big_d, "D")


def test_tensor_geometry():
    check_tensor_geometry(16, 0, (4, 4), (4, 1), "t")  # exactly fills its storage
    check_tensor_geometry(16, 15, (1,), (1,), "t")
    check_tensor_geometry(16, 6, (2, 2), (1, 8), "t")  # a transposed view inside the storage
    check_tensor_geometry(0, 0, (0, 3), (3, 1), "t")  # empty
    check_tensor_geometry(4, 4, (0,), (1,), "t")
    for offset, size, stride in [(1, (4, 4), (4, 1)), (0, (17,), (1,)), (16, (1,), (1,)), (0, (2,), (16,)),
                                 (0, (2**40, 2**40), (0, 0)), (17, (0,), (1,))]:
        with pytest.raises(ModelFormatError, match="does not fit its storage"):
            check_tensor_geometry(16, offset, size, stride, "t")
    for offset, size, stride in [(-1, (1,), (1,)), (0, (-1,), (1,)), (0, (2,), (-1,)), (0, (2, 2), (1,)),
                                 (0, [4], [1]), (0, (1,) * 17, (1,) * 17), (0.0, (1,), (1,))]:
        with pytest.raises(ModelFormatError, match="invalid tensor geometry"):
            check_tensor_geometry(16, offset, size, stride, "t")


def test_storage_check_accepts_what_torch_writes(tmp_path):
    """torch.save's own files (zip and legacy, shared and viewed storages, several dtypes) pass the check."""
    base = torch.arange(24, dtype=torch.float32)
    obj = {"a": base, "view": base[4:10].view(2, 3), "t": base.view(4, 6).t(), "half": torch.ones(5).half(),
           "long": torch.arange(3), "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
           "scalar": torch.tensor(2.5), "nested": [torch.zeros(2, 2), {"x": torch.ones(1)}]}
    for legacy in (False, True):
        f = io.BytesIO()
        torch.save(obj, f, _use_new_zipfile_serialization=not legacy)
        data = f.getvalue()
        check_torch_storages(data, "file")
        path = tmp_path / f"x{legacy}.pt"
        path.write_bytes(data)
        check_torch_storages(path, "file")
        stream = io.BytesIO(data)
        stream.seek(0)
        check_torch_storages(stream, "file")
        assert stream.tell() == 0
    # a storage one element short of its declaration, in both layouts
    with pytest.raises(ModelFormatError, match="declares 16 elements of 4 bytes, its record holds 60 bytes"):
        check_torch_storages(_torch_zip({"w": _tensor(_StorageRef("0", 16), (15,), (1,))}, {"0": bytes(60)}))
    with pytest.raises(ModelFormatError, match="declares 16 elements, its data 15"):
        check_torch_storages(_legacy({"w": _tensor(_StorageRef("0", 16), (15,), (1,))}, [("0", 15, bytes(60))]))
    with pytest.raises(ModelFormatError, match="truncated"):
        check_torch_storages(_legacy({"w": _tensor(_StorageRef("0", 16), (15,), (1,))}, [("0", 16, bytes(60))]))
