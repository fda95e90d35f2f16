"""Pieces shared by the format modules: the error type, safe ``torch.load``, plain-data checks, constants."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch

__all__ = ["ModelFormatError", "MAX_MODEL_FILE_BYTES", "check_readable_file", "read_model_file", "container_kind",
           "safe_torch_load", "is_torch_zip", "is_legacy_torch", "is_raw_pickle",
           "check_fir_kernel", "fir_kernel", "check_plain", "one_line"]

#: torch.save's legacy (pre-1.6, non-zip) files start with this pickled integer after the protocol header.
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C

#: Largest model file read (bytes), refused before reading: loading holds the whole file in memory. Real files
#: are far smaller (NVIDIA's FFHQ 1024 px snapshot, G, D and G_ema together, is about 360 MB).
MAX_MODEL_FILE_BYTES = 2 * 1024**3


def one_line(text: Any, limit: int = 400) -> str:
    """Collapse whitespace (newlines included) and shorten: error messages are printed on one line."""
    s = " ".join(str(text).split())
    s = s.replace("\x1b[1m", "").replace("\x1b[0m", "")
    return s if len(s) <= limit else s[: limit - 3] + "..."


class ModelFormatError(ValueError):
    """A model file that cannot be read: unsupported, corrupt, tampered with, or refused for safety.

    The message is always a single line that names the file or the offending item.
    """

    def __init__(self, message: Any):
        super().__init__(one_line(message))


ModelFormatError.__module__ = "stylegan.formats"


def check_readable_file(path: Any) -> Path:
    """A path that exists, is a regular file, is not empty and not above MAX_MODEL_FILE_BYTES; else
    ModelFormatError."""
    try:
        path = Path(path)
    except TypeError:
        raise ModelFormatError(f"not a supported model file: {path!r} is not a path") from None
    if not path.exists():
        raise ModelFormatError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFormatError(f"not a supported model file: {path} is a directory")
    if not path.is_file():
        raise ModelFormatError(f"not a supported model file: {path} is not a regular file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFormatError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelFormatError(f"not a supported model file: {path} is empty")
    _check_size(path, size)
    if not os.access(path, os.R_OK):
        raise ModelFormatError(f"cannot read model file {path}: permission denied")
    return path


def _check_size(path: Path, size: int) -> None:
    if size > MAX_MODEL_FILE_BYTES:
        raise ModelFormatError(f"refused: {path} has {size:,} bytes, more than the {MAX_MODEL_FILE_BYTES:,} a "
                               f"model file may have")


def read_model_file(path: Any) -> Tuple[Path, bytes]:
    """(path, the file's bytes), read once, for hashing and parsing the same bytes; the checks of
    :func:`check_readable_file` come first (the size bound included)."""
    path = check_readable_file(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _check_size(path, size)  # again: the file may have changed since check_readable_file
            data = f.read(size + 1)  # read(n) reserves n bytes: ask for the size, plus one to see growth
    except OSError as exc:
        raise ModelFormatError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if len(data) != size:
        raise ModelFormatError(f"cannot read model file {path}: it changed while being read")
    if not data:
        raise ModelFormatError(f"not a supported model file: {path} is empty")
    return path, data


def _zip_source(source: Any) -> Any:
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def is_torch_zip(source: Any) -> bool:
    """True for torch.save's zip container (torch >= 1.6): a zip archive holding ``*/data.pkl``. ``source``: a
    path or the file's bytes."""
    try:
        if not zipfile.is_zipfile(_zip_source(source)):
            return False
        with zipfile.ZipFile(_zip_source(source)) as zf:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def _read_head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_raw_pickle(head: bytes) -> bool:
    """A binary pickle of protocol 2 to 5 starts with the PROTO opcode and its protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def is_legacy_torch(head: bytes) -> bool:
    """torch.save's legacy format: a protocol-2 pickle whose first object is the LONG1 magic number."""
    if not (len(head) >= 4 and head[0] == 0x80 and head[1] == 2 and head[2] == 0x8A):
        return False
    n = head[3]
    if len(head) < 4 + n:
        return False
    return int.from_bytes(head[4: 4 + n], "little", signed=True) == LEGACY_TORCH_MAGIC


def container_kind(source: Any, what: Any = None) -> str:
    """'torch-zip', 'torch-legacy' or 'pickle' from the content of a (readable, non-empty) file, given as its
    path or its bytes (``what`` names it in messages); anything else is a ModelFormatError."""
    if isinstance(source, (bytes, bytearray)):
        path = "model file" if what is None else what
        head = bytes(source[:64])
    else:
        path = source if what is None else what
        with open(source, "rb") as f:
            head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        if not zipfile.is_zipfile(_zip_source(source)):
            raise ModelFormatError(f"not a supported model file: {path} is a truncated or corrupt zip archive")
        if not is_torch_zip(source):
            raise ModelFormatError(f"not a supported model file: {path} is a zip archive without torch data")
        return "torch-zip"
    if is_legacy_torch(head):
        return "torch-legacy"
    if is_raw_pickle(head):
        return "pickle"
    raise ModelFormatError(f"not a supported model file: {path} (neither a torch file nor a binary pickle)")


@contextlib.contextmanager
def _quiet_storage_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
        yield


def safe_globals_available() -> bool:
    return hasattr(torch.serialization, "safe_globals")


def safe_torch_load(source: Any, *, allow_namespace: bool = False, what: str = "model file",
                    mmap: bool = False) -> Any:
    """``torch.load(..., weights_only=True, map_location='cpu')`` with every failure as a ModelFormatError.

    ``source``: a path, the file's bytes or a binary file object. Its declared storages are first checked against
    the bytes that back them (:func:`.limits.check_torch_storages`), so that nothing is sized from a declared
    count alone. ``allow_namespace`` additionally allows ``argparse.Namespace`` objects (rosinality checkpoints
    store their command-line arguments as one); that needs ``torch.serialization.safe_globals`` (torch >= 2.5).
    """
    from .limits import check_torch_storages  # here, not at the top: limits imports this module

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    check_torch_storages(source, what)
    ctx: Any = contextlib.nullcontext()
    if allow_namespace and safe_globals_available():
        ctx = torch.serialization.safe_globals([argparse.Namespace])
    extra: Dict[str, Any] = {"mmap": True} if mmap else {}
    try:
        with ctx, _quiet_storage_warnings():
            return torch.load(source, weights_only=True, map_location="cpu", **extra)
    except ModelFormatError:
        raise
    except pickle.UnpicklingError as exc:
        if allow_namespace and not safe_globals_available() and "argparse" in str(exc):
            raise ModelFormatError(
                f"{what}: reading its argparse.Namespace safely needs torch >= 2.5 (found {torch.__version__}); "
                f"upgrade torch to load this checkpoint") from None
        first = str(exc).split("\n")
        detail = next((line for line in first if "Unsupported global" in line or "GLOBAL" in line), first[0])
        raise ModelFormatError(f"{what}: refused or unreadable content ({one_line(detail, 240)})") from exc
    except MemoryError:
        raise ModelFormatError(f"{what}: corrupt (implausible sizes in the file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            zipfile.BadZipFile, UnicodeDecodeError, OverflowError, RecursionError) as exc:
        raise ModelFormatError(f"{what}: corrupt or truncated ({one_line(exc, 240)})") from exc


# ----------------------------------------------------------------------------------------------------------------
# The constant FIR kernel

_FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def fir_kernel(gain: float = 1.0) -> torch.Tensor:
    """outer([1,3,3,1], [1,3,3,1]) / 64 * gain, the 2-D low-pass kernel NVIDIA's and rosinality's code store."""
    f = torch.tensor(_FIR_TAPS, dtype=torch.float64)
    k = torch.outer(f, f)
    return (k / k.sum() * gain).to(torch.float32)


def check_fir_kernel(tensor: Any, name: str, gain: float = 1.0, what: str = "model file") -> None:
    """Refuse a stored FIR buffer that differs from the constant kernel our networks recreate."""
    expected = fir_kernel(gain)
    ok = (isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == tuple(expected.shape)
          and tensor.is_floating_point()
          and torch.allclose(tensor.detach().to("cpu", torch.float64), expected.double(), rtol=1e-6, atol=1e-7))
    if not ok:
        shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ModelFormatError(
            f"{what}: {name} ({shape}) is not the standard [1,3,3,1] FIR kernel; networks with another "
            f"resampling filter are not supported")


# ----------------------------------------------------------------------------------------------------------------
# Plain data (what torch.load(weights_only=True) accepts)

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "value", _depth: int = 0) -> None:
    """Raise TypeError unless ``obj`` is made only of dicts (str keys), lists, tuples, str, int, float, bool,
    None and tensors, i.e. loadable with ``weights_only=True`` and convertible to JSON apart from tensors."""
    if _depth > 64:
        raise TypeError(f"{where}: nested too deeply")
    if isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where}: tensor subclass {type(obj).__name__} is not plain data")
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict key {k!r} must be str or int")
            check_plain(v, f"{where}.{k}", _depth + 1)
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]", _depth + 1)
        return
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain data")


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Best-effort conversion of mappings / sequences / numpy scalars to plain data; other objects become
    their ``repr`` string. Used for informational metadata taken from foreign files."""
    if _depth > 32:
        return "<nested too deeply>"
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    for kind in (bool, int, float, str):  # subclasses (e.g. IntEnum) -> the plain type
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist() if obj.numel() <= 64 else f"<tensor {list(obj.shape)} {obj.dtype}>"
    if isinstance(obj, dict):
        return {str(k): to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_plain(v, _depth + 1) for v in items]
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and type(obj).__module__ == "numpy":
        try:
            return to_plain(item(), _depth + 1)
        except Exception:  # noqa: BLE001 - informational only
            pass
    return repr(obj)


def state_dict_summary(state: Dict[str, torch.Tensor]) -> str:
    n = sum(int(t.numel()) for t in state.values())
    return f"{len(state)} tensors, {n:,} values"


def require_tensor_dict(obj: Any, what: str) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ModelFormatError(f"{what} is not a state dict of named tensors")
    return obj


def unmapped_message(what: str, kind: str, keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{what}: {len(keys)} {kind}: {shown}"


def shapes_mismatch(expected: Dict[str, Sequence[int]], got: Dict[str, torch.Tensor]) -> Optional[str]:
    for k, shape in expected.items():
        if k in got and tuple(got[k].shape) != tuple(shape):
            return f"{k} has shape {list(got[k].shape)}, expected {list(shape)}"
    return None


def construct(cls: Any, config: Any) -> torch.nn.Module:
    """``cls(config)`` on the CPU without touching the global RNG (random initialisation is overwritten by the
    loaded weights; loading a model must not change what later ``torch.randn`` calls return)."""
    with torch.random.fork_rng(devices=[]):
        return cls(config)


def state_shapes(cls: Any, config: Any) -> Dict[str, tuple]:
    """Key -> shape of the state dict of ``cls(config)``, in state-dict order (cached per config).

    A real construction: the meta device would avoid the allocation but costs seconds of one-time imports.
    """
    return dict(_state_shapes(cls, config))


@functools.lru_cache(maxsize=32)
def _state_shapes(cls: Any, config: Any) -> tuple:
    module = construct(cls, config)
    return tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())
