"""Bounds on what a model file may make the loader allocate, checked before anything large is allocated.

Three kinds of check, each refusing with a one-line :class:`ModelFormatError`:

* the network a file describes (:func:`check_network_config`), from its config alone, before any module is
  built: resolution, channels per layer, latent sizes, mapping depth and the number of values (parameters and
  buffers) the network would hold. Every real StyleGAN / StyleGAN2 / ADA network is far inside the bounds: the
  largest, FFHQ 1024 px config F (512 channels), has 33.2 M generator values and 29.0 M discriminator values;
* the geometry of a tensor against its storage (:func:`check_tensor_geometry`);
* the storages a torch file declares against the bytes that back them (:func:`check_torch_storages`), before
  ``torch.load`` sizes anything from a declared count. Measured with torch 2.14: a deflate-compressed zip record
  is inflated to its declared size (a 256 KB file became 256 MB), a legacy (non-zip) file or an NVIDIA storage
  payload makes torch allocate the declared element count before it reads the data, and a meta tensor of any
  declared size is accepted (copying it to the CPU allocates that size). Model files hold dense tensors only, so
  the other tensor kinds ``weights_only`` allows (meta, sparse, quantized, nested, subclass wrappers, numpy) are
  refused.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .base import LEGACY_TORCH_MAGIC, ModelFormatError, _quiet_storage_warnings, one_line

__all__ = ["MAX_IMG_RESOLUTION", "MAX_CHANNELS", "MAX_LATENT_DIM", "MAX_MAPPING_LAYERS", "MAX_NETWORK_VALUES",
           "MAX_TENSOR_DIMS", "check_network_config", "network_values_bound", "check_tensor_geometry",
           "check_torch_storages"]

#: Largest image side (a power of two, >= 4). Real networks go up to 1024 px; 4096 leaves room for 2048/4096 px.
MAX_IMG_RESOLUTION = 4096
#: Largest feature-map count of one layer (also bounds ``img_channels`` and the minibatch-std channels). Real
#: networks use at most 512 (config F).
MAX_CHANNELS = 4096
#: Largest ``z_dim`` / ``w_dim``. Real networks use 512.
MAX_LATENT_DIM = 4096
#: Deepest mapping network. Real networks use 8 (2 for ADA's CIFAR-10 config).
MAX_MAPPING_LAYERS = 64
#: Most values (parameters plus persistent buffers) one network may hold: 2**29, i.e. 2 GiB in float32, as much
#: as the largest accepted file (``MAX_MODEL_FILE_BYTES``) could hold; 16x FFHQ 1024 px config F.
MAX_NETWORK_VALUES = 2**29
#: Most dimensions of one stored tensor (the networks use at most 5).
MAX_TENSOR_DIMS = 16


# ----------------------------------------------------------------------------------------------------------------
# Network configs


def _int_field(config: Any, name: str, what: str, lo: int, hi: int) -> int:
    value = getattr(config, name, None)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFormatError(f"{what}: {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ModelFormatError(f"{what}: {name}={value} is outside the supported range [{lo}, {hi}]")
    return value


def _channels(config: Any, res: int) -> int:
    return min(config.channel_base // res, config.channel_max)


def _layer_values(c_in: int, c_out: int, w_dim: int, res: int) -> int:
    """One 3x3 synthesis layer, generously: conv weight, a style affine of up to c_in + 2 c_out outputs (with
    bias), a res x res noise map, noise strengths and biases."""
    return 9 * c_in * c_out + (w_dim + 1) * (c_in + 2 * c_out) + res * res + 2 * c_out + 1


def _generator_values(config: Any) -> int:
    """Upper bound on the values of a StyleGAN2 or StyleGAN (config A) generator: every block counted with two
    3x3 layers, a 1x1 skip, a ToRGB and, at 4x4, the learned constant."""
    w, k = config.w_dim, config.img_channels
    total = config.mapping_layers * (max(config.z_dim, w) + 1) * w + w
    res = 4
    while res <= config.img_resolution:
        c_out = _channels(config, res)
        c_in = _channels(config, res // 2) if res > 4 else c_out
        total += (_layer_values(c_in, c_out, w, res) + _layer_values(c_out, c_out, w, res) + c_in * c_out
                  + (k + w + 2) * c_out + k)
        if res == 4:
            total += c_out * res * res
        res *= 2
    return total


def _discriminator_values(config: Any) -> int:
    """Upper bound on the values of a discriminator (any architecture, progressive fromRGBs included)."""
    k, m = config.img_channels, config.mbstd_num_channels
    total = 1
    res = config.img_resolution
    while res > 4:
        tmp, out = _channels(config, res), _channels(config, res // 2)
        total += (k + 1) * tmp + 9 * tmp * tmp + tmp + 9 * tmp * out + out + tmp * out
        res //= 2
    c4 = _channels(config, 4)
    return total + 2 * (k + 1) * c4 + 9 * (c4 + m) * c4 + c4 + 16 * c4 * c4 + 2 * c4 + 1


def network_values_bound(config: Any) -> int:
    """Upper bound on the number of values (parameters and persistent buffers) of the network ``config``
    describes: a generator when it has ``z_dim``, else a discriminator. Plain integer arithmetic, no allocation."""
    if hasattr(config, "z_dim"):
        return _generator_values(config)
    return _discriminator_values(config)


def check_network_config(config: Any, what: str = "model file") -> Any:
    """Refuse a config outside the bounds of this module (see the constants), before any module is built.

    Works on every generator config (StyleGAN2, StyleGAN config A) and on the discriminator config; returns the
    config.
    """
    res = _int_field(config, "img_resolution", what, 4, MAX_IMG_RESOLUTION)
    if res & (res - 1):
        raise ModelFormatError(f"{what}: img_resolution={res} is not a power of two")
    _int_field(config, "img_channels", what, 1, MAX_CHANNELS)
    _int_field(config, "channel_base", what, 1, 2**62)
    _int_field(config, "channel_max", what, 1, 2**62)
    widest = max(_channels(config, 2**i) for i in range(2, int(math.log2(res)) + 1))
    if widest > MAX_CHANNELS:
        raise ModelFormatError(f"{what}: a layer would have {widest} channels (channel_base {config.channel_base}, "
                               f"channel_max {config.channel_max}); at most {MAX_CHANNELS} are supported")
    if hasattr(config, "z_dim"):
        _int_field(config, "z_dim", what, 1, MAX_LATENT_DIM)
        _int_field(config, "w_dim", what, 1, MAX_LATENT_DIM)
        _int_field(config, "mapping_layers", what, 1, MAX_MAPPING_LAYERS)
    else:
        _int_field(config, "mbstd_num_channels", what, 0, MAX_CHANNELS)
    values = network_values_bound(config)
    if values > MAX_NETWORK_VALUES:
        raise ModelFormatError(f"{what}: the network would hold up to {values:,} values; at most "
                               f"{MAX_NETWORK_VALUES:,} are supported")
    return config


# ----------------------------------------------------------------------------------------------------------------
# Tensors and storages


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_tensor_geometry(storage_numel: int, offset: Any, size: Any, stride: Any, what: str) -> None:
    """Refuse a tensor view (``offset``, ``size``, ``stride``, in elements) that reaches past its storage of
    ``storage_numel`` elements, or that shows more values than the storage holds (overlapping strides would let
    a copy of it allocate far more than the file holds). A size of 0 makes the tensor empty."""
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and len(size) <= MAX_TENSOR_DIMS and _is_int(offset) and offset >= 0
            and all(_is_int(s) and s >= 0 for s in size + stride)):
        raise ModelFormatError(f"{what}: invalid tensor geometry (offset {offset!r}, size {size!r}, "
                               f"stride {stride!r})")
    numel = math.prod(size)
    extent = offset if numel == 0 else offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > storage_numel or numel > storage_numel:
        raise ModelFormatError(f"{what}: a tensor of size {list(size)} (stride {list(stride)}, offset {offset}) "
                               f"does not fit its storage of {storage_numel} elements")


class _Opaque:
    """Stands for every object the declaration reader need not understand: accepts any pickle operation."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Opaque":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


