"""NVIDIA stylegan2-ada-pytorch pickles read without running their code (the safe half of :mod:`.nvidia`).

Such a pickle's networks were written by NVIDIA's persistence mechanism: every module becomes a call of
``torch_utils.persistence._reconstruct_persistent_obj`` with the class name, the *source code of the module that
defines it* and the module's attribute dict; ``pickle.load`` would import and execute that source.
:class:`SafeUnpickler` resolves only an allow-list of globals, each to a harmless stand-in:

* the persistence call returns a :class:`PersistentObject` record (class name + state); the source is discarded
  unread, never executed;
* ``dnnlib.util.EasyDict`` is a plain ``dict`` subclass;
* tensors are rebuilt from storages that are themselves read with ``torch.load(..., weights_only=True)``, after
  :func:`.limits.check_torch_storages` has matched each storage's declared size with the bytes that carry it;
  all storages together may not hold more bytes than the pickle, and every tensor must fit its storage
  (:func:`.limits.check_tensor_geometry`), so that nothing is sized from a declared count alone;
* ``collections.OrderedDict``, ``builtins.set`` and numpy scalars (plain numeric dtypes only) for attributes.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) raises :class:`ModelFormatError`
naming the global, before it could be called. Persistent IDs are refused too. :func:`flatten_module` then turns
the module tree into the ``state_dict()`` the module would have.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from .base import MAX_MODEL_FILE_BYTES, ModelFormatError, _quiet_storage_warnings, one_line, read_model_file
from .limits import check_tensor_geometry, check_torch_storages

# ----------------------------------------------------------------------------------------------------------------
# Stand-ins for the allowed globals


class PersistentObject:
    """What one of NVIDIA's persistent modules unpickles to here: its class name and attribute dict."""

    __slots__ = ("class_name", "state", "version")

    def __init__(self, class_name: str, state: dict, version: Any = None):
        self.class_name = class_name
        self.state = state
        self.version = version

    def __setstate__(self, state: Any) -> None:
        raise ModelFormatError("refused: the pickle modifies a persistent object after creating it")

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict whose items can also be read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        if state:
            raise ModelFormatError("refused: the pickle sets attributes on an EasyDict")


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict):
        raise ModelFormatError("corrupt NVIDIA pickle: persistent object without a metadata dict")
    if meta.get("type") != "class":
        raise ModelFormatError(f"unsupported NVIDIA persistent object type {meta.get('type')!r}")
    class_name = meta.get("class_name")
    state = meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise ModelFormatError("corrupt NVIDIA pickle: persistent object without class_name or state")
    # meta['module_src'] (the defining source code) is deliberately ignored: it is never executed or kept.
    return PersistentObject(class_name, state, meta.get("version"))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_hooks(hooks: Any, what: str) -> None:
    if hooks is None:
        return
    if not isinstance(hooks, dict) or len(hooks):
        raise ModelFormatError(f"refused: {what} carries backward hooks")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise ModelFormatError("corrupt NVIDIA pickle: tensor without a typed storage")
    if not (_is_int(storage_offset) and storage_offset >= 0 and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(_is_int(s) and s >= 0 for s in size + stride)):
        raise ModelFormatError("corrupt NVIDIA pickle: invalid tensor geometry")
    _check_hooks(backward_hooks, "a tensor")
    if metadata:
        raise ModelFormatError("refused: a tensor carries extra Python attributes")
    with _quiet_storage_warnings():
        numel = storage.nbytes() // storage.element_size()
    check_tensor_geometry(numel, storage_offset, size, stride, "corrupt NVIDIA pickle")
    try:
        with _quiet_storage_warnings():
            t = torch.empty((0,), dtype=storage.dtype)
            return t.set_(storage.untyped(), storage_offset, size, stride)
    except RuntimeError as exc:
        raise ModelFormatError(f"corrupt NVIDIA pickle: {one_line(exc, 200)}") from None


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise ModelFormatError("corrupt NVIDIA pickle: parameter without tensor data")
    _check_hooks(backward_hooks, "a parameter")
    return data


def _load_from_bytes(b: Any) -> Any:
    if not isinstance(b, (bytes, bytearray)):
        raise ModelFormatError("corrupt NVIDIA pickle: storage payload is not bytes")
    check_torch_storages(b, "corrupt NVIDIA pickle: tensor storage")
    try:
        with _quiet_storage_warnings():
            obj = torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")
    except ModelFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the nested load is a corrupt file
        raise ModelFormatError(f"corrupt NVIDIA pickle: unreadable tensor storage ({one_line(exc, 160)})") from None
    if not isinstance(obj, torch.storage.TypedStorage):
        raise ModelFormatError("corrupt NVIDIA pickle: storage payload does not hold a storage")
    return obj


_NUMPY_KINDS = "biufc"  # bool, signed / unsigned int, float, complex: no object or structured dtypes


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise ModelFormatError("refused: numpy dtype built from a non-string spec")
    try:
        dt = np.dtype(spec, bool(align), bool(copy))
    except TypeError as exc:
        raise ModelFormatError(f"corrupt NVIDIA pickle: bad numpy dtype {spec!r}") from exc
    if dt.kind not in _NUMPY_KINDS:
        raise ModelFormatError(f"refused: numpy dtype {spec!r} is not a plain numeric type")
    return dt


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_KINDS or dtype.hasobject:
        raise ModelFormatError("refused: numpy scalar of a non-numeric dtype")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise ModelFormatError("corrupt NVIDIA pickle: numpy scalar with a wrong byte count")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0].item()


#: (module, name) -> the stand-in the SafeUnpickler returns for it.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # the same global as spelled by protocol-2 pickles written with fix_imports
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses persistent IDs.

    The storage payloads it reads may hold ``storage_budget`` bytes in all (the size of the pickle, when known):
    a payload referenced many times cannot make it allocate more than the file holds.
    """

    def __init__(self, file: Any, storage_budget: Optional[int] = None):
        super().__init__(file)
        self.storage_budget = MAX_MODEL_FILE_BYTES if storage_budget is None else storage_budget

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            found = None
        if found is _load_from_bytes:
            return self._load_storage
        if found is not None:
            return found
        hint = ""
        if str(module).startswith("dnnlib.tflib"):
            hint = " (a TensorFlow StyleGAN pickle; convert it to the PyTorch format first)"
        raise ModelFormatError(f"refused: the pickle references {module}.{name}, which is not on the "
                               f"allow-list{hint}")

    def persistent_load(self, pid: Any) -> Any:
        raise ModelFormatError("refused: the pickle uses persistent IDs, which NVIDIA network pickles never do")

    def _load_storage(self, b: Any) -> Any:
        self.storage_budget -= len(b) if isinstance(b, (bytes, bytearray)) else 0
        if self.storage_budget < 0:
            raise ModelFormatError("refused: the tensor storages hold more bytes than the pickle (a storage "
                                   "payload is used more than once)")
        return _load_from_bytes(b)


def unpickle_nvidia(source: Any, what: Optional[str] = None) -> Any:
    """Unpickle a file (path, bytes or binary file object) with :class:`SafeUnpickler`; every failure is a
    ModelFormatError whose message starts with ``what`` (default: the path, or "NVIDIA network pickle")."""
    budget = None
    if isinstance(source, (bytes, bytearray)):
        f: Any = io.BytesIO(source)
        budget = len(source)
    elif hasattr(source, "read"):
        f = source
    else:
        path, data = read_model_file(source)
        what = what or str(path)
        f, budget = io.BytesIO(data), len(data)
    what = what or "NVIDIA network pickle"
    try:
        return SafeUnpickler(f, storage_budget=budget).load()
    except ModelFormatError as exc:
        raise ModelFormatError(f"{what}: {exc}") from None
    except MemoryError:
        raise ModelFormatError(f"{what}: corrupt pickle (implausible sizes)") from None
    except EOFError:
        raise ModelFormatError(f"{what}: truncated pickle (ends unexpectedly)") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, ValueError, struct errors ... all mean corrupt
        msg = one_line(exc, 200) or type(exc).__name__
        if "truncated" in msg:
            raise ModelFormatError(f"{what}: truncated pickle ({msg})") from None
        raise ModelFormatError(f"{what}: corrupt pickle ({msg})") from None


# ----------------------------------------------------------------------------------------------------------------
# Flattening a persistent module tree


def flatten_module(obj: PersistentObject, prefix: str = "", _depth: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """The ``state_dict()`` the module would have: parameters, persistent buffers, then children, dotted."""
    if not isinstance(obj, PersistentObject):
        raise ModelFormatError(f"unexpected object {type(obj).__name__} at {prefix or 'the top level'}")
    if _depth > 64:
        raise ModelFormatError("corrupt NVIDIA pickle: module tree nested too deeply")
    state = obj.state
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        items = state.get(group) or {}
        if not isinstance(items, dict):
            raise ModelFormatError(f"corrupt NVIDIA pickle: {prefix}{group} is not a dict")
        for name, t in items.items():
            if t is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise ModelFormatError(f"corrupt NVIDIA pickle: {prefix}{name} is not a tensor")
            out[prefix + name] = t
    children = state.get("_modules") or {}
    if not isinstance(children, dict):
        raise ModelFormatError(f"corrupt NVIDIA pickle: {prefix}_modules is not a dict")
    for name, child in children.items():
        if child is None:
            continue
        out.update(flatten_module(child, f"{prefix}{name}.", _depth + 1))
    return out


def _iter_modules(obj: PersistentObject, _depth: int = 0) -> Iterable[PersistentObject]:
    yield obj
    if _depth > 64:
        return
    for child in (obj.state.get("_modules") or {}).values():
        if isinstance(child, PersistentObject):
            yield from _iter_modules(child, _depth + 1)