class _StorageType:
    """A ``torch.*Storage`` class named in the pickle: only its element size matters here."""

    def __init__(self, itemsize: int):
        self.itemsize = itemsize


class _Storage:
    """A declared storage: its element size and byte count."""

    def __init__(self, itemsize: int, numel: int):
        self.itemsize = itemsize
        self.nbytes = itemsize * numel


#: The tensor constructors of torch files that view a storage (their geometry is checked) or wrap a tensor.
_VIEW_REBUILDS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3")
_WRAPPING_REBUILDS = ("_rebuild_parameter", "_rebuild_parameter_with_state")


class _DeclarationReader(pickle.Unpickler):
    """Reads a torch pickle without building anything: records the storages it declares (key -> (itemsize,
    numel)), checks every tensor view against its storage and refuses tensors that are not dense views of a
    storage. Other globals become :class:`_Opaque` (whether they are allowed is ``torch.load``'s decision, made
    afterwards)."""

    def __init__(self, file: Any, what: str):
        super().__init__(file)
        self.what = what
        self.storages: Dict[str, Tuple[int, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = vars(torch).get(name) if module == "torch" else None  # no lazy imports through torch.__getattr__
        if isinstance(name, str) and name.endswith("Storage") and found is not None:
            if name == "UntypedStorage":
                return _StorageType(1)
            with _quiet_storage_warnings():
                dtype = getattr(found, "dtype", None)
            if isinstance(dtype, torch.dtype):
                return _StorageType(dtype.itemsize)
        if isinstance(found, torch.dtype):
            return found
        if module == "torch._utils" and str(name).startswith("_rebuild_"):
            if name in _VIEW_REBUILDS:
                return self._rebuild_tensor_v3 if name == "_rebuild_tensor_v3" else self._rebuild_tensor
            if name not in _WRAPPING_REBUILDS:
                raise ModelFormatError(f"{self.what}: refused: torch._utils.{name} (model files hold dense "
                                       f"tensors only)")
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            return _Opaque()
        if len(pid) == 6 and pid[5] is not None:
            raise ModelFormatError(f"{self.what}: refused: a storage view (not written by any supported torch)")
        if len(pid) not in (5, 6):
            raise ModelFormatError(f"{self.what}: corrupt storage reference")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise ModelFormatError(f"{self.what}: corrupt storage reference ({one_line(repr(pid[:5]), 120)})")
        declared = (stype.itemsize, numel)
        if self.storages.setdefault(key, declared) != declared:
            raise ModelFormatError(f"{self.what}: storage {key!r} is declared twice with different sizes")
        return _Storage(*declared)

    def _rebuild_tensor(self, storage: Any, offset: Any = 0, size: Any = (), stride: Any = (), *args: Any,
                        dtype: Any = None) -> Any:
        if not isinstance(storage, _Storage):
            raise ModelFormatError(f"{self.what}: a tensor without a storage")
        itemsize = dtype.itemsize if isinstance(dtype, torch.dtype) else storage.itemsize
        check_tensor_geometry(storage.nbytes // itemsize, offset, size, stride, self.what)
        return _Opaque()

    def _rebuild_tensor_v3(self, storage: Any, offset: Any = 0, size: Any = (), stride: Any = (),
                           requires_grad: Any = False, hooks: Any = None, dtype: Any = None, *args: Any) -> Any:
        return self._rebuild_tensor(storage, offset, size, stride, dtype=dtype)


def _read_declarations(f: Any, what: str) -> Dict[str, Tuple[int, int]]:
    reader = _DeclarationReader(f, what)
    reader.load()
    return reader.storages


def _check_zip(f: Any, total: int, what: str) -> None:
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if not names:
                raise ModelFormatError(f"{what}: empty zip archive")
            if len(set(names)) != len(names):
                raise ModelFormatError(f"{what}: refused: a zip archive with repeated member names")
            for i in infos:
                if i.compress_type != zipfile.ZIP_STORED:
                    raise ModelFormatError(f"{what}: refused: {i.filename} is compressed (torch.save never "
                                           f"compresses; a compressed record could expand far beyond the file)")
                if i.header_offset + i.file_size > total:
                    raise ModelFormatError(f"{what}: truncated or corrupt zip archive ({i.filename} ends past the "
                                           f"end of the file)")
            if sum(i.file_size for i in infos) > total:
                raise ModelFormatError(f"{what}: refused: zip members overlap (they hold more bytes than the file)")
            prefix = names[0].split("/")[0]
            sizes = {i.filename: i.file_size for i in infos}
            if f"{prefix}/data.pkl" not in sizes:
                raise ModelFormatError(f"{what}: a zip archive without {prefix}/data.pkl")
            pkl = zf.read(f"{prefix}/data.pkl")
    except ModelFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, NotImplementedError) as exc:
        raise ModelFormatError(f"{what}: truncated or corrupt zip archive ({one_line(exc, 160)})") from None
    for key, (itemsize, numel) in _read_declarations(io.BytesIO(pkl), what).items():
        record = sizes.get(f"{prefix}/data/{key}")
        if record is None:
            raise ModelFormatError(f"{what}: storage {key!r} has no data record")
        if record != itemsize * numel:
            raise ModelFormatError(f"{what}: storage {key!r} declares {numel} elements of {itemsize} bytes, its "
                                   f"record holds {record} bytes")


def _check_legacy(f: Any, total: int, what: str) -> None:
    """torch.save's legacy layout: pickles of the magic number, the protocol version, the system info, the object
    (storages as persistent IDs) and the list of storage keys; then per storage an int64 element count and its
    bytes."""
    if _DeclarationReader(f, what).load() != LEGACY_TORCH_MAGIC:
        raise ModelFormatError(f"{what}: not a torch file (bad magic number)")
    _DeclarationReader(f, what).load()  # protocol version
    _DeclarationReader(f, what).load()  # system info
    declared = _read_declarations(f, what)
    keys = _DeclarationReader(f, what).load()
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or len(set(keys)) != len(keys) or set(keys) != set(declared)):
        raise ModelFormatError(f"{what}: corrupt torch file (its storage list does not match the storages it uses)")
    for key in keys:
        itemsize, numel = declared[key]
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{what}: truncated torch file (storage {key!r} missing)")
        (count,) = struct.unpack("<q", head)
        if count != numel:
            raise ModelFormatError(f"{what}: storage {key!r} declares {numel} elements, its data {count}")
        nbytes = numel * itemsize
        if f.tell() + nbytes > total:
            raise ModelFormatError(f"{what}: truncated torch file (storage {key!r} needs {nbytes} bytes, "
                                   f"{max(total - f.tell(), 0)} remain)")
        f.seek(nbytes, io.SEEK_CUR)


def check_torch_storages(source: Any, what: str = "model file") -> None:
    """Check a torch file (a path, bytes or a seekable binary file; zip or legacy layout) before ``torch.load``:
    every declared storage must be backed by exactly as many bytes of the file, every tensor must be a view that
    fits its storage (other tensor kinds are refused), and zip members must be stored uncompressed without
    overlapping. Only the pickle is read, never the tensor data. A file object is left at its starting
    position."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return check_torch_storages(f, what)
    start = source.tell()
    try:
        total = source.seek(0, io.SEEK_END)
        source.seek(start)
        is_zip = source.read(4)[:2] == b"PK"
        source.seek(start)
        if is_zip:
            _check_zip(source, total, what)
        else:
            _check_legacy(source, total, what)
    except ModelFormatError:
        raise
    except EOFError:
        raise ModelFormatError(f"{what}: truncated torch file (a pickle ends unexpectedly)") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, struct and value errors: a corrupt file
        raise ModelFormatError(f"{what}: corrupt or truncated ({one_line(exc, 200) or type(exc).__name__})") from None
    finally:
        source.seek(start)
